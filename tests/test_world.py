"""The shapes world: vocabulary, renderer, captions, datasets."""

from __future__ import annotations

import re

import numpy as np
import pytest

from erasurelab.errors import ErasureLabError
from erasurelab.world import captions, render, vocab
from erasurelab.world.dataset import render_dataset


def test_world_has_the_required_concepts() -> None:
    assert len(vocab.classes("object")) >= 6
    assert len(vocab.classes("color")) >= 6
    assert len(vocab.classes("style")) >= 3
    assert len(vocab.classes("background")) >= 3
    assert len(vocab.classes("character")) - 1 >= 3
    labels = vocab.all_labels()
    assert len(labels) == len(set(labels)), "a label names two concepts"


@pytest.mark.parametrize("attribute", ["object", "color", "style"])
def test_every_concept_has_five_heldout_paraphrases(attribute: str) -> None:
    for concept in vocab.concepts(attribute):
        assert len(set(concept.paraphrases)) >= 5, concept.name


def _contains_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase.lower())}(?![\w-])", text.lower()) is not None


def test_heldout_paraphrases_never_appear_in_training_captions() -> None:
    rng = np.random.default_rng(0)
    texts = {captions.train_caption(render.random_scene(rng, 0.2), rng) for _ in range(20_000)}
    phrases = [p for a in vocab.ATTRIBUTES for c in vocab.concepts(a) for p in c.paraphrases]
    # held-out templates must not be training templates either
    phrases += [t.format(x="").strip(" ,") for t in captions.HELDOUT_TEMPLATES]
    leaks = [(p, t) for p in phrases for t in texts if _contains_phrase(t, p)]
    assert not leaks[:5]


def test_training_words_do_not_collide_across_concepts() -> None:
    owner: dict[str, str] = {}
    for attribute in vocab.ATTRIBUTES:
        for concept in vocab.concepts(attribute):
            for word in (*concept.train_words, *concept.paraphrases):
                assert owner.setdefault(word.lower(), concept.name) == concept.name, word


def test_captions_only_name_the_scenes_own_attributes() -> None:
    rng = np.random.default_rng(1)
    color_words = {w: c.name for c in vocab.COLORS for w in c.train_words}
    for _ in range(3000):
        scene = render.random_scene(rng, 0.0)
        text = captions.train_caption(scene, rng)
        named = {name for word, name in color_words.items() if _contains_phrase(text, word)}
        assert named <= {scene.color}, (scene, text)


def test_caption_variety() -> None:
    rng = np.random.default_rng(2)
    scene = render.Scene("circle", "red", "striped", "white")
    texts = {captions.train_caption(scene, rng) for _ in range(400)}
    assert len(texts) > 60
    assert "" in texts  # the unconditional caption for classifier-free guidance


def test_render_is_deterministic_and_in_range() -> None:
    scene = render.Scene("star", "blue", "dotted", "black")
    a = render.render(scene, np.random.default_rng(5))
    b = render.render(scene, np.random.default_rng(5))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0


@pytest.mark.parametrize("color", vocab.classes("color"))
def test_rendered_color_is_the_named_color(color: str) -> None:
    image = render.render(render.Scene("square", color, "solid", "black"), np.random.default_rng(0))
    mask = np.abs(image - np.asarray(vocab.lookup("black")[1].rgb)).sum(-1) > 0.3
    mean = image[mask].mean(0)
    distances = {c.name: np.abs(mean - np.asarray(c.rgb)).sum() for c in vocab.COLORS}
    assert min(distances, key=distances.get) == color


def test_objects_are_distinct_and_inside_the_frame() -> None:
    x, y = np.meshgrid(np.linspace(-1, 1, 128), np.linspace(-1, 1, 128))
    masks = {o: render.shape_mask(o, x, y, 0.7) for o in vocab.classes("object")}
    names = list(masks)
    for i, a in enumerate(names):
        assert masks[a].mean() > 0.05, a
        for b in names[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b, iou)
    for _ in range(50):  # shapes never touch the image border
        img = render.render(render.random_scene(np.random.default_rng(_)), np.random.default_rng(_))
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert border.std(0).max() < 0.05


def test_character_differs_from_its_plain_body() -> None:
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    plain = render.render(render.Scene("circle", "yellow", "solid", "white"), rng_a)
    bobo = render.render(render.character_scene("bobo", "white"), rng_b)
    assert np.abs(plain - bobo).sum() > 20  # the face is there, the body is the same


def test_dataset_is_reproducible_and_labelled() -> None:
    a, b = render_dataset(40, seed=7), render_dataset(40, seed=7)
    assert (a.images == b.images).all() and a.scenes == b.scenes
    assert a.images.shape == (40, 3, 32, 32)
    for attribute in vocab.ATTRIBUTES:
        names = vocab.classes(attribute)
        assert [names[i] for i in a.labels[attribute]] == [s.labels()[attribute] for s in a.scenes]


def test_canonical_suite_covers_every_pair() -> None:
    suite = captions.canonical_suite()
    pairs = {(p.labels["object"], p.labels["color"]) for p in suite}
    assert len(pairs) == len(vocab.classes("object")) * len(vocab.classes("color"))
    assert len(suite) >= 100


@pytest.mark.parametrize("label", ["red", "circle", "striped", "bobo"])
def test_paraphrase_prompts_do_not_name_the_concept(label: str) -> None:
    attribute, concept = vocab.lookup(label)
    prompts = list(captions.paraphrase_prompts(label))
    assert len(prompts) >= 5
    if attribute != "character":  # character paraphrases name the character in held-out templates
        for p in prompts:
            assert not any(_contains_phrase(p.prompt, w) for w in concept.train_words), p.prompt


def test_parse_request() -> None:
    item = captions.parse_request("object=circle, color=red, style=striped")
    assert item.prompt == "a striped red circle"
    assert item.labels == {"object": "circle", "color": "red", "style": "striped"}
    assert captions.parse_request("character=bobo").labels == {"character": "bobo"}


@pytest.mark.parametrize("bad, needle", [
    ("colour=red", "unknown attribute 'colour'"),
    ("color=reed", "unknown color 'reed'"),
    ("object", "expected attribute=value"),
    ("", "empty request"),
    ("style=striped", "at least object= or color="),
])
def test_parse_request_errors_are_one_line(bad: str, needle: str) -> None:
    with pytest.raises(ErasureLabError) as err:
        captions.parse_request(bad)
    assert needle in str(err.value) and "\n" not in str(err.value)
