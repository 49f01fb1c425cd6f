"""Choosing teachers from a pool at a budget: screen, search, then confirm on fresh seeds.

A study with a pool too large to train every subset (`search.strategy` greedy or halving) runs
three stages per student, each made of ordinary runs:

1. **Screen.** Every candidate alone, with every transfer method, in a short run
   (`search.screen_epochs`) on the first search seed: a cheap proxy of how much it helps. With the
   teachers' own validation accuracy, it ranks the pool; when the budget cannot take the whole pool
   into the search, the best-ranked candidates go (the shortlist).
2. **Search** on the search seeds (`search.seed_start`, +1, ...), which the answers never use.
   - greedy: forward selection, per method. The best single teacher on validation (full schedule),
     then the candidate whose addition most improves validation, until the gain is inside the
     study's `equivalence` or `max_teachers` is reached.
   - halving: successive halving (Jamieson & Talwalkar, AISTATS 2016, "Non-stochastic best arm
     identification and hyperparameter optimization"; the rung rule of Li et al., JMLR 2018,
     "Hyperband"): every teacher set x method at the screening schedule, the best 1/eta promoted to
     eta times the epochs, until the full schedule, where the survivors get every search seed.
   Where validation cannot separate the best candidates (within one validation image of each
   other, or every one within `equivalence` of 100%), the search says so and takes the smallest,
   cheapest of them rather than pretending to choose.
3. **Confirm** on the study's own seeds (sequential seeds work as in the grid): the student alone,
   the search's path (its best set of each size), and the chosen set without each of its members.
   The three questions compare configurations fixed by the search, and their intervals come from
   these seeds only, so choosing the best of many cannot inflate them (the winner's curse).

Cost is counted in student-run equivalents: a full-schedule run is 1, a run of e of E epochs e/E.
`drive` takes the functions that run jobs and read their rows, so a study, a replayed report and
the simulations of the tests go through the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtkd.errors import MtkdError
from mtkd.study.answers import NOT_SETTLED, Group, Reading, paired, questions, student_groups, teacher_rows
from mtkd.study.config import StudyConfig
from mtkd.study.plan import Job, Planner, search_strategy, teacher_subsets
from mtkd.study.select import Key, choose
from mtkd.study.stats import mean_std


def screen_epochs(cfg: StudyConfig, full: int, strategy: str) -> int:
    """Epochs of a screening run (0: no screening runs)."""
    if cfg.search.screen_epochs is not None:
        return min(cfg.search.screen_epochs, full)
    return 0 if strategy == "grid" else max(1, full // 4)


def _rungs(first: int, full: int, eta: int) -> list[int]:
    """The epochs of each halving rung: first, first*eta, ... capped at the full schedule."""
    out = [max(1, min(first, full))]
    while out[-1] < full:
        out.append(min(full, out[-1] * eta))
    return out


@dataclass
class Costs:
    """What one student's search would spend, in student-run equivalents, for a shortlist of k."""

    screen: float
    search: float

    @property
    def total(self) -> float:
        return self.screen + self.search


def halving_configs(planner: Planner, shortlist: list[str]) -> list[Key]:
    return [(m, s) for s in teacher_subsets(shortlist, planner.cfg.max_teachers)
            for m in planner.transfer_methods() if planner.allows(m, len(s))]  # fmt: skip


def costs(planner: Planner, student: str, strategy: str, k: int) -> Costs:
    """Screening the whole pool, then the search over a shortlist of k candidates (at most what
    it can spend: greedy may stop early)."""
    cfg, full = planner.cfg, planner.epochs[student]
    n, methods, seeds = len(planner.candidates), planner.transfer_methods(), cfg.search.seeds
    short = screen_epochs(cfg, full, strategy)
    screen = n * len(methods) * short / full
    if strategy == "greedy":
        steps = 0
        for m in methods:
            for size in range(1, cfg.max_teachers + 1):
                if planner.allows(m, size) and k - size + 1 > 0:
                    steps += k - size + 1
        return Costs(screen, steps * seeds)
    if strategy == "halving":
        configs = len(halving_configs(planner, planner.candidates[:k]))
        spent, alive = 0.0, configs
        rungs = _rungs(short or 1, full, cfg.search.eta)
        for r, epochs in enumerate(rungs):
            last = r == len(rungs) - 1
            runs = alive * (seeds if last else 1)
            if r == 0 and short:  # the singles' first rung is their screening run
                runs -= k * len(methods)
            spent += runs * epochs / full
            alive = max(1, math.ceil(alive / cfg.search.eta))
        return Costs(screen, spent)
    subsets = teacher_subsets(planner.candidates, cfg.max_teachers)
    configs = sum(planner.allows(m, len(s)) for m in methods for s in subsets)
    return Costs(screen, configs * len(cfg.first_seeds))


