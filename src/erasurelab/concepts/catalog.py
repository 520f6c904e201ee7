"""The built-in catalog: a ConceptSpec for every concept of the embedded shapes world.

Why built from the world vocabulary: the anchors must use exactly the words the model was
trained on and never the held-out paraphrases the evaluation measures leakage with. Reading
both lists from `world.vocab` keeps the two in step when the vocabulary changes.
"""

from __future__ import annotations

from pathlib import Path

from erasurelab.concepts.spec import MAX_NEIGHBOURS, ConceptSpec
from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.world import vocab


def catalog() -> list[str]:
    """Every built-in concept name (the embedded world's labels)."""
    return vocab.all_labels()


def _neighbour_phrases(attribute: str, name: str) -> list[str]:
    """First training word of each other concept of the same attribute, in vocabulary order."""
    return [c.train_words[0] for c in vocab.concepts(attribute) if c.name != name][:MAX_NEIGHBOURS]  # type: ignore[arg-type]


def world_concept(label: str) -> ConceptSpec:
    """The spec of one world concept; unknown labels raise a one-line error with close matches."""
    try:
        attribute, concept = vocab.lookup(label)
    except KeyError:
        labels = catalog()
        raise ErasureLabError(f"unknown concept {label!r}{did_you_mean(label, labels)}; "
                              f"built-in concepts: {', '.join(labels)} (or give a concept .yaml file)") from None
    neighbours = _neighbour_phrases(attribute, concept.name)
    if attribute == "character":
        # A character is a compound design on a plain body ("Bobo" = a yellow circle + a face):
        # with only two other characters, the body itself is the neighbour that must survive.
        design = vocab.character(concept.name)
        neighbours.append(f"{design.body_color} {design.body_object}")
    return ConceptSpec.from_words(concept.name, attribute, concept.train_words, neighbours,
                                  paraphrases=concept.paraphrases)


def concept(name_or_path: str | Path) -> ConceptSpec:
    """A ConceptSpec from a built-in name ("red") or a concept YAML file ("concepts/van_gogh.yaml")."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.lower().endswith((".yaml", ".yml")):
        return ConceptSpec.from_yaml(text)
    return world_concept(text)
