"""Searching a pool of teachers: thousands of simulated studies (synthetic accuracies, no training)
driven through the study's own search (`mtkd.study.search.drive`) and answers.

A pool of 10 candidates. With no true difference anywhere, a false "Yes" (Q1: transfer helps,
Q2: the student beats its teacher, Q3: a combination beats the best single teacher) stays at or
below alpha, although the search picked the best of many configurations on validation: the
answers come from fresh seeds only. With one candidate 1 point better wherever it is in the set,
the search finds a set holding it in at least 80% of studies at the study page's budget (docs/study.md).
"""

from __future__ import annotations

import numpy as np
import pytest

import mtkd.study.runner as runner
from mtkd.errors import MtkdError
from mtkd.study.answers import answer
from mtkd.study.config import StudyConfig
from mtkd.study.plan import Job, Planner
from mtkd.study.search import choose, costs, drive, picks_of, shortlist_size

POOL = [{"name": "mobilenet_v2", "label": f"c{i}", "input_size": 32 + 8 * i} for i in range(10)]


def pool_config(strategy: str, budget: float | None = None, **extra) -> StudyConfig:
    return StudyConfig.model_validate({
        "teachers": POOL, "methods": ["none", "features"], "max_teachers": 3, "teacher_seeds": 3,
        "seeds": {"min": 3, "max": 10}, "threads": 1, "student": {"schedule": {"epochs": 8}},
        "search": {"strategy": strategy, "budget": budget, **extra},
    })  # fmt: skip


def simulate(cfg: StudyConfig, studies: int, good: str | None = None, seed: int = 0, val_count: int = 1000):
    """Rates of each question's reading 'above zero', how often the chosen set holds `good`, and the
    mean student-run equivalents spent on the search.

    A run's accuracy: 0.95, minus 2 points at a schedule fraction f of 0 (linear in f), plus the
    true gain of its configuration (+1 point when `good` is among its teachers) times sqrt(f) (a
    short run shows part of it), plus a seed effect shared by the configurations of a seed, plus the
    run's own quality; validation and test each add their own noise (they correlate, r ~ 0.69).
    Teachers come from the same distribution as the student alone.
    """
    rng = np.random.default_rng(seed)
    planner = Planner(cfg)
    how = runner.reading_of(cfg)
    above = {"q1": 0, "q2": 0, "q3": 0}
    found, spent = 0, 0.0
    for _ in range(studies):
        seed_effect = {s: rng.normal(0, 0.003) for s in [*cfg.seed_pool, *cfg.search_seeds]}
        made: dict[str, dict] = {}

        def row(job: Job, made: dict = made, seed_effect: dict = seed_effect) -> dict:
            if job.id in made:
                return made[job.id]
            i = job.info
            if job.kind == "teacher":
                q = 0.95 + rng.normal(0, 0.003)
                base = {"kind": "teacher", "teachers": i["teacher"], "seed": i["seed"], "params": 100,
                        "macs": 100, "n_teachers": 0, "epochs": 30, "full_epochs": 30, "stage": "confirm"}  # fmt: skip
            else:
                f = i["epochs"] / i["full_epochs"]
                gain = 0.01 if good in i["teachers"] else 0.0
                q = 0.95 - 0.02 * (1 - f) + gain * f**0.5 + seed_effect[i["seed"]] + rng.normal(0, 0.003)
                base = {"kind": "student", "student": i["student"], "method": i["method"], "seed": i["seed"],
                        "teachers": "+".join(i["teachers"]), "n_teachers": len(i["teachers"]), "params": 10,
                        "macs": 10, "epochs": i["epochs"], "full_epochs": i["full_epochs"], "stage": i["stage"]}  # fmt: skip
            val, test = q + rng.normal(0, 0.002), q + rng.normal(0, 0.002)
            made[job.id] = {**base, "val_acc": round(val * val_count) / val_count, "test_acc": test,
                            "test_acc_last": test, "latency_ms": 1.0, "num_classes": 10, "run": job.id,
                            "val_count": val_count}  # fmt: skip
            return made[job.id]

        wanted, failures, records = drive(planner, how, lambda some: [], lambda some: [row(j) for j in some])
        assert not failures and all(r.complete for r in records.values())
        record = records["cnn_small"]
        spent += record.spent
        found += good is not None and good in record.chosen[1]
        confirm = [row(j) for j in wanted if j.kind == "teacher" or j.info["stage"] == "confirm"]
        a = answer(confirm, how, cfg.seeds.max, picks_of(records))["cnn_small"]
        for q in above:
            above[q] += a[q] is not None and a[q].get("reading") == "above"
    return {q: n / studies for q, n in above.items()}, found / studies, spent / studies


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setattr(runner, "say", lambda *a, **k: None)