def shortlist_size(planner: Planner, student: str, strategy: str) -> int:
    """How many candidates the budget lets the search consider (all without a budget); a budget too
    small to screen every candidate, or to search two, is refused in one line."""
    cfg, n = planner.cfg, len(planner.candidates)
    budget = cfg.search.budget
    if budget is None:
        return n
    need = costs(planner, student, strategy, n)
    if budget < need.screen or (
        strategy != "grid" and costs(planner, student, strategy, min(2, n)).total > budget
    ):
        floor = max(need.screen, costs(planner, student, strategy, min(2, n)).total)
        raise MtkdError(
            f"search.budget {budget:g} is too small: screening the {n} candidates and searching the best 2 costs "
            f"{floor:.2f} student-run equivalents for student {student} (the whole pool: {need.total:.2f})"
        )
    if strategy == "grid":
        if need.total > budget:
            raise MtkdError(
                f"search.budget {budget:g}: the grid needs {need.total:.0f} student runs for student {student}; "
                "use search.strategy greedy or halving, or a larger budget"
            )
        return n
    return max(k for k in range(2, n + 1) if costs(planner, student, strategy, k).total <= budget)


def check_search(planner: Planner) -> None:
    """A search's settings against its pool, before anything runs: one line each."""
    cfg = planner.cfg
    strategy = search_strategy(cfg, len(planner.candidates))
    if strategy == "grid":
        for student in planner.students:
            shortlist_size(planner, student, strategy)
        return
    if strategy == "halving" and len(halving_configs(planner, planner.candidates)) < 2:
        raise MtkdError(
            f"search.strategy halving has {len(halving_configs(planner, planner.candidates))} configuration(s) "
            "to choose from (teacher sets x methods): nothing to halve; use search.strategy grid"
        )
    if len(planner.candidates) < 2:
        raise MtkdError(
            f"search.strategy {strategy} needs a pool of at least 2 candidates, the study has "
            f"{len(planner.candidates)}: use search.strategy grid"
        )
    if not planner.transfer_methods():
        raise MtkdError(f"search.strategy {strategy} needs a transfer method besides none")
    for student in planner.students:
        shortlist_size(planner, student, strategy)


@dataclass
class Record:
    """What one student's search did, for the report and results.json."""

    strategy: str
    budget: float | None
    shortlist: list[str] = field(default_factory=list)
    screen: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> candidate -> val
    steps: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: list[Key] = field(default_factory=list)  # the best set of each size, 1, 2, ...
    chosen: Key | None = None
    spent: float = 0.0
    grid_runs: int = 0
    leave_one_out: list[Key] = field(default_factory=list)
    picks: dict[str, list[Key]] = field(default_factory=dict)  # question -> the configurations it compares
    complete: bool = False
    counted: set[str] = field(default_factory=set)  # runs already in `spent`

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "counted"}
        out["picks"] = {q: [[m, list(t)] for m, t in ks] for q, ks in self.picks.items()}
        out["path"] = [[m, list(t)] for m, t in self.path]
        out["chosen"] = [self.chosen[0], list(self.chosen[1])] if self.chosen else None
        out["leave_one_out"] = [[m, list(t)] for m, t in self.leave_one_out]
        return out


class Incomplete(Exception):
    """A stage's runs are not all finished (a report of a study still running, or failures)."""


