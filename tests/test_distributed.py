"""Training with several processes (torchrun, gloo on the CPU) against one process.

Each test starts real torchrun jobs through `mtkd train --nproc 2`; the global batch is the
same, so the steps must be the same: step-1 losses to 1e-5, the teacher cache equal to the one
a single process builds, and a killed 2-process run resuming to the weights of an
uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtkd.dist import SINGLE, Dist

COMMON = ["--dataset", "digits", "--batch-size", "64", "--set", "output.log_every=1", "--set", "train.threads=1",
          "--set", "output.tensorboard=false"]  # fmt: skip


def mtkd(args: list[str], home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTKD_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "mtkd", *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"{name}.safetensors"))


def test_shards_cover_a_batch_in_order():
    assert SINGLE.shard(10) == slice(0, 10)
    parts = [Dist(r, 3).shard(10) for r in range(3)]
    assert parts == [slice(0, 4), slice(4, 7), slice(7, 10)]


def test_two_processes_take_the_steps_of_one(tmp_path):
    args = ["train", *COMMON, "--model", "cnn_small", "--epochs", "3", "--set", "train.sync_bn=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    mtkd([*args, "--out", one], tmp_path / "home")
    proc = mtkd([*args, "--out", two, "--nproc", "2"], tmp_path / "home")
    assert "x 2 processes" in proc.stderr
    s1, s2 = rows(one / "steps.csv"), rows(two / "steps.csv")
    assert len(s1) == len(s2) == 3 * (1212 // 64)  # digits: 1212 training images after the split
    assert float(s2[0]["loss"]) == pytest.approx(float(s1[0]["loss"]), abs=1e-5)
    assert float(s2[1]["loss"]) == pytest.approx(float(s1[1]["loss"]), abs=1e-5)
    # Tolerance after 3 epochs (54 steps): float sums in another order drift, a little.
    last1, last2 = rows(one / "metrics.csv")[-1], rows(two / "metrics.csv")[-1]
    assert float(last2["train_loss"]) == pytest.approx(float(last1["train_loss"]), abs=1e-3)
    assert float(last2["val_acc"]) == pytest.approx(float(last1["val_acc"]), abs=0.01)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()  # synced batch norm keeps the checkpoint format
    assert max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1) < 1e-3


def test_teacher_cache_and_transfer_with_two_processes(tmp_path):
    teacher = tmp_path / "teacher"
    mtkd(["teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2", "--input-size", "32",
          "--epochs", "2", "--out", teacher, "--set", "output.tensorboard=false"], tmp_path / "home")  # fmt: skip
    args = ["train", *COMMON, "--epochs", "1", "--set", "train.sync_bn=true", "--teachers", f"[{teacher}]",
            # camkd without its feature term: no projectors for DDP to wait for, step after step
            "--methods", "[features, kd, {name: camkd, feature_weight: 0}]",
            "--set", "transfer.views=3", "--set", "transfer.cache_dtype=float32"]  # fmt: skip
    mtkd([*args, "--out", tmp_path / "one"], tmp_path / "home1")
    mtkd([*args, "--out", tmp_path / "two", "--nproc", "2"], tmp_path / "home2")
    (c1,) = (tmp_path / "home1" / "teachers").glob("*/meta.json")
    (c2,) = (tmp_path / "home2" / "teachers").glob("*/meta.json")
    # The same key (teacher, images, views, 1 thread a process), and the same bits: every chunk of
    # rows goes through the network whole, whichever process computes it.
    assert c1.parent.name == c2.parent.name
    for name in ("features", "logits"):
        a, b = np.load(c1.parent / f"{name}.npy"), np.load(c2.parent / f"{name}.npy")
        assert a.shape == b.shape == (3, 1212, a.shape[2])
        np.testing.assert_array_equal(a, b)
    s1, s2 = rows(tmp_path / "one" / "steps.csv"), rows(tmp_path / "two" / "steps.csv")
    assert len(s2) == 1212 // 64 and set(s2[0]) >= {"ce", "features", "kd", "camkd"}
    for key in ("loss", "ce", "features", "kd", "camkd"):
        assert float(s2[0][key]) == pytest.approx(float(s1[0][key]), abs=1e-5), key


def test_killed_two_process_run_resumes_to_the_same_weights(tmp_path):
    args = ["train", *COMMON, "--model", "resnet8", "--epochs", "6", "--nproc", "2"]
    reference = tmp_path / "reference"
    mtkd([*args, "--out", reference], tmp_path / "home")
    run = tmp_path / "run"
    env = {**os.environ, "MTKD_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "mtkd", *map(str, args), "--out", str(run)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (run / "last.json").is_file():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # mtkd and torchrun; the two workers follow their launcher
    proc.wait()
    while time.time() < deadline and any(str(run) in _cmdline(p) for p in Path("/proc").glob("[0-9]*")):
        time.sleep(0.05)
    saved = json.loads((run / "last.json").read_text())["epoch"]
    assert saved < 6
    resumed = mtkd([*args, "--out", run, "--resume"], tmp_path / "home")
    assert f"after epoch {saved}" in resumed.stderr
    w, ref = weights(run), weights(reference)
    assert all(torch.equal(w[k], ref[k]) for k in ref)
    assert [r["epoch"] for r in rows(run / "metrics.csv")] == [str(e) for e in range(1, 7)]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_channels_last(tmp_path):
    run = tmp_path / "cuda"
    mtkd(["train", *COMMON, "--epochs", "1", "--device", "cuda", "--set", "train.channels_last=on",
          "--out", run], tmp_path / "home")  # fmt: skip
    assert float(rows(run / "metrics.csv")[0]["val_acc"]) > 0.5


def test_crd_and_mtkd_rl_with_two_processes_take_the_first_steps_of_one(tmp_path):
    """CRD gathers the global batch into its memory banks and draws each image's negatives from the
    image alone; MTKD-RL's agent averages its gradients over the processes: the first steps of two
    processes are those of one (MTKD-RL's weights are 1 in the first epoch)."""
    teacher = tmp_path / "teacher"
    mtkd(["teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2", "--input-size", "32",
          "--epochs", "2", "--out", teacher, "--set", "output.tensorboard=false"], tmp_path / "home")  # fmt: skip
    args = ["train", *COMMON, "--epochs", "1", "--set", "train.sync_bn=true", "--teachers", f"[{teacher}, {teacher}]",
            "--methods", "[{name: crd, nce_k: 256}, mtkd_rl]", "--set", "transfer.cache_dtype=float32"]  # fmt: skip
    mtkd([*args, "--out", tmp_path / "one"], tmp_path / "home")
    mtkd([*args, "--out", tmp_path / "two", "--nproc", "2"], tmp_path / "home")
    s1, s2 = rows(tmp_path / "one" / "steps.csv"), rows(tmp_path / "two" / "steps.csv")
    assert len(s2) == 1212 // 64 and set(s2[0]) >= {"ce", "crd", "mtkd_rl_kd", "mtkd_rl_features"}
    for step in (0, 1, 2):  # the banks and Z after a step, and the next step's scores, agree
        for key in ("loss", "crd", "mtkd_rl_kd", "mtkd_rl_features"):
            assert float(s2[step][key]) == pytest.approx(float(s1[step][key]), rel=1e-4), (step, key)
