"""`mtkd study`: statistics against scipy, answers that follow the numbers, and a tiny study on
digits that runs end to end, is not redone, and survives a SIGKILL with the same results."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

import mtkd
from conftest import run_cli
from mtkd.study.answers import Reading, answer, q1, q2, q3, unsettled_configs
from mtkd.study.config import StudyConfig
from mtkd.study.runner import reading_of
from mtkd.study.stats import (
    ABOVE,
    BELOW,
    EQUIVALENT,
    UNSETTLED,
    Interval,
    look_level,
    mean_std,
    one_sample_interval,
    paired_interval,
    reading,
    seeds_to_settle,
    welch_interval,
)

A = [0.9635, 0.9722, 0.9619, 0.9660, 0.9701]
B = [0.9717, 0.9712, 0.9697, 0.9702, 0.9741]


def test_intervals_match_hand_computed_values_and_scipy():
    # Paired differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t(0.975, df 2) = 4.302653 (tables).
    iv = paired_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert (iv.n, iv.diff, iv.sd) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert (iv.lo, iv.hi) == (
        pytest.approx(2 - 4.302653 / 3**0.5, abs=1e-6),
        pytest.approx(2 + 4.302653 / 3**0.5, abs=1e-6),
    )
    assert iv.p == pytest.approx(
        1 - 12**0.5 / 14**0.5, abs=1e-12
    )  # df 2: p = 1 - t / sqrt(t^2 + 2), t = sqrt(12)
    ref = stats.ttest_rel(B, A)
    r = paired_interval(B, A, 0.99)
    ci = ref.confidence_interval(0.99)
    assert (r.lo, r.hi, r.p) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10),
                                 pytest.approx(ref.pvalue, rel=1e-9))  # fmt: skip
    one = one_sample_interval(A, 0.9676)
    ref1 = stats.ttest_1samp(A, 0.9676)
    # scipy's interval is of the mean itself, ours of mean - reference.
    assert (one.lo + 0.9676, one.hi + 0.9676, one.p) == (pytest.approx(ref1.confidence_interval().low, rel=1e-10),
                                       pytest.approx(ref1.confidence_interval().high, rel=1e-10),
                                       pytest.approx(ref1.pvalue, rel=1e-9))  # fmt: skip
    w = welch_interval(B, A[:3])
    ref2 = stats.ttest_ind(B, A[:3], equal_var=False)
    assert (w.lo, w.hi, w.p, w.n_other) == (pytest.approx(ref2.confidence_interval().low, rel=1e-9),
                                            pytest.approx(ref2.confidence_interval().high, rel=1e-9),
                                            pytest.approx(ref2.pvalue, rel=1e-9), 3)  # fmt: skip
    m, sd = mean_std(A)
    assert (m, sd) == (pytest.approx(sum(A) / 5), pytest.approx(stats.tstd(A)))
    # Same difference on every seed: no spread, the interval is that value; one seed: no interval.
    same = paired_interval([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert (same.lo, same.hi, same.p) == (0.5, 0.5, 0.0)
    assert (
        math.isinf(paired_interval([1.0], [0.0]).hi)
        and reading(paired_interval([1.0], [0.0]), 0.1) == UNSETTLED
    )
    # Bonferroni over looks: 8 looks at alpha 0.05 are 99.375% intervals.
    assert look_level(0.05, 8) == pytest.approx(0.99375)


def test_readings_and_seeds_to_settle():
    def iv(lo, hi, diff=None, sd=0.01, n=5):
        return Interval("t", n, (lo + hi) / 2 if diff is None else diff, sd, lo, hi, 0.95, 0.5)

    assert reading(iv(0.001, 0.02), 0.005) == ABOVE
    assert reading(iv(-0.02, -0.001), 0.005) == BELOW
    assert reading(iv(-0.004, 0.004), 0.005) == EQUIVALENT
    assert reading(iv(0.001, 0.004), 0.005) == EQUIVALENT  # a gain too small to matter
    assert reading(iv(-0.001, 0.02), 0.005) == UNSETTLED
    assert reading(iv(0.001 - 0.005, 0.006), 0.005) == UNSETTLED
    # diff 0.01, sd 0.01: the interval clears zero once t(0.975, n-1) / sqrt(n) < 1:
    # n = 6 gives 2.5706 / 2.4495 = 1.049, n = 7 gives 2.4469 / 2.6458 = 0.925.
    need = seeds_to_settle(paired_interval([0.01 + d for d in (-0.01, 0.01, 0.0)], [0.0] * 3), 0.0)
    assert need == 7
    assert stats.t.ppf(0.975, 6) / 7**0.5 < 1 < stats.t.ppf(0.975, 5) / 6**0.5


def test_answers_follow_the_intervals():
    how = Reading(alpha=0.05, equivalence=0.005)
    better, worse = paired_interval(B, A), paired_interval(A, B)
    assert better.lo > 0 and worse.hi < 0
    assert q1("kd", better, how)["sentence"].startswith(
        "Yes: kd improves on the student alone by +0.46 points (95% CI [+"
    )
    assert q1("kd", worse, how)["sentence"].startswith(
        "No: kd is -0.46 points below the student alone, a loss"
    )
    noisy = paired_interval([0.95, 0.97, 0.96], [0.96, 0.95, 0.965])
    a = q1("kd", noisy, how, limit=10)
    assert a["verdict"] == "Not settled" and "straddles zero and ±0.50 points" in a["sentence"]
    assert (
        f"about {seeds_to_settle(noisy, 0.005)} seeds would settle it (the study stops at 10)"
        in a["sentence"]
    )
    tiny = paired_interval([0.951, 0.952, 0.952, 0.951], [0.950, 0.950, 0.950, 0.950])
    assert q1("kd", tiny, how)["sentence"].startswith("No: kd is +0.15 points against the student alone")
    assert "no difference that matters" in q1("kd", tiny, how)["sentence"]
    assert q3("one", "two", better, how)["sentence"].startswith("No: the best combination (two) beats")
    assert q3("one", "two", worse, how)["sentence"].startswith("Yes: the best single teacher (one) beats")
    assert q3("one", "two", tiny, how)["sentence"].startswith(
        "Yes: the best combination (two) is +0.15 points"
    )
    assert q3("one", "two", noisy, how)["verdict"] == "Not settled"
    assert q2("s", "t", 0.97, 0.96, one_sample_interval(B, 0.96), how, "")["sentence"].startswith(
        "Yes: s beats t"
    )
    assert q2("s", "t", 0.95, 0.98, one_sample_interval(A, 0.98), how, "")["sentence"].startswith(
        "No: s stays below t"
    )
    assert q2("s", "t", 0.96, 0.96, one_sample_interval(A, 0.967), how, "")["verdict"] == "Not settled"


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
    a = answer(rows, Reading())["s"]
    assert a["q1"]["best"] == "kd from b"
    assert a["q1"]["interval"]["diff"] == pytest.approx(0.02 + 0.001)
    assert a["q3"]["single"] == "kd from b" and a["q3"]["combination"] == "kd from a+b".replace(
        "a+b", "a + b"
    )
    assert a["q2"]["student"] == "kd from b"
    assert "1.0% of its parameters" in a["q2"]["sentence"] and "4.0x faster" in a["q2"]["sentence"]
    assert [s["n_teachers"] for s in a["by_size"]] == [0, 1, 2]


def test_under_trained_teachers_are_flagged_and_q3_not_asked_without_combinations():
    rows = [_row("none", "", s, 0.90, 0.90 + 0.001 * s) for s in range(3)]
    rows += [_row("kd", t, s, 0.91, 0.91) for t in ("a", "b") for s in range(3)]
    teacher = {**_row("", "", 0, 0.5, 0.5), "kind": "teacher", "num_classes": 10}
    rows += [{**teacher, "teachers": "a", "test_acc": 0.12}, {**teacher, "teachers": "b", "test_acc": 0.85}]
    a = answer(rows, Reading())["s"]
    assert a["warnings"][0].startswith("Teacher a is near chance (12.00% with 10 classes, chance 10.00%)")
    assert a["warnings"][1].startswith("Teacher b (85.00%) is below the student trained alone (90.10%)")
    assert len(a["warnings"]) == 2
    assert a["q3"]["verdict"] == "Not asked" and "no combination of teachers" in a["q3"]["sentence"]


STUDY = {
    "data": {"name": "digits"},
    "seeds": {"min": 2, "max": 3},
    "teacher_seeds": 2,
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
    # 2 teachers adapted with 2 seeds each, and per seed: alone, features from each teacher and from both.
    assert sorted((r["teachers"], r["seed"]) for r in rows if r["kind"] == "teacher") == [
        ("mobilenet_v2", "0"), ("mobilenet_v2", "1"), ("tf_efficientnet_lite0", "0"), ("tf_efficientnet_lite0", "1")]  # fmt: skip
    assert sorted((r["kind"], r["method"], r["teachers"]) for r in rows if r["seed"] == "1" and r["kind"] == "student") == [
        ("student", "features", "mobilenet_v2"), ("student", "features", "mobilenet_v2+tf_efficientnet_lite0"),
        ("student", "features", "tf_efficientnet_lite0"), ("student", "none", ""),
    ]  # fmt: skip
    # Sequential seeds: after the first look (seeds 0, 1), seed 2 went exactly to the configurations
    # of the questions that look left unsettled.
    full = json.loads((out / "results.json").read_text())
    first = [r for r in full["runs"] if r["kind"] == "teacher" or r["seed"] < 2]
    cfg = StudyConfig.model_validate({**STUDY, "output": str(out)})
    wanted = set(unsettled_configs(first, reading_of(cfg)))
    got = {(r["student"], r["method"], tuple(t for t in r["teachers"].split("+") if t))
           for r in full["runs"] if r["kind"] == "student" and r["seed"] == 2}  # fmt: skip
    assert got == wanted
    assert len(rows) == 4 + 2 * 4 + len(wanted)
    html = (out / "report.html").read_text()
    assert "<meta name='viewport'" in html and "data:image/png;base64," in html and "src='plots" not in html
    for q in ("Q1.", "Q2.", "Q3."):
        assert html.count(q) == 1 + (q == "Q3.") + (q == "Q2."), q  # once in the answers; section titles
    assert "2 looks" in html and "Bonferroni" in html and "Welch" in html
    # Every accuracy of the configuration table is the mean of its rows in results.csv.
    alone = [float(r["test_acc"]) for r in rows if r["method"] == "none"]
    mean, std = mean_std(alone)
    assert f"| alone | {len(alone)} | " in (out / "report.md").read_text()
    assert f"{100 * mean:.2f} ± {100 * std:.2f}" in html
    assert all(p.stat().st_size > 1000 for p in (out / "plots").glob("*.png"))


def test_the_study_ships_the_student_best_on_validation(study, capsys):
    """model/ holds the configuration best on validation (mean over seeds) at its seed best on
    validation, computed here from results.csv; it loads without the run; --report-only rebuilds it."""
    config, out = study
    with open(out / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "student"]
    configs: dict[tuple, list[dict]] = {}
    for r in rows:
        configs.setdefault((r["student"], r["method"], r["teachers"]), []).append(r)
    best = max(configs.values(), key=lambda rs: sum(float(r["val_acc"]) for r in rs) / len(rs))
    seed_row = max(best, key=lambda r: (float(r["val_acc"]), -int(r["seed"])))
    shipped = json.loads((out / "results.json").read_text())["model"]
    assert (shipped["run"], shipped["seed"]) == (seed_row["run"], int(seed_row["seed"]))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = mtkd.load_student(out / seed_row["run"])(x).detach()
    torch.testing.assert_close(
        mtkd.load_student(f"local-dir:{out / 'model'}")(x).detach(), expected, rtol=0, atol=1e-6
    )
    assert {p.name for p in (out / "model").iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    card = (out / "model" / "README.md").read_text()
    assert f"{100 * float(seed_row['test_acc']):.2f}%" in card and f"mtkd study {out / 'study.yaml'}" in card
    html = (out / "report.html").read_text()
    assert "<a href='model/README.md'>model/</a>" in html and "The model to ship" in html
    if (out / "model" / "model.int8.onnx").exists():
        d = shipped["deployed"]
        assert f"{100 * d['int8_acc']:.2f}%" in html and "ONNX int8 (onnxruntime)" in html
    shutil.rmtree(out / "model")
    code, _, err = run_cli(["study", config, "--report-only"], capsys)
    assert code == 0, err
    torch.testing.assert_close(
        mtkd.load_student(f"local-dir:{out / 'model'}")(x).detach(), expected, rtol=0, atol=1e-6
    )


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
        ({"seeds": {"min": 5, "max": 3}}, "bad value for 'seeds': {min:, max:} max (3) is below min (5)"),
        ({"seeds": {"min": 3, "max": 5, "step": 2}}, "{min:, max:} step: Extra inputs are not permitted"),
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
    # Stage 1: the 2 teachers (2 seeds each) and the student alone (2 seeds); stage 2: features
    # from each teacher and from both (2 seeds), which need the teachers. Sequential seeds: only
    # the first look's runs, and a word on what comes next.
    assert [x.split(" --config")[0] for x in first] == [
        "torchrun --nproc_per_node=2 -m mtkd teacher fit"
    ] * 4 + ["torchrun --nproc_per_node=2 -m mtkd train"] * 2
    assert "/alone/" in first[4] and len(students) == 2 * 3
    assert "# sequential seeds: when these are done, run this --plan again for the next look's runs" in lines
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


def _browser() -> str | None:
    import shutil

    return next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (apt-get install -y chromium)")
@pytest.mark.parametrize("width", [1200, 500])  # 500: the narrowest window headless Chromium lays out
def test_report_renders_in_a_browser(study, tmp_path, width):
    """report.html in headless Chromium, on a desktop and a phone-width window: every image
    decodes, the answers are there once each, every table has rows, and the page itself never
    scrolls sideways (wide tables scroll inside their own box)."""
    _, out = study
    probe = """<script>window.addEventListener('load', () => {
      const imgs = [...document.images].map(i => i.complete && i.naturalWidth > 0);
      const tables = [...document.querySelectorAll('table')].map(t => t.tBodies[0].rows.length);
      const answers = [...document.querySelectorAll('p strong')].map(s => s.textContent);
      document.body.setAttribute('data-check', JSON.stringify({imgs, tables, answers,
        width: document.documentElement.scrollWidth, viewport: window.innerWidth}));
    });</script></body>"""
    page = tmp_path / "report.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe))
    dom = subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         f"--window-size={width},900", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    import html as html_lib
    import re

    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, dom[:500]
    check = json.loads(html_lib.unescape(found.group(1)))
    assert len(check["imgs"]) == (out / "report.html").read_text().count("<img") and all(check["imgs"]), check
    assert check["tables"] and all(n > 0 for n in check["tables"]), check
    titles = [a for a in check["answers"] if a.startswith("Q")]
    assert titles == ["Q1. Does the student improve with transfer?", "Q2. Does the student beat its teacher?",
                      "Q3. Is one teacher enough?"]  # fmt: skip
    assert check["viewport"] == width and check["width"] <= width, check  # no sideways scroll of the page


def test_parallel_runs_get_gpus_of_their_own(monkeypatch, tmp_path):
    """With GPUs, the run in each --jobs slot sees its own (nproc per run, round the visible ones);
    without, nothing is set. Checked on the environment the runner gives its children."""
    import mtkd.study.runner as runner_module

    cfg = StudyConfig.model_validate({"name": "g", "output": str(tmp_path)})
    monkeypatch.setattr(runner_module, "visible_gpus", lambda: ["3", "5", "6"])
    two = runner_module._Runner(cfg, [], workers=2, nproc=1)
    assert [two.child_env(1, s)["CUDA_VISIBLE_DEVICES"] for s in (0, 1)] == ["3", "5"]
    pairs = runner_module._Runner(cfg, [], workers=2, nproc=2)
    assert [pairs.child_env(1, s)["CUDA_VISIBLE_DEVICES"] for s in (0, 1)] == ["3,5", "6,3"]
    monkeypatch.setattr(runner_module, "visible_gpus", lambda: [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert "CUDA_VISIBLE_DEVICES" not in runner_module._Runner(cfg, [], workers=2, nproc=1).child_env(1, 1)


def test_a_study_without_teachers_plans_the_student_alone(tmp_path):
    """A pool of none (benchmarks/bench_jobs.py's grid): each seed of the student alone, no error
    from min_teachers (session 14 refused it)."""
    from mtkd.study.plan import plan

    cfg = StudyConfig.model_validate({"data": {"name": "digits"}, "methods": ["none"], "seeds": [0, 1],
                                      "output": str(tmp_path / "s"), "threads": 1})  # fmt: skip
    jobs = plan(cfg)
    assert [(j.kind, j.info["method"], j.info["seed"]) for j in jobs] == [
        ("student", "none", 0),
        ("student", "none", 1),
    ]
