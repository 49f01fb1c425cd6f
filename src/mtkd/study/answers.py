"""The paper's three questions, answered from a study's rows with confidence intervals over seeds.

Configurations are compared on test accuracy but chosen on validation accuracy (the "best"
transfer, the "best" single teacher, ...), so the choice does not peek at the test split.
Each difference gets its interval (paired over seeds for Q1 and Q3; for Q2 against the
teacher's accuracy, with the teacher's own spread when it was adapted with several seeds),
read against zero and the equivalence margin: Yes, No, or Not settled, and the sentence says
why, with the interval, and how many seeds would likely settle what is not settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from mtkd.study.stats import (
    ABOVE,
    BELOW,
    EQUIVALENT,
    Interval,
    look_level,
    mean_std,
    paired_interval,
    reading,
    seeds_to_settle,
    teacher_seeds_to_settle,
    welch_interval,
)

if TYPE_CHECKING:
    from mtkd.study.config import StudyConfig

YES, NO, NOT_SETTLED = "Yes", "No", "Not settled"


@dataclass
class Group:
    """One student configuration (student, method, teacher set) over its seeds."""

    student: str
    method: str
    teachers: tuple[str, ...]
    rows: dict[int, dict] = field(default_factory=dict)  # seed -> row

    @property
    def label(self) -> str:
        if self.method == "none":
            return f"{self.student} alone"
        return f"{self.student} + {self.method} from {' + '.join(self.teachers)}"

    @property
    def short(self) -> str:
        return "alone" if self.method == "none" else f"{self.method} from {' + '.join(self.teachers)}"

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return self.student, self.method, self.teachers

    def values(self, key: str, seeds: list[int] | None = None) -> list[float]:
        seeds = sorted(self.rows) if seeds is None else seeds
        return [float(self.rows[s][key]) for s in seeds]

    def stat(self, key: str) -> tuple[float, float]:
        return mean_std(self.values(key))


def student_groups(rows: list[dict]) -> dict[str, list[Group]]:
    """student label -> its configurations, in the study's order."""
    out: dict[str, dict[tuple, Group]] = {}
    for row in rows:
        if row["kind"] != "student":
            continue
        teachers = tuple(t for t in row["teachers"].split("+") if t)
        key = (row["method"], teachers)
        groups = out.setdefault(row["student"], {})
        group = groups.setdefault(key, Group(row["student"], row["method"], teachers))
        group.rows[int(row["seed"])] = row
    return {student: list(groups.values()) for student, groups in out.items()}


def teacher_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """teacher label -> its adapted runs (one per teacher seed), the students' teacher first."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["kind"] == "teacher":
            out.setdefault(row["teachers"], []).append(row)
    return {k: sorted(v, key=lambda r: int(r["seed"])) for k, v in out.items()}


def best_by_val(groups: list[Group]) -> Group | None:
    return max(groups, key=lambda g: g.stat("val_acc")[0], default=None)


@dataclass(frozen=True)
class Reading:
    """How an answer is read: the interval's level, the margin (in accuracy, not points)."""

    alpha: float = 0.05
    equivalence: float = 0.005
    looks: int = 1
    advice: bool = True  # say how many seeds would settle what is not settled

    @property
    def level(self) -> float:
        return look_level(self.alpha, self.looks)


def reading_of(cfg: StudyConfig) -> Reading:
    """How a study reads its answers: its alpha, equivalence (points -> accuracy) and looks."""
    return Reading(cfg.alpha, cfg.equivalence / 100.0, cfg.looks)


def paired(a: Group, b: Group, how: Reading, key: str = "test_acc") -> Interval:
    seeds = sorted(set(a.rows) & set(b.rows))
    return paired_interval(a.values(key, seeds), b.values(key, seeds), how.level)


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _ci(iv: Interval) -> str:
    """'95% CI [+0.10, +0.90], paired t over seeds, 5 seeds'."""
    seeds = f"{iv.n} seeds" + (f" against {iv.n_other} teacher seeds" if iv.n_other > 1 else "")
    if iv.n < 2 and iv.n_other < 2:
        return f"no interval from {seeds}"
    return f"{100 * iv.level:.4g}% CI [{_pts(iv.lo)}, {_pts(iv.hi)}], {iv.test}, {seeds}"


