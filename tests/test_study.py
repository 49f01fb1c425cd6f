"""`mtkd study`: statistics against scipy, answers that follow the numbers, and a tiny study on
digits that runs end to end, is not redone, and survives a SIGKILL with the same results."""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy import special, stats

from conftest import run_cli
from mtkd.study.answers import answer, q1_sentence, q2_sentence, q3_sentence
from mtkd.study.stats import betainc, mean_std, one_sample_t_test, paired_t_test

A = [0.9635, 0.9722, 0.9619, 0.9660, 0.9701]
B = [0.9717, 0.9712, 0.9697, 0.9702, 0.9741]


def test_incomplete_beta_matches_scipy():
    rng = random.Random(0)
    for _ in range(500):
        a, b, x = rng.uniform(0.05, 60), rng.uniform(0.05, 60), rng.random()
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-12)


def test_t_tests_match_scipy():
    r = paired_t_test(B, A)
    ref = stats.ttest_rel(B, A)
    assert (r.t, r.p, r.n) == (
        pytest.approx(ref.statistic, rel=1e-10),
        pytest.approx(ref.pvalue, rel=1e-9),
        5,
    )
    assert r.diff == pytest.approx(sum(B) / 5 - sum(A) / 5)
    r1 = one_sample_t_test(A, 0.9676)
    ref1 = stats.ttest_1samp(A, 0.9676)
    assert r1.t == pytest.approx(ref1.statistic, rel=1e-10) and r1.p == pytest.approx(ref1.pvalue, rel=1e-9)
    m, s = mean_std(A)
    assert (m, s) == (pytest.approx(sum(A) / 5), pytest.approx(stats.tstd(A)))
    # Same difference on every seed: no spread, the sign is certain; no difference at all: p = 1.
    assert paired_t_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]).p == 0.0
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p == 1.0
    assert math.isnan(paired_t_test([1.0], [0.0]).p)


def test_answers_flip_with_the_numbers():
    better, worse = paired_t_test(B, A), paired_t_test(A, B)
    assert better.p < 0.05 and worse.p < 0.05
    assert q1_sentence("kd", better, 0.05).startswith("Yes: kd is +0.46 ± 0.37 points")
    assert q1_sentence("kd", worse, 0.05).startswith("No: kd is -0.46 ± 0.37 points below")
    noisy = paired_t_test([0.95, 0.97, 0.96], [0.96, 0.95, 0.965])
    assert noisy.p > 0.05 and q1_sentence("kd", noisy, 0.05).startswith("Not shown")
    assert q3_sentence("one", "two", better, 0.05).startswith("No: the best combination (two) beats")
    assert q3_sentence("one", "two", worse, 0.05).startswith("Yes: the best single teacher (one) beats")
    assert q3_sentence("one", "two", noisy, 0.05).startswith("One teacher is enough here")
    assert q2_sentence("s", "t", 0.97, 0.96, one_sample_t_test(B, 0.96), 0.05, "").startswith(
        "Yes: s beats t"
    )
    assert q2_sentence("s", "t", 0.95, 0.98, one_sample_t_test(A, 0.98), 0.05, "").startswith(
        "No: s stays below t"
    )
    assert q2_sentence("s", "t", 0.96, 0.96, one_sample_t_test(A, 0.967), 0.05, "").startswith("Not shown")


def _row(method, teachers, seed, val, test, **kw):
    return {"kind": "student", "student": "s", "model": "s", "method": method, "teachers": teachers,
            "n_teachers": len([t for t in teachers.split("+") if t]), "seed": seed, "val_acc": val,
            "test_acc": test, "test_acc_last": test, "params": 10, "macs": 10, "latency_ms": 1.0, **kw}  # fmt: skip


