"""Choosing the best configuration on validation, and saying when validation cannot choose.

Two configurations whose mean validation accuracies differ by less than one validation image are
tied; so is everything within the study's equivalence margin of the best when the best is within
that margin of 100% (the ceiling: no difference that matters could show). A tie is not broken by
noise: the smallest teacher set, then the cheapest, is taken, and a note says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[str, tuple[str, ...]]  # (method, teachers)


@dataclass
class Choice:
    """The best of several configurations on validation, or a tie that validation cannot break."""

    key: Key
    tied: list[Key]
    note: str | None


def choose(scores: dict[Key, float], val_count: int | None, equivalence: float,
           cost: Callable[[Key], float]) -> Choice:  # fmt: skip
    """The best on mean validation accuracy. Candidates within one validation image of the best
    are tied; if several are, or if the best is within `equivalence` (accuracy) of 100%, validation
    cannot separate them: the smallest set, then the cheapest, is taken, and the note says why."""
    best = max(scores.values())
    image = 1.0 / val_count if val_count else 0.0
    tied = [k for k, v in scores.items() if best - v < image - 1e-12] if image else []
    tied = tied or [max(scores, key=lambda k: scores[k])]
    ceiling = len(scores) > 1 and best > 1.0 - equivalence
    order = sorted(scores, key=lambda k: (-scores[k], len(k[1]), cost(k)))
    if len(tied) <= 1 and not ceiling:
        return Choice(order[0], [order[0]], None)
    pool = tied if len(tied) > 1 else order
    if ceiling and len(tied) <= 1:  # at the ceiling, everything within the margin is a tie
        pool = [k for k in scores if best - scores[k] < equivalence]
    pick = min(pool, key=lambda k: (len(k[1]), cost(k), -scores[k]))
    names = ", ".join(_name(k) for k in sorted(pool, key=lambda k: -scores[k])[:6])
    why = (f"validation is at its ceiling ({100 * best:.2f}%, within {100 * equivalence:.2f} points of 100%)"
           if ceiling else f"{len(pool)} configurations are within one validation image of the best")  # fmt: skip
    return Choice(pick, pool, f"validation cannot separate {names}: {why}. Took the smallest, cheapest "
                  f"({_name(pick)}); a val/ folder of your own or a larger data.val_fraction would let it choose.")  # fmt: skip


def _name(key: Key) -> str:
    return f"{key[0]} from {' + '.join(key[1])}" if key[1] else "alone"