class Driver:
    """Runs one student's search through `run` (jobs -> failures; None: run nothing) and `rows_of`
    (jobs -> rows of the finished ones). Every decision reads only runs it asked for, so rerunning
    a study or its report replays the same choices."""

    def __init__(self, planner: Planner, how: Reading, run: Callable[[list[Job]], list[str]] | None,
                 rows_of: Callable[[list[Job]], list[dict]], wanted: list[Job]):  # fmt: skip
        self.planner, self.cfg, self.how = planner, planner.cfg, how
        self.run, self.rows_of, self.wanted = run, rows_of, wanted
        self.failures: list[str] = []
        self.teachers: dict[str, list[dict]] = {}
        self.val_count: int | None = None

    def execute(self, jobs: list[Job]) -> list[dict]:
        have = {j.id for j in self.wanted}
        for job in jobs:
            if job.id not in have:
                have.add(job.id)
                self.wanted.append(job)
        if self.run is not None:
            self.failures = self.run(self.wanted)
            if self.failures:
                raise Incomplete
        rows = self.rows_of(jobs)
        if len(rows) < len(jobs):
            raise Incomplete
        for row in rows:
            if row.get("val_count"):
                self.val_count = int(row["val_count"])
        return rows

    def scores(self, jobs: dict[Key, list[Job]], record: Record) -> dict[Key, float]:
        """Mean validation accuracy of each configuration over its jobs; their cost is counted once."""
        flat = [j for js in jobs.values() for j in js]
        rows = {r["run"]: r for r in self.execute(flat)}
        for job in flat:
            if job.id not in record.counted:
                record.counted.add(job.id)
                record.spent += job.info["epochs"] / job.info["full_epochs"]
        return {k: sum(float(rows[j.id]["val_acc"]) for j in js) / len(js) for k, js in jobs.items()}

    def cost(self, key: Key) -> float:
        """A teacher set's inference cost (MACs of its teachers), for breaking ties."""
        return sum(float(self.teachers[t][0].get("macs") or 0) for t in key[1] if t in self.teachers)

    def pick(self, scores: dict[Key, float], record: Record, what: str) -> Key:
        choice = choose(scores, self.val_count, self.cfg.equivalence / 100, self.cost)
        if choice.note:
            record.notes.append(f"{what}: {choice.note}")
        return choice.key

    # -- the stages ---------------------------------------------------------------------------------

    def teachers_stage(self) -> None:
        rows = self.execute(self.planner.teacher_jobs)
        self.teachers = teacher_rows(rows)

    def screen(self, student: str, strategy: str, record: Record) -> None:
        full = self.planner.epochs[student]
        short = screen_epochs(self.cfg, full, strategy)
        seed = self.cfg.search_seeds[0]
        if short:
            jobs = {(m, (c,)): [self.planner.student(student, m, (c,), seed, short, "screen")]
                    for m in self.planner.transfer_methods() for c in self.planner.candidates}  # fmt: skip
            for (m, (c,)), v in self.scores(jobs, record).items():
                record.screen.setdefault(m, {})[c] = v
        k = shortlist_size(self.planner, student, strategy)
        record.shortlist = self.rank(record)[:k]
        if k < len(self.planner.candidates):
            record.notes.append(f"the budget ({self.cfg.search.budget:g}) takes the best {k} of "
                                f"{len(self.planner.candidates)} candidates by screening into the search")  # fmt: skip

    def rank(self, record: Record) -> list[str]:
        """Candidates best first: by their best screening run, then their own validation accuracy."""

        def teacher_val(c: str) -> float:
            runs = self.teachers.get(c, [])
            return mean_std([float(r["val_acc"]) for r in runs])[0] if runs else 0.0

        def screened(c: str) -> float:
            return max((s[c] for s in record.screen.values() if c in s), default=0.0)

        return sorted(self.planner.candidates, key=lambda c: (-screened(c), -teacher_val(c)))

    def full_runs(self, student: str, keys: list[Key]) -> dict[Key, list[Job]]:
        return {k: [self.planner.student(student, k[0], k[1], s, None, "search") for s in self.cfg.search_seeds]
                for k in keys}  # fmt: skip

    def greedy(self, student: str, record: Record) -> None:
        """Forward selection per method; the path keeps the rejected last step too (the best set one
        larger than the chosen), so the confirmation can answer Q3 against it."""
        paths: dict[str, list[Key]] = {}
        finals: dict[Key, float] = {}
        for m in self.planner.transfer_methods():
            path: list[Key] = []
            current: tuple[Key, float] | None = None
            for size in range(1, self.cfg.max_teachers + 1):
                if not self.planner.allows(m, size):
                    break
                members = current[0][1] if current else ()
                keys = [(m, tuple(sorted((*members, c), key=record.shortlist.index)))
                        for c in record.shortlist if c not in members]  # fmt: skip
                if not keys:
                    break
                scores = self.scores(self.full_runs(student, keys), record)
                best = self.pick(scores, record, f"{m}, {size} teacher(s)")
                step = {"method": m, "size": size, "tried": len(keys), "best": list(best[1]),
                        "val": scores[best], "scores": {"+".join(k[1]): v for k, v in scores.items()}}  # fmt: skip
                record.steps.append(step)
                path.append(best)
                if current is not None:
                    gain = step["gain"] = scores[best] - current[1]
                    if gain < self.cfg.equivalence / 100:
                        added = next(t for t in best[1] if t not in members)
                        verb = (
                            f"gains {100 * gain:+.2f} points"
                            if gain > 0
                            else f"changes it by {100 * gain:+.2f} points"
                        )
                        step["stop"] = (f"adding {added} {verb} on validation, under the +{self.cfg.equivalence:.2f} "
                                        f"that matters: {size - 1} teacher(s)")  # fmt: skip
                        break
                current = (best, scores[best])
            if current is not None:
                paths[m], finals[current[0]] = path, current[1]
        record.chosen = self.pick(finals, record, "the chosen configuration")
        record.path = paths[record.chosen[0]]

    def halving(self, student: str, record: Record) -> None:
        cfg, full = self.cfg, self.planner.epochs[student]
        alive = halving_configs(self.planner, record.shortlist)
        rungs = _rungs(screen_epochs(cfg, full, "halving") or 1, full, cfg.search.eta)
        reached: dict[Key, tuple[int, float]] = {}
        scores: dict[Key, float] = {}
        for r, epochs in enumerate(rungs):
            last = r == len(rungs) - 1
            seeds = cfg.search_seeds if last else cfg.search_seeds[:1]
            stage = "search" if epochs >= full else "screen"
            jobs = {
                k: [self.planner.student(student, k[0], k[1], s, epochs, stage) for s in seeds] for k in alive
            }
            scores = self.scores(jobs, record)
            for k, v in scores.items():
                reached[k] = (r, v)
            order = sorted(alive, key=lambda k: (-scores[k], len(k[1]), self.cost(k)))
            keep = order if last else order[: max(1, math.ceil(len(alive) / cfg.search.eta))]
            record.steps.append({"rung": r, "epochs": epochs, "seeds": len(seeds), "configs": len(alive),
                                 "promoted": len(keep) if not last else 0,
                                 "best": ["+".join(k[1]) + f" ({k[0]})" for k in order[:3]]})  # fmt: skip
            alive = keep
        record.chosen = self.pick({k: scores[k] for k in alive}, record, "the chosen configuration")
        path = []
        for size in range(1, cfg.max_teachers + 1):
            sized = {k: v for k, v in reached.items() if len(k[1]) == size and k[0] == record.chosen[0]}
            if not sized:
                continue
            top_rung = max(r for r, _ in sized.values())
            path.append(max((k for k, (r, _) in sized.items() if r == top_rung), key=lambda k: sized[k][1]))
        if record.chosen not in path:
            path = [k for k in path if len(k[1]) != len(record.chosen[1])] + [record.chosen]
            path.sort(key=lambda k: len(k[1]))
        record.path = path

    def confirm(self, student: str, record: Record) -> list[Job]:
        """The student alone, the path and the chosen set's leave-one-out sets on the study's own
        seeds; with sequential seeds, the configurations of unsettled questions get more."""
        cfg, chosen = self.cfg, record.chosen
        assert chosen is not None
        alone: Key = ("none", ())
        keys = [alone, *record.path]
        single = record.path[0]
        combos = [k for k in record.path if len(k[1]) > 1]
        combo = chosen if len(chosen[1]) > 1 else (combos[0] if combos else None)
        pick = {"q1": [chosen, alone], "q2": [chosen], "q3": [combo, single] if combo else []}
        seeds = cfg.first_seeds
        given: dict[Key, list[int]] = {k: list(seeds) for k in keys}
        for look in range(cfg.looks):
            rows = self.execute(
                [self.planner.student(student, k[0], k[1], s) for k in given for s in given[k]]
            )
            if look == cfg.looks - 1:
                break
            groups = {g.key[1:]: g for g in student_groups(rows).get(student, [])}
            picked = {q: [groups[k] for k in ks] for q, ks in pick.items()}
            answers = questions(student, list(groups.values()), self.teachers, _quiet(self.how), pick=picked)
            unsettled = {k for q, ks in pick.items() if answers.get(q) and answers[q].get("verdict") == NOT_SETTLED
                         for k in ks}  # fmt: skip
            n = cfg.seeds.min + look + 1  # type: ignore[union-attr]
            grow = [k for k in unsettled if len(given[k]) < n]
            if not grow:
                break
            for k in grow:
                given[k] = cfg.seed_pool[:n]
        if cfg.search.leave_one_out and len(chosen[1]) > 1:
            record.leave_one_out = [
                (chosen[0], tuple(t for t in chosen[1] if t != drop)) for drop in chosen[1]
            ]
            self.execute([self.planner.student(student, m, t, s) for m, t in record.leave_one_out
                          for s in given[chosen]])  # fmt: skip
        record.picks = pick
        return self.wanted