def test_best_configuration_is_chosen_on_validation_not_test():
    rows = [_row("none", "", s, 0.90, 0.90 + 0.001 * s) for s in range(3)]
    # 'kd from a' has the best test accuracy, 'kd from b' the best validation accuracy.
    rows += [_row("kd", "a", s, 0.91, 0.99 - 0.001 * s) for s in range(3)]
    rows += [_row("kd", "b", s, 0.95, 0.92 + 0.002 * s) for s in range(3)]
    rows += [_row("kd", "a+b", s, 0.93, 0.93 + 0.003 * s) for s in range(3)]
    rows += [{**_row("", "", 0, 0.94, 0.94), "kind": "teacher", "teachers": "a", "params": 1000, "macs": 1000,
              "latency_ms": 4.0}]  # fmt: skip
    a = answer(rows, 0.05)["s"]
    assert a["q1"]["best"] == "kd from b"
    assert a["q1"]["test"]["diff"] == pytest.approx(0.02 + 0.001)
    assert a["q3"]["single"] == "kd from b" and a["q3"]["combination"] == "kd from a+b".replace(
        "a+b", "a + b"
    )
    assert a["q2"]["student"] == "kd from b"
    assert "1.0% of its parameters" in a["q2"]["sentence"] and "4.0x faster" in a["q2"]["sentence"]
    assert [s["n_teachers"] for s in a["by_size"]] == [0, 1, 2]


STUDY = {
    "data": {"name": "digits"},
    "seeds": [0, 1],
    "methods": ["none", "features"],
    "student": {"model": {"name": "cnn_small"}, "schedule": {"epochs": 3}, "transfer": {"views": 2},
                "train": {"batch_size": 64}},
    "teacher_fit": {"schedule": {"epochs": 3}, "teacher": {"input_size": 32}},
    "teachers": ["mobilenet_v2", "tf_efficientnet_lite0"],
    "latency": {"repeats": 3},
}  # fmt: skip
RESULT_COLUMNS = ["kind", "method", "teachers", "seed", "val_acc", "test_acc", "test_acc_last", "best_epoch"]


def _results(folder: Path) -> list[dict]:
    with open(folder / "results.csv") as fh:
        return [{k: r[k] for k in RESULT_COLUMNS} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({**STUDY, "output": str(root / "out")}))
    from mtkd.cli.main import main

    main(["study", str(config)])
    return config, root / "out"


def test_study_runs_end_to_end(study):
    _, out = study
    rows = _results(out)
    # 2 teachers, and per seed: alone, features from each teacher and from both.
    assert sorted((r["kind"], r["method"], r["teachers"]) for r in rows if r["seed"] == "1") == [
        ("student", "features", "mobilenet_v2"), ("student", "features", "mobilenet_v2+tf_efficientnet_lite0"),
        ("student", "features", "tf_efficientnet_lite0"), ("student", "none", ""),
    ]  # fmt: skip
    assert len(rows) == 2 + 2 * 4
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "src='plots" not in html
    for q in ("Q1.", "Q2.", "Q3."):
        assert q in html
    # Every accuracy of the configuration table is the mean of its rows in results.csv.
    alone = [float(r["test_acc"]) for r in rows if r["method"] == "none"]
    mean, std = mean_std(alone)
    assert "| alone | 2 | " in (out / "report.md").read_text()
    assert f"{100 * mean:.2f} ± {100 * std:.2f}" in html
    assert all(p.stat().st_size > 1000 for p in (out / "plots").glob("*.png"))


def test_second_invocation_runs_nothing(study, capsys):
    config, out = study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    code, _, err = run_cli(["study", config], capsys)
    assert code == 0
    assert "0 to run" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == before