# The budget the study page (docs/study.md) names for a pool of 10 with max_teachers 3 (the grid: 175 sets).
BUDGET = 20


@pytest.mark.parametrize("strategy", ["greedy", "halving"])
def test_no_false_yes_beyond_alpha_after_searching_a_pool_of_ten(strategy):
    cfg = pool_config(strategy, BUDGET)
    rates, _, spent = simulate(cfg, 400, seed=3)
    assert spent <= BUDGET + 1e-9
    # With 400 studies a rate's standard error is at most 1.1 points; alpha is 5%.
    assert all(rate <= cfg.alpha for rate in rates.values()), rates


@pytest.mark.parametrize("strategy", ["greedy", "halving"])
def test_the_search_finds_a_teacher_one_point_better_at_the_readme_budget(strategy):
    cfg = pool_config(strategy, BUDGET)
    rates, found, spent = simulate(cfg, 200, good="c7", seed=4)
    assert found >= 0.8, (found, rates)
    assert rates["q1"] >= 0.8, rates  # and the confirmation says Yes to Q1


def test_choosing_the_best_of_many_on_the_same_seeds_would_inflate_q1():
    """The winner's curse the confirmation seeds prevent: reading Q1 on the search's own runs (the
    best of ten singles on validation against the student alone, same seeds) says Yes falsely
    more often than alpha in the same pessimistic model."""
    rng = np.random.default_rng(5)
    false_yes = 0
    for _ in range(400):
        seed_effect = rng.normal(0, 0.003, 3)
        q = 0.95 + seed_effect[None, :] + rng.normal(0, 0.003, (11, 3))
        val, test = q + rng.normal(0, 0.002, q.shape), q + rng.normal(0, 0.002, q.shape)
        best = 1 + int(np.argmax(val[1:].mean(1)))
        d = test[best] - test[0]
        se = d.std(ddof=1) / np.sqrt(3)
        false_yes += d.mean() - 4.303 * se > 0  # 95% paired t with 2 degrees of freedom
    assert false_yes / 400 > 0.05


def test_ties_and_the_ceiling_are_said_not_chosen():
    a, b, c = ("features", ("x",)), ("features", ("x", "y")), ("features", ("z",))
    # Within one validation image of each other (1/500): tied, the smaller set is taken.
    pick = choose({a: 0.900, b: 0.9015, c: 0.80}, 500, 0.005, lambda k: 0.0)
    assert pick.key == a and set(pick.tied) == {a, b} and "within one validation image" in pick.note
    # Clearly apart: the best, no note.
    pick = choose({a: 0.90, b: 0.93, c: 0.80}, 500, 0.005, lambda k: 0.0)
    assert pick.key == b and pick.note is None
    # At the ceiling (99.6% with a 0.5-point margin): everything within the margin is a tie.
    pick = choose({a: 0.9937, b: 0.9960, c: 0.9920}, 10_000, 0.005, lambda k: {a: 5, b: 1, c: 1}[k])
    assert pick.key == c and "ceiling" in pick.note and "val/" in pick.note


def test_costs_and_budgets():
    cfg = pool_config("greedy", None)
    planner = Planner(cfg)
    # Screening: 10 candidates x 2 of 8 epochs; greedy over 10: 10 + 9 + 8 full runs.
    assert costs(planner, "cnn_small", "greedy", 10).screen == pytest.approx(2.5)
    assert costs(planner, "cnn_small", "greedy", 10).search == 27
    assert costs(planner, "cnn_small", "grid", 10).search == (10 + 45 + 120) * 3
    # Budget 20: 2.5 + 3k - 3 <= 20, so the best 6 candidates by screening.
    assert shortlist_size(Planner(pool_config("greedy", 20)), "cnn_small", "greedy") == 6
    # Halving over 10: 175 sets at 2 epochs (the singles' screening runs reused), 59 at 6, 20 at 8.
    h = costs(planner, "cnn_small", "halving", 10)
    assert h.search == pytest.approx(165 * 2 / 8 + 59 * 6 / 8 + 20 * 8 / 8)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"strategy": "beam"}}, "search.strategy"),
        ({"search": {"strategy": "greedy", "budget": 1}}, "too small"),
        ({"search": {"strategy": "grid", "budget": 10}}, "the grid needs"),
        ({"search": {"strategy": "greedy", "seed_start": 2}}, "overlap the confirmation seeds"),
        ({"teachers": [{"name": "mobilenet_v2", "input_size": [64, 64]}]}, "same candidate"),
        (
            {
                "teachers": [
                    {"name": "mobilenet_v2", "input_size": 64},
                    {"name": "mobilenet_v2", "label": "b", "input_size": 64},
                ]
            },
            "same candidate",
        ),
        ({"teachers": ["mobilenet_v2"], "search": {"strategy": "greedy"}}, "at least 2 candidates"),
        ({"teachers": ["mobilenet_v2"], "search": {"strategy": "halving"}}, "1 configuration(s)"),
        ({"teachers": [{"name": "mobilenet_v2", "label": ".."}]}, "is a path"),
    ],
)
def test_bad_searches_are_one_line_before_anything_runs(tmp_path, change, message):
    from mtkd.study.plan import plan

    tree = {"teachers": POOL[:4], "methods": ["none", "features"], "threads": 1,
            "output": str(tmp_path / "s"), "student": {"schedule": {"epochs": 8}}, **change}  # fmt: skip
    with pytest.raises((MtkdError, ValueError)) as err:
        plan(StudyConfig.model_validate(tree))
    assert message in str(err.value)
    assert "\n" not in str(err.value).strip() or "validation error" in str(err.value)
    assert not (tmp_path / "s").exists()


