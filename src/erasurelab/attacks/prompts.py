"""Which prompts an attack starts from, for the concepts of a prompt grammar and for any ConceptSpec.

Why a module: the attacks need the same few prompt sources — the forget anchors (what the edit
was built from), paraphrase prompts (held-out phrasings that name the concept indirectly) and, for
Ring-A-Bell, template pairs with and without the concept. A concept that a registered prompt
grammar knows (the embedded world's) gets that grammar's caption forms, so prompts look like what
its model was trained on; any other spec falls back to its templates and phrases.
"""

from __future__ import annotations

from collections.abc import Iterable

from erasurelab.concepts.grammar import grammar_for, round_robin
from erasurelab.concepts.spec import ConceptSpec, default_templates


def anchor_prompts(spec: ConceptSpec) -> list[str]:
    """The forget anchors, interleaved over training words ("a photo of red", "a photo of crimson", ...)."""
    if not spec.forget:
        return [spec.name]
    words = spec.synonyms or (spec.name,)
    from erasurelab.concepts.spec import mentions

    groups = [[a for a in spec.forget if mentions(a, w)] for w in words]
    ordered = round_robin(groups)
    rest = [a for a in spec.forget if a not in ordered]
    return list(dict.fromkeys(ordered + rest))


def paraphrase_prompts(spec: ConceptSpec) -> list[str]:
    """Prompts naming the concept only through held-out paraphrases, interleaved over phrases.

    A concept of a prompt grammar: the grammar's. Other specs: "a picture of {phrase}" (style
    concepts: "a painting in the style of {phrase}"); without paraphrases, the anchors.
    """
    grammar = grammar_for(spec)
    if grammar is not None:
        return grammar.paraphrase_prompts(spec)
    if not spec.paraphrases:
        return anchor_prompts(spec)
    form = "a painting in the style of {}" if spec.category == "style" else "a picture of {}"
    return [form.format(p) for p in spec.paraphrases]


def concept_phrases(spec: ConceptSpec) -> list[str]:
    """Every phrase that names the concept (training words, paraphrases, name), longest first."""
    return sorted({p for p in (*spec.synonyms, *spec.paraphrases, spec.name) if p.strip()}, key=len, reverse=True)


def without_concept(spec: ConceptSpec, prompt: str) -> str | None:
    """`prompt` with every whole-word mention of the concept removed ("a photo of red" → "a photo of").

    None when the prompt names none of the concept's phrases ("" when it held nothing else). Why: an attack's
    sanity check on the unedited model must start from a prompt that does not already ask for the
    concept, so that only the attack can bring it back.
    """
    from erasurelab.concepts.spec import replace_mention

    out, changed = prompt, False
    for phrase in concept_phrases(spec):
        while (replaced := replace_mention(out, phrase, "")) is not None:
            out, changed = replaced, True
    out = " ".join(out.split())
    return out if changed else None


def concept_word(spec: ConceptSpec) -> str:
    """The plain word for the concept in prompts (its first training word, else its name)."""
    return spec.synonyms[0] if spec.synonyms else spec.name


def described_prompts(spec: ConceptSpec) -> list[str]:
    """Prompts that name the concept and every other attribute of the image ([] without a grammar).

    "a dotted crimson circle on a gray background" for red: a caption that says everything the
    image shows but the concept, so a token trained on it ("a dotted <c*> circle on a gray
    background") has only the concept left to carry. With "a photo of red" the image's shape,
    style and background are M_0's free choice and the token soaks them up.
    """
    grammar = grammar_for(spec)
    return grammar.described_prompts(spec) if grammar is not None else []


def scoring_templates(spec: ConceptSpec) -> list[str]:
    """Held-out prompts with a "{}" slot for the concept's word, in its grammar ([] without one)."""
    grammar = grammar_for(spec)
    return grammar.scoring_templates(spec) if grammar is not None else []


def template_pairs(spec: ConceptSpec) -> list[tuple[str, str]]:
    """(with concept, without concept) prompt pairs sharing a template, for Ring-A-Bell's concept vector.

    A concept of a prompt grammar: the grammar's pairs (the embedded world's use canonical prompts
    over many contexts). Other specs: templates × target words, the guide (or nothing) as replacement.
    """
    grammar = grammar_for(spec)
    if grammar is not None:
        return grammar.template_pairs(spec)
    words = list(spec.synonyms or (spec.name,))
    templates = spec.templates or default_templates(spec.category)
    pairs = [(t.format(c=w), t.format(c=spec.guide)) for t in templates for w in words]
    return _dedupe((" ".join(a.split()), " ".join(b.split())) for a, b in pairs)


def _dedupe(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))