def test_killed_study_finishes_with_the_same_results(study, tmp_path):
    """Killed in a run, finished with --jobs 2: the rows of the in-process study, bit for bit."""
    config, reference = study
    tree = yaml.safe_load(config.read_text()) | {"output": str(tmp_path / "out")}
    killed_config = tmp_path / "study.yaml"
    killed_config.write_text(yaml.safe_dump(tree))
    cmd = [sys.executable, "-m", "mtkd", "study", str(killed_config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    runs = tmp_path / "out" / "runs"
    deadline = time.time() + 300
    # Kill in the middle of a student run: it has a checkpoint (last.json) but no summary yet.
    while time.time() < deadline and proc.poll() is None:
        if any(not (p.parent / "summary.json").exists() for p in runs.rglob("last.json")) and \
                len(list(runs.rglob("summary.json"))) >= 2:  # fmt: skip
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out" / "results.csv").exists()
    # Finished by two parallel runs at a time: a run's results do not depend on --jobs.
    subprocess.run(
        [*cmd, "--jobs", "2"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    assert _results(tmp_path / "out") == _results(reference)


def test_bad_study_config_is_one_line_and_runs_nothing(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump({**STUDY, "output": str(tmp_path / "out"), "methods": ["none", "featurez"]})
    )
    code, _, err = run_cli(["study", config], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "unknown method 'featurez'" in err
    assert not (tmp_path / "out").exists()
    config.write_text(yaml.safe_dump({**STUDY, "output": str(tmp_path / "out"),
                                      "student": {"optim": {"lr": -1}}}))  # fmt: skip
    code, _, err = run_cli(["study", config], capsys)
    assert code == 2 and "optim.lr" in err and not (tmp_path / "out").exists()
    # What the runs will build is checked before any of them starts.
    for change, expected in [
        ({"teachers": ["mobilenet_v2", "resnet_nonexistent"]}, "study teacher resnet_nonexistent: unknown model"),
        ({"teachers": [{"name": "mobilenet_v2", "pretrained": str(tmp_path / "w.pth")}]}, "weights file not found"),
        ({"students": ["cnn_small", "cnn_tiny"]}, "study student cnn_tiny/none/alone/seed0: unknown model 'cnn_tiny'"),
        ({"methods": [{"name": "features", "combine": "mean"}]}, "method 'features': bad value for 'combine'"),
        ({"data": {"name": f"folder:{tmp_path / 'photos'}"}}, "image folder not found"),
    ]:  # fmt: skip
        config.write_text(yaml.safe_dump({**STUDY, "output": str(tmp_path / "out"), **change}))
        code, _, err = run_cli(["study", config], capsys)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "out").exists()


def test_plan_lists_every_run_by_stage(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({**STUDY, "output": str(tmp_path / "out")}))
    code, out, _ = run_cli(["study", config, "--plan", "--nproc-per-run", "2"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    stage2 = lines.index("# stage 2")
    first, students = lines[2:stage2], [x for x in lines[stage2 + 1 :] if not x.startswith("#")]
    # Stage 1: the 2 teachers and the student alone (2 seeds); stage 2: features from each
    # teacher and from both (2 seeds), which need the teachers.
    assert [x.split(" --config")[0] for x in first] == [
        "torchrun --nproc_per_node=2 -m mtkd teacher fit"
    ] * 2 + ["torchrun --nproc_per_node=2 -m mtkd train"] * 2
    assert "/alone/" in first[2] and len(students) == 2 * 3
    assert all(x.startswith("torchrun --nproc_per_node=2 -m mtkd train --config ") for x in students)
    # Each command's config is written and is a valid run config.
    from mtkd.engine.config import TrainConfig, build_config

    spec = students[-1].split("--config ")[1]
    cfg = build_config(TrainConfig, spec, {}, [])
    assert cfg.output.dir == Path(spec).parent and cfg.transfer.methods == ["features"]
    assert lines[-1] == f"# then: mtkd study {config} --out {tmp_path / 'out'} --report-only"


def test_damaged_study_files_are_rebuilt(study, capsys):
    config, out = study
    before = _results(out)
    (out / "state.json").write_text('{"jobs": {')
    (out / "latency.json").write_text("")
    damaged = next(iter(sorted((out / "runs").rglob("summary.json"))))
    damaged.write_text(damaged.read_text()[:40])
    code, _, err = run_cli(["study", config], capsys)
    assert code == 0, err
    assert f"{out / 'state.json'} is damaged" in err and f"{damaged} is damaged" in err
    assert "1 to run" in err and "resuming" in err  # only the run whose summary was damaged
    assert _results(out) == before
