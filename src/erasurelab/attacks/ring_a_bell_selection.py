"""Ring-A-Bell's data from the unedited model: concept pairs and seed prompts M_0 renders robustly.

Both are picked on *selection* seeds (a prompt counts when M_0 renders the concept on at least
pair_min_positive of pair_seeds seeds), disjoint from the scoring seeds, and cached with the
attack's `prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from erasurelab.attacks.base import AttackContext, Budget
from erasurelab.attacks.prompts import anchor_prompts, paraphrase_prompts, template_pairs
from erasurelab.errors import ErasureLabError

if TYPE_CHECKING:
    from erasurelab.attacks.ring_a_bell import RingABellConfig

#: Seed offset of the pair-filter selection renders on M_0 (disjoint from the seed prompts' and the scoring seeds).
PAIR_SEED_OFFSET = 20_000


@dataclass
class Prepared:
    """M_0-side data: kept concept pairs with their hit counts, and seed prompts with their seeds."""

    pairs: list[tuple[str, str]]
    pair_hits: list[int]
    prompts: list[str]
    seeds: list[int]  # each seed prompt's first positive selection seed (a record; never used for scoring)
    candidates_tried: int
    prompts_tried: int = 0

    def selection_seeds(self, ctx: AttackContext) -> list[int]:
        """Every seed rendered on M_0 to pick pairs and seed prompts."""
        n = ctx.config.pair_seeds
        pairs = [ctx.seed + PAIR_SEED_OFFSET + n * i + r for i in range(self.candidates_tried) for r in range(n)]
        return pairs + [ctx.seed + n * i + r for i in range(self.prompts_tried) for r in range(n)]


@dataclass
class Robust:
    """Which candidates M_0 renders as the concept on ≥ pair_min_positive of pair_seeds seeds."""

    kept: list[int]  # candidate indices, in order
    hits: list[int]  # positive seeds of each kept candidate
    first_seed: list[int]  # its first positive seed
    tried: int  # candidates rendered


def robust_candidates(ctx: AttackContext, prompts: list[str], limit: int, seed_offset: int,
                      budget: Budget) -> Robust:
    """The first `limit` prompts M_0 renders as the concept on ≥ pair_min_positive of pair_seeds seeds.

    Prompt i renders with seeds ctx.seed + seed_offset + pair_seeds·i + r, in batches of whole
    prompts, and rendering stops once `limit` prompts are kept.
    """
    config: RingABellConfig = ctx.config
    out = Robust([], [], [], 0)
    per_batch = max(1, config.batch_size // config.pair_seeds)
    while out.tried < len(prompts) and len(out.kept) < limit:
        batch = range(out.tried, min(out.tried + per_batch, len(prompts)))
        seeds = [[ctx.seed + seed_offset + config.pair_seeds * i + r for r in range(config.pair_seeds)] for i in batch]
        flat = [(prompts[i], s) for i, row in zip(batch, seeds, strict=True) for s in row]
        flags = ctx.present(ctx.render(ctx.reference, [p for p, _ in flat], [s for _, s in flat], budget))
        for i, row, hits in zip(batch, seeds, flags.view(len(batch), -1), strict=True):
            if int(hits.sum()) >= config.pair_min_positive and len(out.kept) < limit:
                out.kept.append(i)
                out.hits.append(int(hits.sum()))
                out.first_seed.append(row[int(hits.int().argmax())])
        out.tried += len(batch)
    return out


def filter_pairs(ctx: AttackContext, budget: Budget) -> tuple[list[tuple[str, str]], list[int], int]:
    """Keep template pairs whose positive prompt M_0 renders as the concept on ≥ pair_min_positive seeds."""
    config: RingABellConfig = ctx.config
    candidates = template_pairs(ctx.spec)
    robust = robust_candidates(ctx, [pos for pos, _ in candidates], config.n_pairs, PAIR_SEED_OFFSET, budget)
    if not robust.kept:
        raise ErasureLabError(f"no concept pair kept: the reference model rendered {ctx.spec.name!r} on fewer than "
                              f"{config.pair_min_positive} of {config.pair_seeds} seeds for all {robust.tried} "
                              "pairs tried")
    return [candidates[i] for i in robust.kept], robust.hits, robust.tried


def seed_prompts(ctx: AttackContext, budget: Budget) -> tuple[list[str], list[int], int]:
    """Paraphrase prompts, then anchor prompts (or the given prompts) on which M_0 shows the concept robustly.

    Anchors come after the paraphrases because M_0 may know none of a concept's held-out words.
    A prompt is kept when M_0 renders the concept on ≥ pair_min_positive of pair_seeds selection
    seeds (the pairs' rule), as the official runs seed the search with prompts whose concept rate
    exceeds 50%: a prompt kept on a single lucky seed loses the concept under small token changes
    even on M_0. Returns (prompts, their first positive selection seed, candidates rendered).
    """
    config: RingABellConfig = ctx.config
    candidates = list(config.prompts) or list(dict.fromkeys(paraphrase_prompts(ctx.spec) + anchor_prompts(ctx.spec)))
    robust = robust_candidates(ctx, candidates, config.n_prompts, 0, budget)
    return [candidates[i] for i in robust.kept], robust.first_seed, robust.tried
