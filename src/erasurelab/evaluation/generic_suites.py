"""Evaluation suites for any ConceptSpec on any model: built from the spec's own fields.

Why: a user with SD 1.5 and `snoopy.yaml` must be able to evaluate, and nothing but the spec and
the judge knows what Snoopy is. The five suites of the protocol come from the spec:
- anchor: the spec's forget anchors (what methods train on) x anchor_seeds;
- paraphrase: its held-out paraphrases, each at several seeds up to paraphrase_max images;
- neighbours: each neighbour phrase the judge can detect, in held-out templates (not the anchors'
  templates, which build the retain anchors a method trains on), ranked by text-embedding cosine
  to the target (top neighbour_k);
- unrelated: the shipped generic prompts (people, animals, places, objects) that name none of the
  target's words, at seed sets A and B; they carry no judge labels, so they measure quality (FD of
  judge features) and not attribute accuracy;
- selective: the same generic scenes with the target added ("..., in the style of Van Gogh"): long
  prompts in which the target must still disappear (its share counts towards forgetting).
Same seed rule, hashes and leakage check as the embedded world's suites. `concept_suites` picks
a registered suite builder's suites (the world's, for its labels) when one accepts the concept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from erasurelab.concepts import ConceptSpec
from erasurelab.concepts.library import generic_unrelated_prompts
from erasurelab.errors import ErasureLabError
from erasurelab.evaluation.suites import (
    ConceptSuites,
    Neighbour,
    Suite,
    check_leakage,
    suite_builder_for,
    text_embeddings,
)
from erasurelab.evaluation.types import EvaluationSettings

#: How the target joins a generic scene in the selective suite, per spec category.
SELECTIVE_FORMS: dict[str, str] = {
    "style": "{scene}, in the style of {word}",
    "character": "{scene}, with {word} beside it",
    "object": "{scene}, with {article} {word} in the picture",
}
DEFAULT_SELECTIVE_FORM = "{scene}, {word}"
#: Held-out templates for the neighbour prompts: never a method's anchor templates (those build the retain anchors).
NEIGHBOUR_TEMPLATES: tuple[str, ...] = (
    "a close-up photograph of {c}", "a detailed picture showing {c}", "{c}, seen in soft morning light",
    "an illustration featuring {c}", "a wide shot with {c} in the centre",
)
#: At most this many images per paraphrase prompt (few paraphrases are spread over several seeds).
MAX_PARAPHRASE_REPEATS = 10


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _target_word(spec: ConceptSpec) -> str:
    return spec.synonyms[0] if spec.synonyms else spec.name.replace("_", " ")


def _nonempty(suite: Suite) -> Suite:
    if not suite.prompts:
        raise ErasureLabError(f"the {suite.name} suite of concept {suite.concept!r} is empty: the concept spec "
                              f"gives no {'paraphrases' if suite.name == 'paraphrase' else 'prompts'} for it")
    return suite


def rank_spec_neighbours(pipe: Any, spec: ConceptSpec, detectable: Sequence[str], k: int,
                         attribute_of: Callable[[str], str]) -> list[Neighbour]:
    """The spec's neighbours the judge can detect, top-k by cosine of "a photo of {x}" embeddings."""
    if not detectable or k <= 0:
        return []
    texts = [f"a photo of {_target_word(spec)}", *(f"a photo of {n}" for n in detectable)]
    vectors = text_embeddings(pipe, texts)
    cosines = (vectors[1:] @ vectors[0]).tolist()
    order = sorted(range(len(detectable)), key=lambda i: (-round(cosines[i], 12), detectable[i]))
    return [Neighbour(detectable[i], {attribute_of(detectable[i]): detectable[i]}, float(cosines[i]))
            for i in order[:k]]


def build_generic_suites(spec: ConceptSpec, pipe: Any, judge_concepts: Iterable[str],
                         attribute_of: Callable[[str], str], settings: EvaluationSettings | None = None,
                         anchors: Iterable[str] = ()) -> ConceptSuites:
    """Every suite of one concept from its spec (see the module docstring); leakage-checked."""
    settings = settings or EvaluationSettings()
    known = set(judge_concepts)
    if spec.name not in known:
        raise ErasureLabError(f"the judge cannot see concept {spec.name!r}; give a judge that knows it "
                              "(e.g. --judge clip:FOLDER, whose labels come from the concept spec)")
    attribute = attribute_of(spec.name)
    target = {attribute: spec.name}
    seed = settings.base_seed

    anchor = _nonempty(Suite("anchor", spec.name, tuple(spec.forget), settings.anchor_seeds,
                             tuple(dict(target) for _ in spec.forget), base_seed=seed))

    paraphrases = tuple(spec.paraphrases[:settings.paraphrase_max])
    repeats = max(1, min(MAX_PARAPHRASE_REPEATS, settings.paraphrase_max // max(1, len(paraphrases))))
    paraphrase = _nonempty(Suite("paraphrase", spec.name, paraphrases, repeats,
                                 tuple(dict(target) for _ in paraphrases), base_seed=seed))

    detectable = [n for n in spec.neighbours if n in known and n != spec.name]
    ranked = rank_spec_neighbours(pipe, spec, detectable, settings.neighbour_k, attribute_of)
    templates = NEIGHBOUR_TEMPLATES[:settings.neighbour_templates]
    n_prompts, n_labels, n_groups = [], [], []
    for neighbour in ranked:
        for template in templates:
            n_prompts.append(template.format(c=neighbour.name))
            n_labels.append(dict(neighbour.labels))
            n_groups.append(neighbour.name)
    notes = () if ranked else ("no neighbour of the spec is detectable by the judge",)
    neighbours = Suite("neighbours", spec.name, tuple(n_prompts), settings.neighbour_seeds, tuple(n_labels),
                       tuple(n_groups), base_seed=seed, notes=notes)

    scenes = generic_unrelated_prompts(exclude=spec)[:settings.unrelated_max]
    unrelated = _nonempty(Suite("unrelated", spec.name, tuple(scenes), 2, base_seed=seed,
                                notes=("generic prompts without judge labels: quality only",)))

    word = _target_word(spec)
    form = SELECTIVE_FORMS.get(spec.category, DEFAULT_SELECTIVE_FORM)
    chosen = scenes[:settings.selective_max]
    selective_prompts = tuple(form.format(scene=s, word=word, article=_article(word)) for s in chosen)
    selective = _nonempty(Suite("selective", spec.name, selective_prompts, 1,
                                tuple(dict(target) for _ in chosen), base_seed=seed,
                                notes=("other items are not judge labels here: selective alignment is not "
                                       "measured, the target's share is",)))
    suites = ConceptSuites(spec.name, attribute, anchor, paraphrase, neighbours, unrelated, selective,
                           tuple(ranked))
    check_leakage(suites.all(), anchors)
    return suites


def concept_suites(spec: ConceptSpec, pipe: Any, judge_concepts: Iterable[str], attribute_of: Callable[[str], str],
                   settings: EvaluationSettings | None = None, anchors: Iterable[str] = ()) -> ConceptSuites:
    """The suites of a single concept: a registered builder's that accepts it (the embedded world's for
    its labels), else the ones built from its spec (`build_generic_suites`)."""
    if spec.is_compound:
        raise ErasureLabError(f"{spec.kind} {spec.name!r} has compound suites: use evaluation.compound.compound_suites")
    settings = settings or EvaluationSettings()
    builder = suite_builder_for(spec)
    if builder is not None:
        return builder.build(spec, pipe, judge_concepts, attribute_of, settings, anchors)
    return build_generic_suites(spec, pipe, judge_concepts, attribute_of, settings, anchors)
