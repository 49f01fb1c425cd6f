"""Interruption, hostile or damaged files, and concurrent use: no lost work, no code run from files."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from mtkd.io import file_lock, sha256_file

RUN = ["train", "--dataset", "digits", "--model", "resnet8", "--epochs", "4", "--batch-size", "32",
       "--set", "output.tensorboard=false", "--set", "train.threads=1"]  # fmt: skip


def _start(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "MTKD_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "mtkd", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not path.is_file():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _start([*RUN, "--out", out], out.parent / "home")
    assert proc.wait() == 0, proc.stderr.read()
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_resume_ends_with_the_same_weights(sig, reference, tmp_path):
    run = tmp_path / "run"
    proc = _start([*RUN, "--out", run], tmp_path / "home")
    _wait_for(run / "last.json", proc)  # epoch 1 is saved; now stop it inside epoch 2
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    last_line = err.strip().splitlines()[-1]
    assert (
        last_line.startswith(f"mtkd: error: stopped by {sig.name} at epoch ")
        and "continue with --resume" in last_line
    )
    meta = json.loads((run / "last.json").read_text())
    stopped = meta["interrupted"]
    assert 1 <= stopped["step"] and stopped["epoch"] == meta["epoch"] + 1
    resumed = _start([*RUN, "--out", run, "--resume"], tmp_path / "home")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"after epoch {meta['epoch']}, step {stopped['step']}" in err
    w, ref = load_file(str(run / "last.safetensors")), load_file(str(reference / "last.safetensors"))
    assert all(torch.equal(w[k], ref[k]) for k in ref)
    # The interrupted epoch's metrics are those of the uninterrupted run (time aside).
    rows = [line.split(",")[:7] for line in (run / "metrics.csv").read_text().splitlines()]
    assert rows == [line.split(",")[:7] for line in (reference / "metrics.csv").read_text().splitlines()]


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_training_state_is_refused_without_running_it(reference, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.json", "last.safetensors", "config.yaml"):
        (run / name).write_bytes((reference / name).read_bytes())
    marker = tmp_path / "code-ran"
    state = run / "last.state.pt"
    with open(state, "wb") as fh:
        pickle.dump({"optimizer": _Payload(marker)}, fh)
    # The attacker also fixes the recorded hash, so only the loader stands in the way.
    meta = json.loads((run / "last.json").read_text())
    meta["files"]["state"] = {
        **meta["files"]["state"],
        "sha256": sha256_file(state),
        "bytes": state.stat().st_size,
    }
    from mtkd.engine.checkpoint import content_hash

    meta["content_sha256"] = content_hash(meta)  # and the record's own hash
    (run / "last.json").write_text(json.dumps(meta))
    code, _, err = run_cli([*RUN, "--out", run, "--resume"], capsys)
    assert code == 2 and not marker.exists()
    line = err.strip().splitlines()[-1]
    assert (
        "Traceback" not in err
        and line.startswith("mtkd: error: cannot read training state")
        and "last.state.pt" in line
    )
    # Loaded directly, the same file does run the code: the test's payload is real.
    with open(state, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_a_run_folder_in_use_is_not_touched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mine\n")
    # Another process holds the folder (here: this one, through a second open file).
    with file_lock(run / ".lock", "run folder", wait=False):
        code, _, err = run_cli([*RUN, "--out", run], capsys)
    assert code == 2
    assert f"run folder {run} is in use by process {os.getpid()}" in err.strip().splitlines()[-1]
    assert (run / "config.yaml").read_text() == "mine\n" and not (run / "last.json").exists()


def test_a_study_in_use_is_not_run_twice(tmp_path, capsys):
    out = tmp_path / "study"
    with file_lock(out / ".lock", "study", wait=False):
        code, _, err = run_cli(["study", "configs/demo/study.yaml", "--out", out], capsys)
    assert code == 2
    assert f"study {out} is in use by process {os.getpid()}" in err.strip().splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_two_builders_of_one_cache_build_it_once(tmp_path, monkeypatch, capsys):
    import threading

    import numpy as np

    from mtkd.data import load_dataset
    from mtkd.teachers.cache import CacheSpec, TeacherImages, build_cache
    from mtkd.teachers.nets import TeacherNet, TeacherSpec

    monkeypatch.setenv("MTKD_HOME", str(tmp_path / "home"))
    ds = load_dataset("digits")
    teacher = TeacherNet(TeacherSpec("mobilenet_v2", input_size=32, head="gap", num_classes=10)).eval()
    spec = CacheSpec(views=2, padding=1, hflip=False, seed=0, dtype="float16", with_logits=True)
    args = (teacher, "t", TeacherImages(ds.train.images, ds.train.labels), spec, torch.device("cpu"), "t")
    results = [None, None]

    def build(k: int) -> None:
        results[k] = build_cache(*args)

    threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = capsys.readouterr().err
    assert err.count("caching 2 view(s)") == 1 and err.count("waiting for process") == 1
    assert results[0].folder == results[1].folder
    assert np.array_equal(np.asarray(results[0].features), np.asarray(results[1].features))
    assert len(list((tmp_path / "home" / "teachers").glob("*/meta.json"))) == 1


def test_ctrl_c_stops_a_parallel_study_which_then_continues(tmp_path):
    import yaml

    study = {"data": {"name": "digits"}, "seeds": [0], "methods": ["none"], "output": str(tmp_path / "out"),
             "student": {"model": {"name": "resnet8"}, "schedule": {"epochs": 6}, "train": {"batch_size": 32}},
             "teacher_fit": {"schedule": {"epochs": 1}, "teacher": {"input_size": 32}},
             "teachers": ["mobilenet_v2"], "latency": {"repeats": 3}}  # fmt: skip
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    proc = _start(["study", config, "--jobs", "2"], tmp_path / "home")
    run = tmp_path / "out" / "runs" / "resnet8" / "none" / "alone" / "seed0"
    _wait_for(run / "last.json", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("mtkd: error: study stopped by SIGINT")
    assert "stopped by SIGINT at epoch" in (run / "log.txt").read_text()  # the run saved its step
    state = json.loads((tmp_path / "out" / "state.json").read_text())["jobs"]
    assert state["runs/resnet8/none/alone/seed0"]["status"] == "interrupted"
    again = _start(["study", config, "--jobs", "2"], tmp_path / "home")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming runs/resnet8/none/alone/seed0" in err and (tmp_path / "out" / "report.html").is_file()


def test_a_damaged_metrics_file_stops_resume_with_one_line(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "metrics.csv").write_bytes(b"epoch,train_loss\n\xff\xfe,1\n")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    code, _, err = run_cli([*RUN, "--out", run, "--resume"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == f"mtkd: error: {run / 'metrics.csv'} is damaged: restore it, or " \
        "delete it to resume without the earlier epochs' rows"  # fmt: skip
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


@pytest.mark.parametrize("renamed", [0, 1, 2])
def test_a_checkpoint_cut_off_while_renaming_its_files_is_whole(renamed, tmp_path, monkeypatch):
    """A kill between the renames of a save: the next reader finishes them; before the save's
    record was written, the previous checkpoint stays as it was."""
    from torch import nn

    from mtkd.engine import checkpoint
    from mtkd.engine.checkpoint import load_train_state, load_weights, read_meta, save_checkpoint

    net, folder = nn.Linear(3, 2), tmp_path / "run"
    what = {"kind": "student", "model": {"name": "linear"}, "config": {}, "data": {
        "name": "digits", "classes": ["a", "b"], "channels": 1, "image_size": [1, 3], "mean": [0.5], "std": [0.2]}}  # fmt: skip
    save_checkpoint(folder, "last", net, {**what, "epoch": 1}, {"epoch": 1})
    with torch.no_grad():
        net.weight.add_(1.0)
    real, calls = os.replace, []

    def dying(src, dst):  # the renames of whole files onto the checkpoint's names
        if str(src).endswith(".new"):
            if len(calls) == renamed:
                raise KeyboardInterrupt  # the process ends here
            calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, "last", net, {**what, "epoch": 2}, {"epoch": 2})
    monkeypatch.setattr(checkpoint.os, "replace", real)
    meta = read_meta(folder)
    assert meta["epoch"] == 2 and load_train_state(meta)["epoch"] == 2
    assert torch.equal(load_weights(meta)["weight"], net.weight)
    assert not list(folder.glob("*.new"))
    # Cut off before its record: the .new files are ignored and the old checkpoint is read.
    (folder / "last.safetensors.new").write_bytes(b"partial")
    assert read_meta(folder)["epoch"] == 2 and load_weights(read_meta(folder))


def test_written_files_get_the_mode_of_the_umask(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        code, _, err = run_cli([*RUN[:6], "1", *RUN[7:], "--out", tmp_path / "run"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in (tmp_path / "run").iterdir() if p.is_file() and p.name != ".lock"]
    assert {"best.safetensors", "last.state.pt", "config.yaml", "summary.json"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o640" for p in files}
