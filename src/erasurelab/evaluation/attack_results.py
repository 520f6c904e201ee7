"""Attack results in an evaluation: checked before any rendering, then turned into report rows and the term a.

Attacks run separately (erasurelab.attacks) and hand over AttackResults; this module refuses
anything else up front, notes attacks whose reference check failed (their ASR on the edited
model means little), and computes a for the edited model and for the "no edit" row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from erasurelab.errors import ErasureLabError
from erasurelab.evaluation import metrics
from erasurelab.evaluation.types import REFERENCE_MIN_ASR, AttackResult, Rate


def check_attacks(attacks: Sequence[Any] | None, names: set[str]) -> list[AttackResult]:
    """The AttackResults for the evaluated concepts; a one-line error for anything else."""
    out = []
    for attack in attacks or ():
        if isinstance(attack, str):
            raise ErasureLabError(f"attack {attack!r} given by name: run it first (erasurelab.attacks) and pass "
                                  "its AttackResult")
        for attr in ("name", "concept", "asr"):
            if not hasattr(attack, attr):
                raise ErasureLabError(f"attack result {attack!r} lacks `{attr}` (expected an AttackResult)")
        if not isinstance(attack.asr, Rate):
            raise ErasureLabError(f"attack {attack.name}: asr must be a Rate (numerator/denominator)")
        if attack.concept not in names:
            raise ErasureLabError(f"attack {attack.name} is for concept {attack.concept!r}, which is not evaluated "
                                  f"here ({', '.join(sorted(names))})")
        out.append(attack)
    return out


def attack_rows(attacks: list[AttackResult], name: str, notes: list[str]) -> list[dict[str, Any]]:
    """Report rows of the concept's attacks, each marked meaningful or not; notes say why not."""
    rows = []
    for attack in (x for x in attacks if x.concept == name):
        passed = attack.reference_passed
        meaningful = passed is None or passed
        if not meaningful:
            notes.append(f"attack {attack.name} fails its reference check (reference ASR {attack.reference_asr} < "
                         f"{REFERENCE_MIN_ASR}): it fails on the unedited model, so its ASR on the edited one "
                         "means little")
        if not attack.scoreable:
            notes.append(f"attack {attack.name} has no scoreable instance on the edited model")
        rows.append({**attack.to_dict(), "meaningful": meaningful})
    return rows


def attack_terms(attacks: list[AttackResult], name: str, notes: list[str],
                 problems: list[str]) -> tuple[float, float, str, list[dict[str, Any]]]:
    """(a, a for the no-edit row, that row's note, report rows); notes and problems are appended to."""
    a, a_note = metrics.attack_term(attacks, name)
    a_ref, a_ref_note = metrics.attack_term(attacks, name, use_reference=True)
    if a_note == "no attacks run":
        notes.append("no attacks run: a = 1, so H is an upper bound")
    rows = attack_rows(attacks, name, notes)
    if rows:
        notes.append(a_note)
        if a != a:
            problems.append(f"attack term a not measurable ({a_note}); H is not reported")
    return a, a_ref, a_ref_note, rows