def _quiet(how: Reading) -> Reading:
    from dataclasses import replace

    return replace(how, advice=False)


def drive(planner: Planner, how: Reading, run: Callable[[list[Job]], list[str]] | None,
          rows_of: Callable[[list[Job]], list[dict]], screen_only: bool = False,
          ) -> tuple[list[Job], list[str], dict[str, Record]]:  # fmt: skip
    """Every student's search, stage by stage: (the runs it asked for, failures, records).
    `screen_only`: the screening runs alone, for a grid with `search.screen_epochs` (its report
    then shows how well each proxy ranks the candidates against the grid's full-schedule runs)."""
    cfg = planner.cfg
    strategy = "grid" if screen_only else search_strategy(cfg, len(planner.candidates))
    wanted: list[Job] = []
    driver = Driver(planner, how, run, rows_of, wanted)
    records: dict[str, Record] = {}
    try:
        driver.teachers_stage()
        for student in planner.students:
            record = Record(strategy, cfg.search.budget)
            records[student] = record
            driver.screen(student, strategy, record)
            if not screen_only:
                record.grid_runs = int(costs(planner, student, "grid", len(planner.candidates)).search)
                getattr(driver, strategy)(student, record)
                driver.confirm(student, record)
            record.complete = True
    except Incomplete:
        pass
    return driver.wanted, driver.failures, records