def _more(iv: Interval, how: Reading, limit: int | None) -> str:
    n = seeds_to_settle(iv, how.equivalence)
    if iv.n < 2:
        return " Run at least 2 seeds."
    if iv.n_other >= 2 and (n is None or (limit is not None and n > limit)):
        t = teacher_seeds_to_settle(iv, how.equivalence, max(iv.n, limit or iv.n))
        if t is not None:
            return (f" The teacher's own seeds are what is short: at the observed spreads, about {t} teacher seeds "
                    f"(teacher_seeds: {t}) with {max(iv.n, limit or iv.n)} student seeds would settle it.")  # fmt: skip
    if n is None:
        return " At the observed spread no number of seeds within 1000 would settle it."
    more = f" At the observed spread, about {n} seeds would settle it"
    return more + (f" (the study stops at {limit})." if limit is not None and n > limit else ".")


def _settled(verdict: str, sentence: str, iv: Interval, how: Reading, limit: int | None) -> dict:
    reason = reading(iv, how.equivalence)
    if verdict == NOT_SETTLED and how.advice:
        sentence += _more(iv, how, limit)
    return {
        "verdict": verdict,
        "reading": reason,
        "interval": iv.to_dict(),
        "sentence": f"{verdict}: {sentence}",
    }


def q1(what: str, iv: Interval, how: Reading, limit: int | None = None) -> dict:
    """Does transfer help: `iv` is (with transfer) - (alone)."""
    r, diff, ci, m = reading(iv, how.equivalence), f"{_pts(iv.diff)} points", _ci(iv), 100 * how.equivalence
    if r == ABOVE:
        return _settled(YES, f"{what} improves on the student alone by {diff} ({ci}).", iv, how, limit)
    if r == EQUIVALENT:
        return _settled(NO, f"{what} is {diff} against the student alone ({ci}): inside ±{m:.2f} points, "
                        "no difference that matters.", iv, how, limit)  # fmt: skip
    if r == BELOW:
        return _settled(NO, f"{what} is {diff} below the student alone, a loss ({ci}).", iv, how, limit)
    return _settled(NOT_SETTLED, f"{what} is {diff} against the student alone ({ci}); the interval "
                    f"straddles {_boundary(iv, how)}.", iv, how, limit)  # fmt: skip


def _boundary(iv: Interval, how: Reading) -> str:
    m = 100 * how.equivalence
    if iv.lo <= 0 <= iv.hi:
        return (
            f"zero and ±{m:.2f} points" if (iv.lo <= -how.equivalence or iv.hi >= how.equivalence) else "zero"
        )
    return f"±{m:.2f} points"


def q2(student: str, teacher: str, student_acc: float, teacher_acc: float, iv: Interval, how: Reading,
       cost: str, limit: int | None = None) -> dict:  # fmt: skip
    """Does the student beat its teacher: `iv` is (student) - (teacher)."""
    r, ci = reading(iv, how.equivalence), _ci(iv)
    gap = f"{100 * student_acc:.2f}% against {teacher}'s {100 * teacher_acc:.2f}% ({_pts(iv.diff)} points, {ci})"
    if r == ABOVE:
        return _settled(YES, f"{student} beats {teacher}: {gap}, {cost}", iv, how, limit)
    if r == EQUIVALENT:
        m = 100 * how.equivalence
        return _settled(NO, f"{student} matches {teacher} within ±{m:.2f} points, no better: {gap}, {cost}",
                        iv, how, limit)  # fmt: skip
    if r == BELOW:
        return _settled(NO, f"{student} stays below {teacher}: {gap}, {cost}", iv, how, limit)
    return _settled(NOT_SETTLED, f"{student} reaches {gap}; the interval straddles {_boundary(iv, how)}. {cost}",
                    iv, how, limit)  # fmt: skip


def q3(single: str, combo: str, iv: Interval, how: Reading, limit: int | None = None) -> dict:
    """Is one teacher enough: `iv` is (best combination) - (best single teacher)."""
    r, diff, ci, m = reading(iv, how.equivalence), f"{_pts(iv.diff)} points", _ci(iv), 100 * how.equivalence
    if r == ABOVE:
        return _settled(NO, f"the best combination ({combo}) beats the best single teacher ({single}) by {diff} "
                        f"({ci}).", iv, how, limit)  # fmt: skip
    if r == EQUIVALENT:
        return _settled(YES, f"the best combination ({combo}) is {diff} against the best single teacher "
                        f"({single}) ({ci}): inside ±{m:.2f} points, no difference that matters.", iv, how, limit)  # fmt: skip
    if r == BELOW:
        return _settled(YES, f"the best single teacher ({single}) beats the best combination ({combo}), which is "
                        f"{diff} below it ({ci}).", iv, how, limit)  # fmt: skip
    return _settled(NOT_SETTLED, f"the best combination ({combo}) is {diff} against the best single teacher "
                    f"({single}) ({ci}); the interval straddles {_boundary(iv, how)}.", iv, how, limit)  # fmt: skip


