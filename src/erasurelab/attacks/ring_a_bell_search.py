"""Ring-A-Bell's search: the concept vector, the genetic search over token ids, and one suite per seed prompt.

Only the text encoder(s) are used (SDXL: both, and the pooled embedding, through `tokens.TextSide`);
the fitness of a token sequence is the squared distance of its encoding to f(P) + η·c.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from erasurelab.attacks.base import AttackContext, Budget
from erasurelab.attacks.prompts import concept_phrases
from erasurelab.attacks.tokens import (
    Encoded,
    TextSide,
    decode,
    frame,
    prompt_tokens,
    round_trips,
    vocabulary_ids,
    whole_word_ids,
)
from erasurelab.errors import ErasureLabError
from erasurelab.models.diffusion import seeded

if TYPE_CHECKING:
    from erasurelab.attacks.ring_a_bell import RingABellConfig
    from erasurelab.attacks.ring_a_bell_selection import Prepared

@torch.no_grad()
def concept_vector(encoder: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """c = mean_j [f(P_j⁺) − f(P_j⁻)] ∈ R^{L×d}; both sides encoded in one batch (identical pairs give 0)."""
    return text_concept_vector(TextSide((tokenizer,), (encoder,)), pairs).embeds


@torch.no_grad()
def text_concept_vector(text: TextSide, pairs: list[tuple[str, str]]) -> Encoded:
    """`concept_vector` over everything the U-Net reads (SDXL: both encoders' states and the pooled embedding)."""
    if not pairs:
        raise ErasureLabError("no prompt pairs for the concept vector")
    states = text.encode_prompts([p for p, _ in pairs] + [n for _, n in pairs]).float()
    return (states[: len(pairs)] - states[len(pairs):]).mean()


@dataclass
class SearchResult:
    """Best full id sequence, its fitness, the best fitness per generation and encoder evaluations used."""

    ids: torch.Tensor
    fitness: float
    history: list[float] = field(default_factory=list)
    evaluations: int = 0


def genetic_search(fitness: Callable[[torch.Tensor], torch.Tensor], template: torch.Tensor, k: int,
                   vocab: torch.Tensor, population: int, generations: int, mutation: float, crossover: float,
                   generator: torch.Generator, initial: torch.Tensor | None = None,
                   on_generation: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                   quiet: bool = True) -> SearchResult:
    """Minimise fitness over ids whose positions 1..k are searched; every other position is `template`'s.

    Each generation: sort; keep the best N/2; refill to exactly N with children (crossover with
    probability `crossover`: single cut inside the slots, two children; else a copy of the parent);
    then every individual except the best gets one random slot set to a random vocabulary id with
    probability `mutation`. Position 0 (the start token) and the tail are never touched.
    Fitness is memoised per id sequence: once the population converges, crossovers and mutations
    mostly rebuild sequences already scored (about half of all candidates), and a sequence's encoding
    does not change, so only new sequences reach the encoder. `evaluations` counts those.
    """
    n, half = population, max(population // 2, 1)
    memo: dict[tuple[int, ...], float] = {}

    def score(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Fitness of every row, encoding only sequences not scored before (each once); (values, encoded)."""
        keys = [tuple(r) for r in rows.tolist()]
        fresh = list(dict.fromkeys(k for k in keys if k not in memo))
        if fresh:
            values = fitness(torch.tensor(fresh, dtype=rows.dtype)).float().cpu().tolist()
            memo.update(zip(fresh, values, strict=True))
        return torch.tensor([memo[k] for k in keys]), len(fresh)

    pop = template.unsqueeze(0).repeat(n, 1)
    pop[:, 1:k + 1] = vocab[torch.randint(len(vocab), (n, k), generator=generator)]
    if initial is not None:
        if initial.shape != template.shape or not torch.equal(initial[k + 1:], template[k + 1:]) \
                or int(initial[0]) != int(template[0]):
            raise ValueError("initial individual must share the template's start token and tail")
        pop[0] = initial
    fit, evaluations = score(pop)
    history: list[float] = [] if generations else [float(fit.min())]
    for gen in tqdm(range(generations), desc="Ring-A-Bell", disable=quiet):
        order = torch.argsort(fit, stable=True)
        pop, fit = pop[order], fit[order]
        history.append(float(fit[0]))
        if on_generation is not None:
            on_generation(gen, pop.clone(), fit.clone())
        if gen == generations - 1:
            continue  # the last generation is only ranked
        parents, parent_fit = pop[:half], fit[:half]
        children, child_fit = [], []
        i = 0
        while half + len(children) < n:
            a, a_fit = parents[i % half], parent_fit[i % half]
            i += 1
            if float(torch.rand((), generator=generator)) < crossover:
                b = parents[int(torch.randint(half, (), generator=generator))]
                cut = int(torch.randint(1, k + 1, (), generator=generator))  # columns [0, cut) from the first parent
                children += [torch.cat([a[:cut], b[cut:]]), torch.cat([b[:cut], a[cut:]])]
                child_fit += [float("nan"), float("nan")]
            else:
                children.append(a.clone())
                child_fit.append(float(a_fit))
        keep = n - half
        pop = torch.cat([parents, torch.stack(children[:keep])])
        fit = torch.cat([parent_fit, torch.tensor(child_fit[:keep])])
        for r in range(1, n):  # row 0 is the elite
            if float(torch.rand((), generator=generator)) < mutation:
                slot = int(torch.randint(1, k + 1, (), generator=generator))
                pop[r, slot] = vocab[int(torch.randint(len(vocab), (), generator=generator))]
                fit[r] = float("nan")
        stale = torch.isnan(fit)
        if stale.any():
            fit[stale], encoded = score(pop[stale])
            evaluations += encoded
    best = int(torch.argmin(fit))
    return SearchResult(ids=pop[best].clone(), fitness=float(fit[best]), history=history, evaluations=evaluations)


def search_suite(pipe: Any, prepared: Prepared, ctx: AttackContext, budget: Budget) -> list[dict[str, Any]]:
    """One genetic search per seed prompt against this pipeline's text encoder(s) (SDXL: both, and pooled)."""
    config: RingABellConfig = ctx.config
    text = TextSide.of(pipe)
    tokenizer = text.tokenizer
    fr = frame(tokenizer)
    if config.k > fr.length - 2:
        raise ErasureLabError(f"k={config.k} does not fit a {fr.length}-token prompt (at most {fr.length - 2})")
    vocab = vocabulary_ids(tokenizer, text)
    if config.whole_words:
        vocab = whole_word_ids(tokenizer, vocab)
    with torch.no_grad():
        vector = text_concept_vector(text, prepared.pairs)
        suite = []
        for p, prompt in enumerate(prepared.prompts):
            target = text.encode_prompts([prompt]).float() + vector.scaled(config.eta)
            own = prompt_tokens(tokenizer, prompt) if config.init_from_prompt else []
            # Seeded, the search edits the seed prompt's own words: K is its length (cut at K, a longer
            # prompt lost its meaning; padded with random words, a shorter one lost the concept).
            k = min(len(own) or config.k, fr.length - 2)
            template, lengths = fr.build([[int(vocab[0])] * k])
            template = template[0]

            def fitness(rows: torch.Tensor, target: Encoded = target, lengths: torch.Tensor = lengths,
                        bf16: bool = config.search_bf16) -> torch.Tensor:
                out = []
                with torch.autocast(text.device.type, dtype=torch.bfloat16, enabled=bf16):
                    for s in range(0, len(rows), config.eval_batch):
                        chunk = rows[s:s + config.eval_batch]
                        out.append(text.encode(chunk, lengths.expand(len(chunk))).float().squared_distance(target))
                return torch.cat(out)

            generator = seeded(ctx.seed, 3, p)
            masked = concept_positions(tokenizer, ctx.spec, own[:k])
            start = list(own[:k])
            for position in masked:  # the start is the seed prompt without its concept words
                start[position] = int(vocab[int(torch.randint(len(vocab), (), generator=generator))])
            initial = fr.build([start])[0][0] if own else None
            result = genetic_search(fitness, template, k, vocab, config.population, config.generations,
                                    config.mutation, config.crossover, generator, initial=initial, quiet=ctx.quiet)
            budget.add("steps", config.generations)
            if config.search_bf16:  # the suite's fitness is float32 whatever the search scored in
                result.fitness = float(fitness(result.ids.unsqueeze(0), bf16=False)[0])
            slots = result.ids[1:k + 1].tolist()
            unchanged = bool(own) and not masked and slots == start
            suite.append({"seed_prompt": prompt, "prompt": decode(tokenizer, slots), "ids": result.ids.tolist(),
                          "start_prompt": decode(tokenizer, start) if own else None, "masked_positions": masked,
                          "unchanged_seed_prompt": unchanged,
                          "fitness": result.fitness, "fitness_first": result.history[0],
                          "search_precision": "bf16" if config.search_bf16 else "float32",
                          "evaluations": result.evaluations, "round_trips": round_trips(tokenizer, slots)})
    return suite


def concept_positions(tokenizer: Any, spec: Any, ids: list[int]) -> list[int]:
    """Positions in `ids` (a prompt's word tokens) of every whole-word mention of the concept's phrases."""
    hit: set[int] = set()
    for phrase in concept_phrases(spec):
        words = prompt_tokens(tokenizer, phrase)
        if not words:
            continue
        for i in range(len(ids) - len(words) + 1):
            if ids[i:i + len(words)] == words and not hit & set(range(i, i + len(words))):
                hit.update(range(i, i + len(words)))
    return sorted(hit)