def picks_of(records: dict[str, Record]) -> dict[str, dict[str, list[Key]]]:
    """student -> question -> the configuration keys it compares, as fixed by the search."""
    return {student: r.picks for student, r in records.items() if r.picks}


def leave_one_out_rows(groups: list[Group], record: Record, how: Reading) -> list[dict]:
    """Each member's contribution: the chosen set against the set without it, paired over seeds."""
    by_key = {g.key[1:]: g for g in groups}
    chosen = by_key.get(record.chosen) if record.chosen else None
    out = []
    for key in record.leave_one_out:
        without = by_key.get(key)
        if chosen is None or without is None:
            continue
        dropped = next(t for t in record.chosen[1] if t not in key[1])  # type: ignore[index]
        iv = paired(chosen, without, how)
        out.append({"member": dropped, "without": without.short, "interval": iv.to_dict()})
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (scipy.stats.spearmanr); None with fewer than 3 pairs or no spread."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def screening_table(rows: list[dict], records: dict[str, Record], student: str) -> dict[str, Any]:
    """Per candidate: its own validation accuracy (spread over teacher seeds), cost, screening runs,
    and the full-schedule single-teacher outcome where the study made one; Spearman's rho of each
    proxy against that outcome, over the candidates that have both."""
    teachers = teacher_rows(rows)
    record = records.get(student)
    full: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["kind"] == "student" and r["student"] == student and int(r.get("n_teachers") or 0) == 1 \
                and int(r["epochs"]) == int(r.get("full_epochs") or r["epochs"]):  # fmt: skip
            full.setdefault(r["method"], {}).setdefault(r["teachers"], []).append(float(r["test_acc"]))
    outcome = {m: {c: sum(v) / len(v) for c, v in per.items()} for m, per in full.items()}
    candidates = []
    for name, runs in teachers.items():
        val = [float(r["val_acc"]) for r in runs]
        candidates.append({
            "teacher": name, "val": mean_std(val), "seeds": len(runs), "params": runs[0]["params"],
            "macs": runs[0]["macs"], "latency_ms": runs[0].get("latency_ms"),
            "screen": {m: s.get(name) for m, s in (record.screen if record else {}).items()},
            "outcome": {m: o.get(name) for m, o in outcome.items()},
        })  # fmt: skip
    proxies = []
    for m, per in outcome.items():
        names = [c for c in per if c in teachers]
        tv = [mean_std([float(r["val_acc"]) for r in teachers[c]])[0] for c in names]
        proxies.append({"proxy": "teacher's own validation accuracy", "method": m, "n": len(names),
                        "rho": spearman(tv, [per[c] for c in names])})  # fmt: skip
        if record and m in record.screen:
            both = [c for c in names if c in record.screen[m]]
            proxies.append({"proxy": "screening run's validation accuracy", "method": m, "n": len(both),
                            "rho": spearman([record.screen[m][c] for c in both], [per[c] for c in both])})  # fmt: skip
    return {"candidates": candidates, "proxies": proxies}