def _ratio(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def cost_phrase(student_row: dict, teacher_row: dict) -> str:
    parts = [f"with {_ratio(student_row['params'], teacher_row['params'])} of its parameters",
             f"{_ratio(student_row['macs'], teacher_row['macs'])} of its MACs"]  # fmt: skip
    if student_row.get("latency_ms") and teacher_row.get("latency_ms"):
        speed = teacher_row["latency_ms"] / student_row["latency_ms"]
        parts.append(f"{speed:.1f}x faster per image on this CPU" if speed >= 1
                     else f"{1 / speed:.1f}x slower per image on this CPU")  # fmt: skip
    return ", ".join(parts) + "."


def teacher_warnings(teachers: dict[str, list[dict]], alone: Group | None) -> list[str]:
    """Teachers that look under-trained: near chance, or below the student trained alone."""
    out = []
    for name, runs in teachers.items():
        acc = mean_std([float(r["test_acc"]) for r in runs])[0]
        classes = int(runs[0].get("num_classes") or 0)
        chance = 1.0 / classes if classes else 0.0
        if classes and acc < 1.5 * chance:
            out.append(f"Teacher {name} is near chance ({100 * acc:.2f}% with {classes} classes, chance "
                       f"{100 * chance:.2f}%): it is probably under-trained (more teacher_fit epochs, a larger "
                       "input_size, or adapt.mode finetune), so what it teaches says little.")  # fmt: skip
        elif alone is not None and acc < alone.stat("test_acc")[0]:
            out.append(f"Teacher {name} ({100 * acc:.2f}%) is below the student trained alone "
                       f"({100 * alone.stat('test_acc')[0]:.2f}%): it may be under-trained (more teacher_fit "
                       "epochs, a larger input_size, or adapt.mode finetune).")  # fmt: skip
    return out


def compared(groups: list[Group]) -> dict[str, list[Group]]:
    """The configurations each question compares, chosen on validation accuracy."""
    alone = next((g for g in groups if g.method == "none"), None)
    transfer = [g for g in groups if g.method != "none"]
    best, top = best_by_val(transfer), best_by_val(groups)
    singles = [g for g in transfer if len(g.teachers) == 1]
    combos = [g for g in transfer if len(g.teachers) > 1]
    s, c = best_by_val(singles), best_by_val(combos)
    return {
        "q1": [g for g in (best, alone) if g is not None] if alone and best else [],
        "q2": [top] if top is not None else [],
        "q3": [c, s] if s is not None and c is not None else [],
    }


def questions(student: str, groups: list[Group], teachers: dict[str, list[dict]], how: Reading,
              limit: int | None = None, pick: dict[str, list[Group]] | None = None,
              chosen: str = "best transfer on validation") -> dict:  # fmt: skip
    """Q1-Q3 for one student's configurations (`pick`: their `compared`, if known; `chosen`: how
    Q1's configuration was chosen, said in its sentence): each a verdict, its interval and its
    sentence."""
    alone = next((g for g in groups if g.method == "none"), None)
    pick = compared(groups) if pick is None else pick
    out: dict = {"q1": None, "q2": None, "q3": None}
    if pick["q1"]:
        best, _ = pick["q1"]
        a = q1(f"{best.short} ({chosen})", paired(best, alone, how), how, limit)
        out["q1"] = {"best": best.short, **a}
    if pick["q2"] and teachers:
        (top,) = pick["q2"]
        per_teacher = []
        row0 = next(iter(top.rows.values()))
        for name, runs in teachers.items():
            t_acc = [float(r["test_acc"]) for r in runs]
            iv = welch_interval(top.values("test_acc"), t_acc, how.level)
            a = q2(f"{student} ({top.short})", name, top.stat("test_acc")[0], mean_std(t_acc)[0], iv, how,
                   cost_phrase(row0, runs[0]), limit)  # fmt: skip
            per_teacher.append({"teacher": name, "teacher_test_acc": mean_std(t_acc)[0],
                                "teacher_seeds": [int(r["seed"]) for r in runs], **a})  # fmt: skip
        strongest = max(
            per_teacher, key=lambda t: mean_std([float(r["val_acc"]) for r in teachers[t["teacher"]]])[0]
        )
        out["q2"] = {"student": top.short, "teachers": per_teacher, "teacher": strongest["teacher"],
                     **{k: strongest[k] for k in ("verdict", "reading", "interval", "sentence")}}  # fmt: skip
    if pick["q3"]:
        c, s = pick["q3"]
        out["q3"] = {
            "single": s.short,
            "combination": c.short,
            **q3(s.short, c.short, paired(c, s, how), how, limit),
        }
    else:
        singles = any(len(g.teachers) == 1 for g in groups)
        out["q3"] = {"verdict": "Not asked", "sentence": "Not asked: the study has no combination of teachers "
                     "(a pool of one, or max_teachers 1)." if singles else
                     "Not asked: the study has no student trained from a single teacher."}  # fmt: skip
    return out


def selection_warnings(groups: list[Group], rows: list[dict], margin: float) -> list[str]:
    """Where the configurations a question compares were chosen on a validation split that cannot
    separate them (ties within one image, or the ceiling), say so (`mtkd.study.select`)."""
    from mtkd.study.select import choose

    counts = [int(r["val_count"]) for r in rows if r.get("val_count")]
    out = []
    transfer = [g for g in groups if g.method != "none"]
    for what, pool in (("the best transfer", transfer), ("the best single teacher", [g for g in transfer if len(g.teachers) == 1]),
                       ("the best combination", [g for g in transfer if len(g.teachers) > 1])):  # fmt: skip
        if len(pool) < 2:
            continue
        scores = {(g.method, g.teachers): g.stat("val_acc")[0] for g in pool}
        note = choose(scores, min(counts) if counts else None, margin, lambda k: 0.0).note
        if note:
            out.append(
                f"Choosing {what} on validation: {note.replace('Took the smallest, cheapest', 'The study took the best on the mean instead')}"
            )
    return out


def answer(rows: list[dict], how: Reading, limit: int | None = None,
           picks: dict[str, dict[str, list[tuple]]] | None = None) -> dict:  # fmt: skip
    """Per student: tables and the three answers (a JSON-ready dict); `limit` is the most seeds a
    configuration may get (sequential seeds), for the 'would take N seeds' advice. `picks`: per
    student, the (method, teachers) each question compares, fixed by a search (default: chosen
    here on validation, as the grid does)."""
    teachers = teacher_rows(rows)
    out = {}
    for student, groups in student_groups(rows).items():
        alone = next((g for g in groups if g.method == "none"), None)
        result: dict = {"configs": [], "warnings": teacher_warnings(teachers, alone)}
        fixed = (picks or {}).get(student)
        by_key = {(g.method, g.teachers): g for g in groups}
        pick = (
            {q: [by_key[k] for k in ks if k in by_key] for q, ks in fixed.items()}
            if fixed
            else compared(groups)
        )
        pick = {q: (v if len(v) == {"q1": 2, "q2": 1, "q3": 2}[q] else []) for q, v in pick.items()}
        if not fixed:
            result["warnings"] += selection_warnings(groups, rows, how.equivalence)
        for g in groups:
            entry = {"label": g.short, "method": g.method, "teachers": list(g.teachers), "n": len(g.rows),
                     "seeds": sorted(g.rows)}  # fmt: skip
            for key in ("val_acc", "test_acc", "test_acc_last"):
                entry[key] = dict(zip(("mean", "std"), g.stat(key), strict=True))
            if alone is not None and g is not alone:
                for name, key in (("vs_alone", "test_acc"), ("vs_alone_last", "test_acc_last")):
                    iv = paired(g, alone, how, key)
                    entry[name] = {**iv.to_dict(), "reading": reading(iv, how.equivalence)}
            result["configs"].append(entry)
        chosen = "chosen by the search" if fixed else "best transfer on validation"
        result["chosen"] = "chosen by the search" if fixed else "best on validation"
        result.update(questions(student, groups, teachers, how, limit, pick=pick, chosen=chosen))
        by_size = []
        for k in sorted({len(g.teachers) for g in groups}):
            size_groups = [g for g in groups if len(g.teachers) == k]
            best_k = best_by_val(size_groups)
            assert best_k is not None
            means = [g.stat("test_acc")[0] for g in size_groups]
            by_size.append({"n_teachers": k, "best": best_k.short, "test_acc": dict(zip(("mean", "std"), best_k.stat("test_acc"), strict=True)),
                            "all_configs_mean": sum(means) / len(means), "configs": len(size_groups)})  # fmt: skip
        result["by_size"] = by_size
        out[student] = result
    return out


def unsettled_configs(rows: list[dict], how: Reading) -> list[tuple[str, str, tuple[str, ...]]]:
    """Keys (student, method, teachers) of the configurations compared by an unsettled question."""
    teachers, quiet = teacher_rows(rows), replace(how, advice=False)
    keys: dict[tuple, None] = {}
    for student, groups in student_groups(rows).items():
        pick = compared(groups)
        answers = questions(student, groups, teachers, quiet, pick=pick)
        for q in ("q1", "q2", "q3"):
            if answers[q] and answers[q].get("verdict") == NOT_SETTLED:
                for g in pick[q]:
                    keys[g.key] = None
    return list(keys)
