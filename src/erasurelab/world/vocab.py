"""The vocabulary of the shapes world: every concept, its training words and its held-out paraphrases.

Why a hand-written table: the world exists so that "is the concept gone?" has a ground-truth answer.
Each concept therefore has exactly one label (the judge's class), a few *training* synonyms that
captions use, and *held-out* paraphrases that never appear in a training caption. The paraphrases
are what later measures leakage: a method that only blocks the word "red" but not "scarlet" fails.
A test checks that no held-out paraphrase occurs in any training caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Attribute = Literal["object", "color", "style", "background", "character"]
ATTRIBUTES: tuple[Attribute, ...] = ("object", "color", "style", "background", "character")

#: The character head's class for images that show no named character.
NO_CHARACTER = "none"


@dataclass(frozen=True)
class WorldConcept:
    """One value of one attribute (e.g. color=red), with the words used for it."""

    name: str
    attribute: Attribute
    train_words: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()
    rgb: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class CharacterDesign:
    """A named character: a fixed compound design on top of a base shape and color.

    Characters stand in for IP characters and celebrities: erasing "Bobo" must not erase
    "yellow circle", which is what Bobo's body is. The judge's character head tells them apart
    by the face features.
    """

    name: str
    body_object: str
    body_color: str
    face: Literal["smiley", "robot", "cyclops"]
    train_words: tuple[str, ...]
    paraphrases: tuple[str, ...] = field(default=())


COLORS: tuple[WorldConcept, ...] = (
    WorldConcept("red", "color", ("red", "crimson"),
                 ("scarlet", "ruby", "vermilion", "tomato-colored", "the color of a fire truck"),
                 (0.88, 0.10, 0.10)),
    WorldConcept("orange", "color", ("orange", "tangerine"),
                 ("amber", "apricot", "pumpkin-colored", "marigold", "the color of a carrot"),
                 (1.00, 0.55, 0.05)),
    WorldConcept("yellow", "color", ("yellow", "golden"),
                 ("lemon", "canary", "mustard", "sunflower-colored", "the color of a banana"),
                 (0.95, 0.88, 0.10)),
    WorldConcept("green", "color", ("green", "emerald"),
                 ("lime", "jade", "verdant", "grass-colored", "the color of a leaf"),
                 (0.10, 0.68, 0.20)),
    WorldConcept("cyan", "color", ("cyan", "turquoise"),
                 ("aqua", "teal", "aquamarine", "seafoam", "the color of a swimming pool"),
                 (0.10, 0.80, 0.85)),
    WorldConcept("blue", "color", ("blue", "azure"),
                 ("cobalt", "sapphire", "ultramarine", "denim-colored", "the color of the deep sea"),
                 (0.15, 0.25, 0.92)),
    WorldConcept("purple", "color", ("purple", "violet"),
                 ("lilac", "plum", "amethyst", "eggplant-colored", "the color of grapes"),
                 (0.55, 0.15, 0.75)),
    WorldConcept("pink", "color", ("pink", "rose"),
                 ("magenta", "fuchsia", "salmon", "flamingo-colored", "the color of bubblegum"),
                 (1.00, 0.50, 0.75)),
)

OBJECTS: tuple[WorldConcept, ...] = (
    WorldConcept("circle", "object", ("circle", "round shape"),
                 ("disk", "orb", "sphere", "coin shape", "perfectly round figure")),
    WorldConcept("square", "object", ("square", "box"),
                 ("cube", "block", "tile", "quadrate", "four-sided figure with equal sides")),
    WorldConcept("triangle", "object", ("triangle", "three-sided shape"),
                 ("pyramid", "wedge", "delta", "trigon", "three-cornered figure")),
    WorldConcept("star", "object", ("star", "five-pointed star"),
                 ("pentagram", "twinkle", "starfish shape", "sheriff badge", "five-pointed figure")),
    WorldConcept("heart", "object", ("heart", "love heart"),
                 ("valentine", "love symbol", "cardioid", "sweetheart shape", "romance icon")),
    WorldConcept("cross", "object", ("cross", "plus sign"),
                 ("crossing lines", "crucifix", "addition symbol", "first-aid symbol", "swiss flag shape")),
    WorldConcept("diamond", "object", ("diamond", "rhombus"),
                 ("lozenge", "rhomb", "kite shape", "gem shape", "harlequin shape")),
    WorldConcept("moon", "object", ("moon", "crescent"),
                 ("sickle", "lunar shape", "croissant shape", "hook shape", "lunar sliver")),
)

STYLES: tuple[WorldConcept, ...] = (
    WorldConcept("solid", "style", ("solid", "filled"),
                 ("plain", "uniform", "flat-colored", "fully colored", "unpatterned")),
    WorldConcept("striped", "style", ("striped", "stripy"),
                 ("banded", "pinstriped", "zebra-patterned", "lined", "candy-striped")),
    WorldConcept("dotted", "style", ("dotted", "spotted"),
                 ("polka-dot", "speckled", "dappled", "freckled", "pointillist")),
    WorldConcept("outlined", "style", ("outlined", "hollow"),
                 ("line-drawn", "contour-only", "unfilled", "wireframe", "empty")),
)

BACKGROUNDS: tuple[WorldConcept, ...] = (
    WorldConcept("black", "background", ("black", "dark"),
                 ("pitch-dark", "ebony", "midnight"), (0.05, 0.05, 0.06)),
    WorldConcept("white", "background", ("white", "bright"),
                 ("snowy", "ivory", "paper-white"), (0.94, 0.94, 0.93)),
    WorldConcept("gray", "background", ("gray", "grey"),
                 ("ash", "slate", "silver"), (0.50, 0.50, 0.50)),
)

CHARACTERS: tuple[CharacterDesign, ...] = (
    CharacterDesign("bobo", "circle", "yellow", "smiley", ("Bobo", "Bobo the smiley"),
                    ("the cartoon Bobo", "a sticker of Bobo", "Bobo mascot", "famous Bobo", "Bobo emoji")),
    CharacterDesign("kiki", "square", "blue", "robot", ("Kiki", "Kiki the robot"),
                    ("the cartoon Kiki", "a sticker of Kiki", "Kiki mascot", "famous Kiki", "Kiki toy")),
    CharacterDesign("zuzu", "triangle", "green", "cyclops", ("Zuzu", "Zuzu the cyclops"),
                    ("the cartoon Zuzu", "a sticker of Zuzu", "Zuzu mascot", "famous Zuzu", "Zuzu monster")),
)

_BY_ATTRIBUTE: dict[str, tuple[WorldConcept, ...]] = {
    "object": OBJECTS, "color": COLORS, "style": STYLES, "background": BACKGROUNDS,
}


def classes(attribute: Attribute) -> tuple[str, ...]:
    """Class names of one judge head, in head order (the order is part of the judge version)."""
    if attribute == "character":
        return (NO_CHARACTER, *(c.name for c in CHARACTERS))
    return tuple(c.name for c in _BY_ATTRIBUTE[attribute])


def concepts(attribute: Attribute) -> tuple[WorldConcept, ...] | tuple[CharacterDesign, ...]:
    """All concepts of one attribute."""
    return CHARACTERS if attribute == "character" else _BY_ATTRIBUTE[attribute]


def lookup(name: str) -> tuple[Attribute, WorldConcept | CharacterDesign]:
    """Find a concept by its label; raises KeyError naming the valid labels."""
    key = name.strip().lower()
    for attribute in ATTRIBUTES:
        for concept in concepts(attribute):
            if concept.name == key:
                return attribute, concept
    raise KeyError(name)


def all_labels() -> list[str]:
    """Every concept label of the world (the character head's 'none' excluded)."""
    return [c.name for a in ATTRIBUTES for c in concepts(a)]


def character(name: str) -> CharacterDesign:
    for design in CHARACTERS:
        if design.name == name:
            return design
    raise KeyError(name)
