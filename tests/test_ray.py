"""A study's runs as Ray tasks on a local Ray instance: the same results as the local runner, bit
for bit; a worker killed in a run is retried and resumes; storage every node must see; errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli

pytest.importorskip("ray")

TIMING = {"seconds", "latency_ms"}


def _study(root: Path, teacher: Path, name: str) -> Path:
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "output": str(root / name), "data": {"name": "digits"}, "seeds": [0, 1], "threads": 1,
        "methods": ["none", "features"], "teachers": [{"checkpoint": str(teacher)}],
        "student": {"model": {"name": "cnn_large"}, "schedule": {"epochs": 6},
                    "train": {"batch_size": 16}},
        "latency": {"repeats": 3},
    }))  # fmt: skip
    return config


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A teacher adapted once, and the study run by the local runner (two child processes)."""
    root = tmp_path_factory.mktemp("ray")
    teacher = root / "teacher"
    done = subprocess.run(
        [sys.executable, "-m", "mtkd", "teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2",
         "--input-size", "32", "--epochs", "2", "--out", str(teacher)], capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = _study(root, teacher, "local")
    done = subprocess.run([sys.executable, "-m", "mtkd", "study", str(config), "--jobs", "2"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root, teacher


def _rows(folder: Path) -> list[dict]:
    with open(folder / "results.csv") as fh:
        return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)),
                      key=lambda r: r["run"])  # fmt: skip


def _weights(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "runs").rglob("*.safetensors"))
    }


def _ray_study(root: Path, teacher: Path, name: str) -> tuple[Path, subprocess.Popen]:
    config = _study(root, teacher, name)
    proc = subprocess.Popen([sys.executable, "-m", "mtkd", "study", str(config), "--ray"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    return root / name, proc


def test_ray_gives_the_local_runners_results_bit_for_bit(local):
    root, teacher = local
    out, proc = _ray_study(root, teacher, "ray")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "as Ray tasks on 1 node(s)" in err and "readable on all 1 node(s)" in err
    assert _rows(out) == _rows(root / "local")
    assert _weights(out) == _weights(root / "local") and len(_weights(out)) == 8
    state = json.loads((out / "state.json").read_text())["jobs"]
    students = [v for v in state.values() if v["kind"] == "student"]
    assert len(students) == 4 and all(v["status"] == "done" and v["node"] for v in students)


def _pid_running(job_yaml: Path) -> int | None:
    """The pid of the `mtkd train` process whose config is job_yaml (from /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(job_yaml).encode() in cmdline and b"train" in cmdline:
                return int(entry.name)
    return None


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_is_retried_and_the_study_ends_the_same(local):
    """SIGKILL the Ray worker running a student after its first checkpoint: Ray runs the task
    again, the run resumes from that checkpoint, and the study's results are the local runner's."""
    root, teacher = local
    out, proc = _ray_study(root, teacher, "killed")
    target = out / "runs" / "cnn_large" / "features"
    killed = None
    deadline = time.time() + 600
    while killed is None and time.time() < deadline and proc.poll() is None:
        for run in sorted(target.glob("*/seed*")):
            if (run / "last.json").is_file() and not (run / "summary.json").is_file():
                pid = _pid_running(run / "job.yaml")
                if pid is not None:
                    os.kill(_parent(pid), signal.SIGKILL)  # the Ray worker, not the run itself
                    killed = run
                    break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=900)
    assert killed is not None, "no run was caught between its first checkpoint and its end"
    assert proc.returncode == 0, err
    assert "resuming " in (killed / "log.txt").read_text()  # the retry took up the checkpoint
    assert _rows(out) == _rows(root / "local")
    assert _weights(out) == _weights(root / "local")


def test_ray_refuses_storage_a_node_cannot_read(local, monkeypatch, capsys):
    from mtkd.study import cluster

    root, teacher = local

    def cannot_read(files, cwd):  # pickled by value: runs on the Ray worker as it is
        return f"node elsewhere cannot read {next(iter(files))} (No such file or directory)"

    monkeypatch.setattr(cluster, "read_back", cannot_read)
    config = _study(root, teacher, "storage")
    code, _, err = run_cli(["study", config, "--ray"], capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("mtkd: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "node elsewhere cannot read" in lines[0] and "must be on storage every node sees" in lines[0]
    assert not (root / "storage" / "runs").exists()
    assert not list((root / "storage").glob(".ray-probe-*"))


def test_read_back_names_what_a_node_does_not_see(tmp_path):
    from mtkd.study.cluster import read_back

    (tmp_path / "a").write_text("token")
    assert read_back({str(tmp_path / "a"): "token"}, str(tmp_path)) is None
    assert "reads another" in read_back({str(tmp_path / "a"): "other"}, str(tmp_path))
    assert "cannot read" in read_back({str(tmp_path / "b"): "token"}, str(tmp_path))
    assert "has no folder" in read_back({}, str(tmp_path / "nowhere"))


def test_ray_missing_or_misused_is_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "s"), "data": {"name": "digits"},
                                      "teachers": ["mobilenet_v2"]}))  # fmt: skip
    for extra in (["--plan"], ["--report-only"]):
        code, _, err = run_cli(["study", config, "--ray", *extra], capsys)
        assert code == 2 and "--ray runs the study's jobs: it does not go with --plan or --report-only" in err
    code, _, err = run_cli(["study", config, "--ray", "--jobs", "2"], capsys)
    assert code == 2 and "--jobs does not go with --ray" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, _, err = run_cli(["study", config, "--ray"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines == ["mtkd: error: --ray needs Ray: pip install 'mtkd[ray]'"]
    assert not (tmp_path / "s" / "runs").exists()
