"""A study's runs as Ray tasks (`mtkd study CONFIG --ray [ADDRESS]`); the local runner stays the default.

The driver (plan, looks, search decisions, report, progress, `state.json`) runs where the
command runs; every teacher fit and student run is a Ray task asking for the study's `threads`
CPUs (x `--nproc-per-run`) and, on a cluster with GPUs, `--nproc-per-run` GPUs. A task runs the
same `mtkd teacher fit` / `mtkd train` command as the local runner's child processes, with the
same thread count, so a run's bits do not depend on where it ran (on the same kind of machine).

A task whose worker dies is retried by Ray (`max_retries`); the retry resumes the run from its
last checkpoint, and the run's process dies with its worker (it cannot outlive it and write
beside the retry). A driver killed and started again finds the study folder as the local runner
does. Every node must see the study folder and MTKD_HOME at the same paths: the driver writes a
file into each and a task on every node reads them back before anything runs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mtkd.console import say
from mtkd.errors import MtkdError, first_line
from mtkd.io import atomic_write, cache_dir
from mtkd.study.config import StudyConfig
from mtkd.study.plan import Job

MAX_RETRIES = 3  # a task whose worker dies runs again (resuming its run) up to this many times
LOCAL_OBJECT_STORE = 100 * 1024**2  # a local instance moves no data through its object store


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MtkdError("--ray needs Ray: pip install 'mtkd[ray]'") from None
    return ray


def connect(address: str | None) -> bool:
    """Attach to the Ray cluster at `address` ('auto', 'ray://host:10001', host:port) or start a
    local instance (None); True when this process started Ray (and so must stop it)."""
    import logging

    ray = _ray()
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address is None:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE, **options)
        else:
            ray.init(address=address, **options)
    except Exception as exc:  # noqa: BLE001 - connection, version and start-up errors alike
        first = first_line(exc)
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise MtkdError(f"cannot reach {where}: {first[:200]}") from None
    return True


def _die_with_parent() -> None:
    """In the run's process, before exec: SIGKILL it when the Ray worker that started it dies
    (Linux), so a retried task never finds the previous attempt still writing its run folder."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_job(command: list[str], cwd: str, env: dict[str, str], run_dir: str, spec: str) -> dict:
    """A Ray task: one run, by the same command as the local runner, in `cwd` with `env` added.
    Finished already: nothing to do; a checkpoint: resume; else start afresh from `spec`."""
    import ray

    folder = Path(run_dir)
    node = {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()}
    if (folder / "summary.json").is_file():  # finished, and the worker died before saying so
        return {"returncode": 0, **node, "resumed": False}
    resume = (folder / "last.json").is_file()
    if not resume:
        if folder.exists():
            shutil.rmtree(folder)  # a start that never reached its first checkpoint
        atomic_write(folder / "job.yaml", spec)
    with open(folder / "log.txt", "a") as log:
        proc = subprocess.Popen(
            [*command, *(["--resume"] if resume else [])], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # ray.cancel: the run saves its place, as under Ctrl-C
            proc.send_signal(signal.SIGINT)
            code = proc.wait()
    return {"returncode": code, **node, "resumed": resume}


def read_back(files: dict[str, str], cwd: str) -> str | None:
    """A Ray task pinned to one node: None when it sees every file with its content, else why not."""
    host = socket.gethostname()
    if not Path(cwd).is_dir():
        return f"node {host} has no folder {cwd} (the study's working directory)"
    for path, token in files.items():
        try:
            seen = Path(path).read_text()
        except OSError as exc:
            return f"node {host} cannot read {path} ({exc.strerror or exc})"
        if seen != token:
            return f"node {host} reads another {path} than this machine wrote"
    return None


def check_storage(study: Path) -> int:
    """Every alive node must read back what the driver writes into the study folder and MTKD_HOME
    (shared storage, at the same paths); the number of nodes checked, or one line naming the first
    that cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray = _ray()
    token = secrets.token_hex(16)
    files = {str(study.resolve() / f".ray-probe-{token}"): token,
             str(cache_dir().resolve() / f".ray-probe-{token}"): token}  # fmt: skip
    for path in files:
        atomic_write(path, token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(num_cpus=0, max_retries=0)(read_back)
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                files, os.getcwd()
            )
            for n in nodes
        ]
        for problem in ray.get(refs):
            if problem:
                raise MtkdError(
                    f"--ray: {problem}: the study folder ({study}) and MTKD_HOME ({cache_dir()}) must be on "
                    "storage every node sees, at the same paths (NFS, a cluster file system)"
                )
    finally:
        for path in files:
            Path(path).unlink(missing_ok=True)
    return len(nodes)


class RayLauncher:
    """What the study's runner asks of Ray: submit a run, see which finished, cancel them all."""

    def __init__(self, cfg: StudyConfig, nproc: int):
        ray = _ray()
        self.ray = ray
        self.threads = cfg.threads or 1
        gpus = ray.cluster_resources().get("GPU", 0)
        self.task = ray.remote(run_job).options(
            num_cpus=self.threads * nproc, num_gpus=nproc if gpus else 0, max_retries=MAX_RETRIES,
            retry_exceptions=False,
        )  # fmt: skip
        self.env = {"OMP_NUM_THREADS": str(self.threads), "MTKD_HOME": str(cache_dir().resolve())}
        self.cwd = os.getcwd()
        self.refs: dict[str, Any] = {}

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        gpus = f", {int(resources['GPU'])} GPUs" if resources.get("GPU") else ""
        return f" as Ray tasks on {nodes} node(s) ({int(resources.get('CPU', 0))} CPUs{gpus})"

    def submit(self, job: Job, command: list[str], spec: str) -> None:
        assert job.config is not None
        run_dir = str(Path(job.config.output.dir).resolve())
        self.refs[job.id] = self.task.remote(command, self.cwd, self.env, run_dir, spec)

    def done(self) -> list[tuple[str, dict | None, str | None]]:
        """(job id, the task's answer or None, the error when the task failed for good) of the
        tasks that ended since the last call."""
        if not self.refs:
            return []
        by_ref = {ref: job_id for job_id, ref in self.refs.items()}
        ready, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        out = []
        for ref in ready:
            job_id = by_ref[ref]
            del self.refs[job_id]
            try:
                out.append((job_id, self.ray.get(ref), None))
            except Exception as exc:  # noqa: BLE001 - a worker lost after every retry, a cancelled task
                first = first_line(exc)
                out.append((job_id, None, f"Ray task failed after {MAX_RETRIES} retries: {first[:200]}"))
        return out

    def cancel(self) -> None:
        for ref in self.refs.values():
            self.ray.cancel(ref, force=False)


def announce(nodes: int) -> None:
    say(f"ray: the study folder and MTKD_HOME are readable on all {nodes} node(s)")
