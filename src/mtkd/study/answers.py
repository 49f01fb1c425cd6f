"""The paper's three questions, answered from a study's rows with paired statistics over seeds.

Configurations are compared on test accuracy but chosen on validation accuracy (the "best"
transfer, the "best" single teacher, ...), so the choice does not peek at the test split.
Each answer is a sentence built from the numbers; where a difference is not significant at
the study's alpha, the sentence says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtkd.study.stats import TestResult, mean_std, one_sample_t_test, paired_t_test


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


def best_by_val(groups: list[Group]) -> Group | None:
    return max(groups, key=lambda g: g.stat("val_acc")[0], default=None)


def paired(a: Group, b: Group, key: str = "test_acc") -> TestResult:
    seeds = sorted(set(a.rows) & set(b.rows))
    return paired_t_test(a.values(key, seeds), b.values(key, seeds))


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _p(p: float) -> str:
    return "n/a" if p != p else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _evidence(r: TestResult) -> str:
    return f"p = {_p(r.p)}, {r.test}, {r.n} seeds"


def q1_sentence(what: str, r: TestResult, alpha: float) -> str:
    """Does transfer help: `r` is (with transfer) - (alone)."""
    diff = f"{_pts(r.diff)} ± {100 * r.diff_std:.2f} points"
    if r.n < 2:
        return f"Cannot tell: {what} is {diff} against the student alone, but one seed gives no test; run more seeds."
    if r.p < alpha and r.diff > 0:
        return f"Yes: {what} is {diff} over the student alone ({_evidence(r)})."
    if r.p < alpha and r.diff < 0:
        return f"No: {what} is {diff} below the student alone, a significant loss ({_evidence(r)})."
    return (f"Not shown: {what} is {diff} against the student alone, which is not significant "
            f"at {alpha} ({_evidence(r)}).")  # fmt: skip


def q2_sentence(student: str, teacher: str, student_acc: float, teacher_acc: float, r: TestResult,
                alpha: float, cost: str) -> str:  # fmt: skip
    """Does the student beat its teacher: `r` is (student) - (teacher)."""
    gap = f"{100 * student_acc:.2f}% against {teacher}'s {100 * teacher_acc:.2f}% ({_pts(r.diff)} ± {100 * r.diff_std:.2f} points"
    if r.n < 2:
        return f"Cannot tell: {student} reaches {gap}, one seed); run more seeds. {cost}"
    if r.p < alpha and r.diff > 0:
        return f"Yes: {student} beats {teacher}, {gap}, {_evidence(r)}), {cost}"
    if r.p < alpha and r.diff < 0:
        return f"No: {student} stays below {teacher}, {gap}, {_evidence(r)}), {cost}"
    return f"Not shown: {student} reaches {gap}, not significant at {alpha}: {_evidence(r)}), {cost}"


def q3_sentence(single: str, combo: str, r: TestResult, alpha: float) -> str:
    """Is one teacher enough: `r` is (best combination) - (best single teacher)."""
    diff = f"{_pts(r.diff)} ± {100 * r.diff_std:.2f} points"
    if r.n < 2:
        return f"Cannot tell: the best combination ({combo}) is {diff} against the best single teacher ({single}), one seed."
    if r.p < alpha and r.diff > 0:
        return (f"No: the best combination ({combo}) beats the best single teacher ({single}) by {diff} "
                f"({_evidence(r)}).")  # fmt: skip
    if r.p < alpha and r.diff < 0:
        return (f"Yes: the best single teacher ({single}) beats the best combination ({combo}), which is "
                f"{diff} below it ({_evidence(r)}).")  # fmt: skip
    return (f"One teacher is enough here: the best combination ({combo}) is {diff} against the best single "
            f"teacher ({single}), not significant at {alpha} ({_evidence(r)}).")  # fmt: skip


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


def answer(rows: list[dict], alpha: float) -> dict:
    """Per student: tables and the three answer sentences (a JSON-ready dict)."""
    teachers = {r["teachers"]: r for r in rows if r["kind"] == "teacher"}
    out = {}
    for student, groups in student_groups(rows).items():
        alone = next((g for g in groups if g.method == "none"), None)
        transfer = [g for g in groups if g.method != "none"]
        result: dict = {"configs": [], "q1": None, "q2": None, "q3": None}
        for g in groups:
            entry = {"label": g.short, "method": g.method, "teachers": list(g.teachers), "n": len(g.rows),
                     "seeds": sorted(g.rows)}  # fmt: skip
            for key in ("val_acc", "test_acc", "test_acc_last"):
                entry[key] = dict(zip(("mean", "std"), g.stat(key), strict=True))
            if alone is not None and g is not alone:
                entry["vs_alone"] = paired(g, alone).to_dict()
                entry["vs_alone_last"] = paired(g, alone, "test_acc_last").to_dict()
            result["configs"].append(entry)
        best = best_by_val(transfer)
        if alone is not None and best is not None:
            r = paired(best, alone)
            result["q1"] = {"best": best.short, "test": r.to_dict(),
                            "sentence": q1_sentence(f"{best.short} (best transfer on validation)", r, alpha)}  # fmt: skip
        top = best_by_val(groups)
        if top is not None and teachers:
            per_teacher = []
            row0 = next(iter(top.rows.values()))
            for name, trow in teachers.items():
                r = one_sample_t_test(top.values("test_acc"), float(trow["test_acc"]))
                mean = top.stat("test_acc")[0]
                sentence = q2_sentence(f"{student} ({top.short})", name, mean, float(trow["test_acc"]), r, alpha,
                                       cost_phrase(row0, trow))  # fmt: skip
                per_teacher.append({"teacher": name, "teacher_test_acc": float(trow["test_acc"]),
                                    "test": r.to_dict(), "sentence": sentence})  # fmt: skip
            strongest = max(per_teacher, key=lambda t: float(teachers[t["teacher"]]["val_acc"]))
            result["q2"] = {"student": top.short, "teachers": per_teacher, "sentence": strongest["sentence"]}
        singles = [g for g in transfer if len(g.teachers) == 1]
        combos = [g for g in transfer if len(g.teachers) > 1]
        by_size = []
        for k in sorted({len(g.teachers) for g in groups}):
            size_groups = [g for g in groups if len(g.teachers) == k]
            pick = best_by_val(size_groups)
            assert pick is not None
            means = [g.stat("test_acc")[0] for g in size_groups]
            by_size.append({"n_teachers": k, "best": pick.short, "test_acc": dict(zip(("mean", "std"), pick.stat("test_acc"), strict=True)),
                            "all_configs_mean": sum(means) / len(means), "configs": len(size_groups)})  # fmt: skip
        result["by_size"] = by_size
        if singles and combos:
            s, c = best_by_val(singles), best_by_val(combos)
            assert s is not None and c is not None
            r = paired(c, s)
            result["q3"] = {"single": s.short, "combination": c.short, "test": r.to_dict(),
                            "sentence": q3_sentence(s.short, c.short, r, alpha)}  # fmt: skip
        else:
            result["q3"] = {"sentence": "Not asked: the study has no combination of teachers "
                            "(a pool of one, or max_teachers 1)." if singles else
                            "Not asked: the study has no student trained from a single teacher."}  # fmt: skip
        out[student] = result
    return out
