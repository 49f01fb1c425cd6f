"""Sequential seeds: thousands of simulated studies (synthetic accuracies, no training) read by
the study's own look procedure (`settle`) and answers. With no true difference anywhere, a false
"Yes" (Q1: transfer helps; Q2: the student beats its teacher; Q3: a combination beats the best
single teacher) must stay at or below alpha, although the answers are read at up to 8 looks;
without the correction for looks the same simulation goes above it. With a true gain, the
procedure finds it."""

from __future__ import annotations

import numpy as np
import pytest

import mtkd.study.runner as runner
from mtkd.study.answers import Reading, answer
from mtkd.study.config import StudyConfig
from mtkd.study.plan import Job

TRANSFER = [(m, t) for m in ("features", "camkd") for t in (("a",), ("b",), ("a", "b"))]
CONFIGS = [("none", ()), *TRANSFER]


def _jobs(cfg: StudyConfig, teacher_seeds: int) -> list[Job]:
    jobs = [Job(f"teachers/{t}/{s}", "teacher", None, info={"teacher": t, "seed": s})
            for t in ("a", "b") for s in range(teacher_seeds)]  # fmt: skip
    jobs += [Job(f"runs/{m}/{'+'.join(t) or 'alone'}/{s}", "student", None,
                 info={"student": "s", "method": m, "teachers": list(t), "seed": s})
             for m, t in CONFIGS for s in cfg.seed_pool]  # fmt: skip
    return jobs


def simulate(cfg: StudyConfig, studies: int, gain: dict | None = None, seed: int = 0, teacher_seeds: int = 3):
    """Rates of each question's reading 'above zero' over `studies` simulated studies.

    A run's accuracy: 0.95 + gain of its config + a seed effect shared by the configs of a seed
    (same data order) + the run's own quality, seen on validation and on test each with its own
    noise: validation and test of a run correlate (r = 0.69, a pessimistic case for choosing the
    best configuration on validation). Teachers come from the same distribution as the student.
    """
    rng = np.random.default_rng(seed)
    gain = gain or {}
    above = {"q1": 0, "q2": 0, "q3": 0}
    runs = 0
    jobs = _jobs(cfg, teacher_seeds)
    for _ in range(studies):
        seed_effect = rng.normal(0, 0.003, 100)
        made: dict[str, dict] = {}

        def row(job: Job, made: dict = made, seed_effect: np.ndarray = seed_effect) -> dict:
            if job.id not in made:
                i = job.info
                if job.kind == "teacher":
                    q = 0.95 + rng.normal(0, 0.003)
                    base = {
                        "kind": "teacher",
                        "teachers": i["teacher"],
                        "seed": i["seed"],
                        "params": 100,
                        "macs": 100,
                    }
                else:
                    q = 0.95 + gain.get((i["method"], tuple(i["teachers"])), 0.0) + seed_effect[i["seed"]]
                    q += rng.normal(0, 0.003)
                    base = {"kind": "student", "student": "s", "method": i["method"], "seed": i["seed"],
                            "teachers": "+".join(i["teachers"]), "params": 10, "macs": 10}  # fmt: skip
                val, test = q + rng.normal(0, 0.002), q + rng.normal(0, 0.002)
                made[job.id] = {**base, "val_acc": val, "test_acc": test, "test_acc_last": test,
                                "latency_ms": 1.0, "num_classes": 10}  # fmt: skip
            return made[job.id]

        wanted, _ = runner.settle(cfg, jobs, lambda some: [], lambda some: [row(j) for j in some])
        runs += sum(j.kind == "student" for j in wanted)
        a = answer([row(j) for j in wanted], runner.reading_of(cfg))["s"]
        for q in above:
            above[q] += a[q]["reading"] == "above"
    return {q: n / studies for q, n in above.items()}, runs / studies


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setattr(runner, "say", lambda *a, **k: None)


SEQUENTIAL = StudyConfig(seeds={"min": 3, "max": 10}, teacher_seeds=3)


def test_no_false_yes_beyond_alpha_over_eight_looks():
    rates, runs = simulate(SEQUENTIAL, 2000)
    assert SEQUENTIAL.looks == 8
    # Each rate's standard error is at most 0.5% here; alpha is 5%.
    assert all(rate <= SEQUENTIAL.alpha for rate in rates.values()), rates
    assert 7 * 3 < runs < 7 * 10  # seeds were added, to some configurations only


def test_without_the_correction_repeated_looks_inflate_false_yes(monkeypatch):
    """The same simulation reading every look at the plain 95% level: Q1 says Yes falsely more
    often than alpha, which is what the Bonferroni split over looks prevents."""
    monkeypatch.setattr(runner, "reading_of", lambda cfg: Reading(cfg.alpha, cfg.equivalence / 100, 1))
    rates, _ = simulate(SEQUENTIAL, 2000)
    assert rates["q1"] > SEQUENTIAL.alpha, rates


def test_a_real_gain_is_found():
    """One configuration 1 point better than the rest: Yes for Q1 in most studies."""
    rates, _ = simulate(SEQUENTIAL, 300, gain={("features", ("a",)): 0.01}, seed=1)
    assert rates["q1"] > 0.8, rates