def test_a_pool_entry_with_lists_is_one_candidate_per_value():
    from mtkd.study.config import teacher_entries

    cfg = StudyConfig.model_validate({"teachers": [
        {"name": "mobilenet_v2", "input_size": [64, 96], "mode": ["probe", "finetune"]},
        {"name": "tf_efficientnet_lite0", "label": "lite0", "teacher": {"input_size": [48, 64]}},
    ]})  # fmt: skip
    entries = teacher_entries(cfg)
    assert list(entries) == ["mobilenet_v2-64px-probe", "mobilenet_v2-64px-finetune", "mobilenet_v2-96px-probe",
                             "mobilenet_v2-96px-finetune", "lite0-48px", "lite0-64px"]  # fmt: skip
    assert entries["mobilenet_v2-96px-finetune"]["teacher"]["input_size"] == 96
    assert entries["mobilenet_v2-96px-finetune"]["adapt"]["mode"] == "finetune"
    assert entries["lite0-64px"]["teacher"] == {"name": "tf_efficientnet_lite0", "input_size": 64}


def test_a_pool_of_twenty_plans_and_validates_quickly():
    import time

    teachers = [{"name": n, "input_size": [32, 40, 48, 56, 64]}
                for n in ("mobilenet_v2", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")]  # fmt: skip
    cfg = StudyConfig.model_validate({"teachers": teachers, "methods": ["none", "features", "kd"], "threads": 1,
                                      "max_teachers": 3, "search": {"strategy": "halving", "budget": 100}})  # fmt: skip
    from mtkd.study.plan import plan

    t0 = time.perf_counter()
    jobs = plan(cfg)
    assert len(Planner(cfg).candidates) == 20
    assert sum(j.kind == "teacher" for j in jobs) == 20
    assert time.perf_counter() - t0 < 30


def test_a_halving_search_runs_end_to_end_and_replays(tmp_path, monkeypatch):
    """Real runs on digits: 4 candidates, halving at a budget; the report has the screening, the
    search and the curve; a second invocation runs nothing and makes the same choice."""
    import json

    from mtkd.study.config import load_study_config
    from mtkd.study.runner import run_study

    monkeypatch.setenv("MTKD_HOME", str(tmp_path / "home"))
    spec = tmp_path / "pool.yaml"
    spec.write_text(
        f"name: pool\noutput: {tmp_path / 'out'}\ndata: {{name: digits}}\nseeds: [0, 1]\nmax_teachers: 2\n"
        "methods: [none, features]\nthreads: 1\n"
        "teachers:\n  - {name: mobilenet_v2, input_size: [32, 40]}\n  - {name: tf_efficientnet_lite0, input_size: [32, 40]}\n"
        "teacher_fit: {schedule: {epochs: 2}}\nstudent: {schedule: {epochs: 3}}\n"
        "search: {strategy: halving, budget: 8, eta: 3, screen_epochs: 1}\n"
    )
    answers = run_study(load_study_config(spec))
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    record = out["search"]["cnn_small"]
    assert record["complete"] and record["strategy"] == "halving"
    assert 0 < record["spent"] <= 8
    assert [s["epochs"] for s in record["steps"]] == [1, 3]
    chosen = tuple(record["chosen"][1])
    # Confirmation runs use seeds 0 and 1 only; search runs seed 1000 only.
    runs = out["runs"]
    assert {r["seed"] for r in runs if r["kind"] == "student" and r["stage"] == "confirm"} == {0, 1}
    assert {r["seed"] for r in runs if r["kind"] == "student" and r["stage"] != "confirm"} == {1000}
    assert answers["cnn_small"]["q1"]["best"].endswith(" + ".join(chosen))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Screening the pool" in report and "## The search (halving)" in report
    again = run_study(load_study_config(spec))
    assert again["cnn_small"]["q1"]["interval"] == answers["cnn_small"]["q1"]["interval"]
    assert "(chosen by the search)" in answers["cnn_small"]["q1"]["sentence"]


def test_a_grid_with_screen_epochs_reports_how_well_the_screening_ranks(tmp_path, monkeypatch):
    """Real runs on digits: a grid of 3 single teachers with screening runs; the screening table's
    Spearman rho equals a hand ranking of the screening runs against the full-schedule runs."""
    import json

    from mtkd.study.config import load_study_config
    from mtkd.study.runner import run_study

    monkeypatch.setenv("MTKD_HOME", str(tmp_path / "home"))
    spec = tmp_path / "grid.yaml"
    spec.write_text(
        f"name: grid\noutput: {tmp_path / 'out'}\ndata: {{name: digits}}\nseeds: [0]\nmax_teachers: 1\n"
        "methods: [none, kd]\nthreads: 1\n"
        "teachers:\n  - {name: mobilenet_v2, input_size: [32, 40]}\n  - {name: tf_efficientnet_lite0, input_size: 32}\n"
        "teacher_fit: {schedule: {epochs: 2}}\nstudent: {schedule: {epochs: 3}}\n"
        "search: {strategy: grid, screen_epochs: 1}\n"
    )
    answers = run_study(load_study_config(spec))
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = [r for r in out["runs"] if r["kind"] == "student"]
    screen = {r["teachers"]: float(r["val_acc"]) for r in runs if r["stage"] == "screen"}
    full = {
        r["teachers"]: float(r["test_acc"]) for r in runs if r["stage"] == "confirm" and r["n_teachers"] == 1
    }
    assert len(screen) == 3 and set(screen) == set(full)
    assert {int(r["epochs"]) for r in runs if r["stage"] == "screen"} == {1}
    assert out["search"]["cnn_small"]["screen"]["kd"] == screen

    def ranks(values: dict) -> dict:  # average ranks, ties shared
        order = sorted(values.values())
        return {k: sum(i for i, v in enumerate(order) if v == x) / order.count(x) for k, x in values.items()}

    rs, rf = ranks(screen), ranks(full)
    names = sorted(screen)
    mean = (len(names) - 1) / 2
    cov = sum((rs[k] - mean) * (rf[k] - mean) for k in names)
    var = (sum((rs[k] - mean) ** 2 for k in names) * sum((rf[k] - mean) ** 2 for k in names)) ** 0.5
    report = (tmp_path / "out" / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("| screening run's validation accuracy"))
    assert f"{cov / var:+.2f}" in line if var else "n/a" in line
    assert "## The search" not in report and "## Screening the pool" in report
    assert "(best transfer on validation)" in answers["cnn_small"]["q1"]["sentence"]


def test_min_teachers_plans_teams_only():
    """`min_teachers: 2` compares methods on teams: the grid has no single teacher; a method that
    takes one teacher, or a search that starts from one, is refused in one line."""
    from mtkd.study.plan import plan

    pool = POOL[:3]
    base = {"teachers": pool, "methods": ["none", "features", "avg_kd"], "threads": 1, "seeds": [0, 1],
            "max_teachers": 3, "min_teachers": 2}  # fmt: skip
    jobs = [j for j in plan(StudyConfig.model_validate(base)) if j.kind == "student"]
    sets = {(j.info["method"], tuple(j.info["teachers"])) for j in jobs}
    assert sets == {("none", ())} | {(m, s) for m in ("features", "avg_kd")
                                     for s in (("c0", "c1"), ("c0", "c2"), ("c1", "c2"), ("c0", "c1", "c2"))}  # fmt: skip
    assert len(jobs) == 2 * len(sets)
    with pytest.raises(MtkdError, match="method 'kd' takes at most 1 teacher.*min_teachers is 2"):
        plan(StudyConfig.model_validate({**base, "methods": ["none", "kd"]}))
    with pytest.raises(MtkdError, match="min_teachers 4 is above the pool's 3 teachers"):
        plan(StudyConfig.model_validate({**base, "max_teachers": 4, "min_teachers": 4}))
    for bad, message in (({"min_teachers": 4}, "min_teachers 4 is above max_teachers 3"),
                         ({"search": {"strategy": "greedy"}}, "min_teachers is for a grid")):  # fmt: skip
        with pytest.raises(Exception, match=message):
            StudyConfig.model_validate({**base, **bad})
    auto = StudyConfig.model_validate({**base, "teachers": POOL[:5]})  # 5 candidates: a grid all the same
    from mtkd.study.plan import search_strategy

    assert search_strategy(auto, 5) == "grid"
