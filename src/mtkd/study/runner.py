"""Running a study's jobs: skip what is finished, resume what was interrupted, run the rest.

The study's state is its folder: a job is finished when its run folder holds summary.json
and interrupted when it holds last.json (a checkpoint) without one; `state.json` records
what happened for people and tools. One process at a time runs a study (a file lock).
With `jobs` > 1, runs go to that many `mtkd` child processes, each with its share of the cores.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from mtkd.console import say
from mtkd.engine.checkpoint import read_summary
from mtkd.engine.config import (
    TeacherFitConfig,
    TrainConfig,
    build_config,
    config_difference,
    read_yaml,
    to_yaml,
)
from mtkd.engine.launch import torchrun_command
from mtkd.engine.signals import StopRequests
from mtkd.errors import Interrupted, MtkdError, check_type
from mtkd.io import atomic_write, file_lock, read_json, write_json
from mtkd.study.answers import reading_of, unsettled_configs
from mtkd.study.config import StudyConfig, load_study_config, settle_study_threads
from mtkd.study.plan import Job, Planner, first_jobs, plan, search_strategy
from mtkd.study.results import collect


def job_folder(study: Path, job: Job) -> Path:
    if job.config is None:  # an already adapted teacher given by the user
        return Path(job.info.get("checkpoint", ""))
    return Path(job.config.output.dir)


def job_status(job: Job) -> str:
    """done | partial | new; a finished run made from another config is an error, not reused."""
    if job.config is None:
        return "done"
    folder = Path(job.config.output.dir)
    if read_summary(folder / "summary.json", default=None) is not None:
        saved = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
        diff = config_difference(saved, job.config.model_dump(mode="json"))
        if diff:
            raise MtkdError(
                f"{folder} was run with another config ({diff}): the study file changed; "
                "use another study output folder, or delete that run"
            )
        return "done"
    return "partial" if (folder / "last.json").is_file() else "new"


class State:
    """`state.json`: each job's status, times and result, rewritten atomically on every change."""

    def __init__(self, path: Path, jobs: list[Job]):
        self.path = path
        old = read_json(path, default={}).get("jobs", {})
        self.jobs = {j.id: {**old.get(j.id, {}), "kind": j.kind, **j.info} for j in jobs}

    def set(self, job: Job, **fields: object) -> None:
        self.jobs[job.id].update(fields)
        write_json(self.path, {"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": self.jobs})


def _run_in_process(job: Job, resume: bool) -> None:
    from mtkd.engine.run import run_teacher_fit, run_train

    if isinstance(job.config, TeacherFitConfig):
        run_teacher_fit(job.config, resume=resume)
    else:
        assert isinstance(job.config, TrainConfig)
        run_train(job.config, resume=resume)


def _args(job: Job, spec: Path) -> list[str]:
    """The `mtkd` arguments that run a job from its written config."""
    return [*(["teacher", "fit"] if job.kind == "teacher" else ["train"]), "--config", str(spec)]


def visible_gpus() -> list[str]:
    """The CUDA devices this process may give its runs: CUDA_VISIBLE_DEVICES' entries where set,
    else every device torch sees; none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _command(job: Job, spec: Path, resume: bool, nproc: int) -> list[str]:
    return torchrun_command(nproc, [*_args(job, spec), *(["--resume"] if resume else [])])


def write_plan(cfg: StudyConfig, config_path: str, nproc: int = 1) -> list[str]:
    """For a cluster: write every unfinished run's config and list one command per run, by stage.

    Runs of a stage are independent of each other; a stage needs the runs of the earlier stages.
    Submit each command as a job of its own (with torchrun options for several nodes), then
    `mtkd study CONFIG --report-only` collects the results into one report.
    """
    cfg = settle_study_threads(cfg)
    jobs, _, records = stages(cfg, plan(cfg), None)
    todo = [j for j in jobs if job_status(j) != "done"]
    stage: dict[str, int] = {}
    for job in jobs:  # the plan lists every run after the runs it needs
        stage[job.id] = 1 + max((stage[n] for n in job.needs), default=0)
    lines = [f"# study {cfg.name}: {len(jobs)} runs, {len(todo)} to run; a stage needs the stages before it"]
    for k in sorted({stage[j.id] for j in todo}):
        lines.append(f"# stage {k}")
        for job in (j for j in todo if stage[j.id] == k):
            assert job.config is not None
            spec = Path(job.config.output.dir) / "job.yaml"
            atomic_write(spec, to_yaml(job.config))
            launcher = "mtkd" if nproc == 1 else f"torchrun --nproc_per_node={nproc} -m mtkd"
            resume = " --resume" if job_status(job) == "partial" else ""
            lines.append(f"{launcher} {' '.join(_args(job, spec))}{resume}")
    searching = search_strategy(cfg, len(Planner(cfg).candidates)) != "grid"
    if searching and not (records and all(r.complete for r in records.values())):
        lines.append("# search: when these are done, run this --plan again for the next stage's runs")
    elif cfg.sequential:
        lines.append(
            "# sequential seeds: when these are done, run this --plan again for the next look's runs"
        )
    lines.append(f"# then: mtkd study {config_path} --out {cfg.output} --report-only")
    return lines


def _result_line(job: Job) -> str:
    assert job.config is not None
    s = read_summary(Path(job.config.output.dir) / "summary.json")
    return f"test acc {s['test_acc']:.4f} (best val epoch), {s['test_acc_last']:.4f} (last), {s['seconds']:.0f} s"


class _Runner:
    """Runs a study's unfinished jobs: one at a time in this process, or `workers` child
    processes (each of `nproc` processes through torchrun when nproc > 1) sharing the cores.

    SIGINT/SIGTERM stop it cleanly: no new run starts, running children get the signal once
    (they save their place), and the study ends with Interrupted; running it again continues.
    """

    def __init__(self, cfg: StudyConfig, jobs: list[Job], workers: int, nproc: int, launcher: Any = None):
        self.name, self.jobs, self.workers, self.nproc = cfg.name, jobs, workers, nproc
        self.launcher = launcher  # a RayLauncher (mtkd.study.cluster): runs go to Ray tasks
        self.state = State(Path(cfg.output) / "state.json", jobs)
        self.status = {j.id: job_status(j) for j in jobs}
        self.todo = [j for j in jobs if self.status[j.id] != "done"]
        self.finished = {j.id for j in jobs if self.status[j.id] == "done"}
        self.failed: dict[str, str] = {}
        self.running: dict[str, tuple[subprocess.Popen, Job, float]] = {}
        self.slots: dict[str, int] = {}  # running job -> its GPU slot
        self.gpus = visible_gpus()
        self.threads = cfg.threads or 1  # every run's compute threads, whatever `workers` is
        self.in_process = workers == 1 and nproc == 1 and launcher is None
        if launcher is not None:
            self.workers = len(jobs) or 1  # Ray queues what the cluster cannot take yet
        self.position = self.launched = len(jobs) - len(self.todo)  # finished / started so far
        self.stop = StopRequests()
        for job in jobs:
            if self.status[job.id] == "done" and self.state.jobs[job.id].get("status") != "done":
                self.state.set(job, status="done")

    def child_env(self, threads: int, slot: int = 0) -> dict[str, str]:
        """A child run's environment. With more threads than cores, OpenMP threads sleep while they
        wait instead of spinning: measured here, two 2-thread runs on 2 cores took 4x the time of
        one spinning, 1.2x sleeping (the results are the same bits either way). On a machine with
        GPUs, the run in slot s of the --jobs sees GPUs s*nproc .. s*nproc + nproc - 1 (round the
        visible ones), not all of them: otherwise every run would train on the first."""
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if self.workers * self.nproc * threads > (os.cpu_count() or 1):
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.gpus and self.workers > 1:
            n = len(self.gpus)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(
                self.gpus[(slot * self.nproc + k) % n] for k in range(self.nproc)
            )
        return env

    def blocked(self, job: Job) -> str | None:
        return next((n for n in job.needs if n in self.failed), None)

    def start(self, job: Job) -> None:
        assert job.config is not None
        run_dir = Path(job.config.output.dir)
        resume = self.status[job.id] == "partial"
        if not resume and run_dir.exists() and self.launcher is None:
            shutil.rmtree(run_dir)  # a start that never reached its first checkpoint
        self.state.set(job, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.launched += 1
        say(f"[{self.launched}/{len(self.jobs)}] {'resuming' if resume else 'starting'} {job.id}")
        if self.in_process:
            t0 = time.time()
            try:
                _run_in_process(job, resume)
            except Interrupted:
                self.state.set(job, status="interrupted")
                raise
            except MtkdError as exc:
                self.finish(job, str(exc), t0)
                return
            self.finish(job, None, t0)
            return
        spec = run_dir / "job.yaml"
        if self.launcher is not None:  # the task writes job.yaml where it starts afresh
            self.launcher.submit(job, _command(job, spec.resolve(), False, self.nproc), to_yaml(job.config))
            self.running[job.id] = (None, job, time.time())
            return
        atomic_write(spec, to_yaml(job.config))
        with open(run_dir / "log.txt", "a") as log:
            # A session of its own: a Ctrl-C reaches the study, which passes it on once.
            slot = min(set(range(self.workers)) - set(self.slots.values()), default=0)
            proc = subprocess.Popen(
                _command(job, spec, resume, self.nproc), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.child_env(job.config.train.threads, slot),
            )  # fmt: skip
        self.running[job.id] = (proc, job, time.time())
        self.slots[job.id] = slot

    def finish(self, job: Job, error: str | None, t0: float, node: str | None = None) -> None:
        self.position += 1
        seconds = round(time.time() - t0, 1)
        n = len(self.jobs)
        node = node or socket.gethostname()
        if error is None:
            self.finished.add(job.id)
            self.state.set(job, status="done", seconds=seconds, node=node)
            say(f"[{self.position}/{n}] done {job.id}: {_result_line(job)}")
        else:
            self.failed[job.id] = error
            self.state.set(job, status="failed", error=error, seconds=seconds, node=node)
            say(f"[{self.position}/{n}] [red]failed[/red] {job.id}: {error}")

    def poll(self) -> None:
        if self.launcher is not None:
            for job_id, answer, failure in self.launcher.done():
                _, job, t0 = self.running.pop(job_id)
                code = answer["returncode"] if answer else None
                node = f"{answer['host']} ({answer['node'][:12]})" if answer else None
                if self.stop.signum and (code is None or code != 0):
                    self.state.set(job, status="interrupted")
                    continue
                self.finish(job, failure or (self._log_error(job, code) if code else None), t0, node)
            return
        for job_id, (proc, job, t0) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[job_id]
            self.slots.pop(job_id, None)
            if self.stop.signum and proc.returncode > 128:
                self.state.set(job, status="interrupted")
                continue
            self.finish(job, self._log_error(job, proc.returncode) if proc.returncode else None, t0)

    @staticmethod
    def _log_error(job: Job, returncode: int) -> str:
        """A failed run's error: the last line of its log."""
        assert job.config is not None
        log = Path(job.config.output.dir) / "log.txt"
        lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
        return (lines[-1] if lines else f"exit status {returncode}").removeprefix("mtkd: error: ")

    def interrupt(self) -> None:
        """Pass the signal on to the running children, wait for them to save, and stop."""
        if self.launcher is not None:
            self.launcher.cancel()  # each task passes SIGINT on to its run
        for proc, _, _ in self.running.values():
            if proc is not None:
                proc.send_signal(self.stop.signum)
        while self.running:
            self.poll()
            time.sleep(0.2)
        raise Interrupted(
            f"study stopped by {self.stop.name}; finished runs are kept and interrupted ones saved their "
            "place: run the same command to continue",
            self.stop.signum,
        )

    def run(self) -> list[str]:
        n, todo = len(self.jobs), len(self.todo)
        where = "" if self.in_process or not todo else f" on {self.workers} x {self.nproc} processes"
        if self.launcher is not None and todo:
            where = self.launcher.describe()
        say(f"study {self.name}: {n} runs, {n - todo} already done, {todo} to run{where}, "
            f"{self.threads} compute thread(s) each")  # fmt: skip
        busy, cores = self.workers * self.nproc * self.threads, os.cpu_count() or 1
        if todo and not self.in_process and busy > cores and self.launcher is None:
            say(f"[yellow]note[/yellow]: {busy} threads on {cores} cores share them; a lower study "
                "`threads` runs parallel runs faster, and is part of every run's results")  # fmt: skip
        pending = list(self.todo)
        with self.stop:
            while pending or self.running:
                if self.stop.signum:
                    self.interrupt()
                for job in list(pending):
                    if len(self.running) >= self.workers and not self.in_process:
                        break
                    reason = self.blocked(job)
                    if reason:
                        pending.remove(job)
                        self.failed[job.id] = f"needs {reason}, which failed"
                        self.state.set(job, status="skipped", error=self.failed[job.id])
                    elif all(d in self.finished for d in job.needs):
                        pending.remove(job)
                        self.start(job)
                        if self.stop.signum:
                            break
                self.poll()
                if self.running:
                    time.sleep(0.2)
                elif pending and not any(
                    all(d in self.finished for d in j.needs) or self.blocked(j) for j in pending
                ):
                    raise MtkdError("study jobs wait on each other; this is a bug in the plan")
        return [f"{k}: {v}" for k, v in self.failed.items()]


def run_jobs(
    cfg: StudyConfig, jobs: list[Job], workers: int, nproc: int = 1, launcher: Any = None
) -> list[str]:
    """Run every unfinished job (teachers before the students that need them), here or as Ray
    tasks (`launcher`); returns failures."""
    return _Runner(cfg, jobs, workers, nproc, launcher).run()


def settle(
    cfg: StudyConfig, jobs: list[Job], run: Callable[[list[Job]], list[str]] | None,
    rows_of: Callable[[list[Job]], list[dict]] | None = None,
) -> tuple[list[Job], list[str]]:  # fmt: skip
    """The runs that answer the questions, run with `run` (None: run nothing, replay what is done).

    A fixed list of seeds is one look. With `seeds: {min, max}` the first `min` seeds of every
    configuration come first; at look k the configurations of every unsettled question are
    brought to min + k seeds, until every question is settled or max is reached. Each look
    reads only the runs the looks before it asked for, so a rerun, an interrupted study or a
    report replays the same decisions. `rows_of` gives the finished runs' rows (default: read from
    their folders; the tests simulate studies through it).
    """
    wanted = first_jobs(cfg, jobs)
    failures = run(wanted) if run else []
    if not cfg.sequential:
        return wanted, failures
    by_key = {(j.info["student"], j.info["method"], tuple(j.info["teachers"]), j.info["seed"]): j
              for j in jobs if j.kind == "student"}  # fmt: skip
    how, pool = reading_of(cfg), cfg.seed_pool
    rows_of = rows_of or (lambda some: collect(some, Path(cfg.output))[0])
    for look in range(1, cfg.looks):
        if failures:
            break
        rows = rows_of(wanted)
        if run is None and len([r for r in rows if r["kind"] == "student"]) < sum(
            j.kind == "student" for j in wanted
        ):
            break  # a report of a study still running: no look past what has been run
        have = {j.id for j in wanted}
        add = [by_key[(*key, seed)] for key in unsettled_configs(rows, how)
               for seed in pool[: cfg.seeds.min + look] if by_key[(*key, seed)].id not in have]  # fmt: skip
        if not add:
            break
        say(f"look {look}: {len(add)} more run(s) for the questions not settled yet")
        wanted += add
        failures = run(wanted) if run else []
    return wanted, failures


def stages(
    cfg: StudyConfig, jobs: list[Job], run: Callable[[list[Job]], list[str]] | None
) -> tuple[list[Job], list[str], dict]:
    """The runs that answer the questions (the grid's looks, or a search's stages), run with `run`
    (None: run nothing, replay what is done); (runs, failures, each student's search record)."""

    def rows(some: list[Job]) -> list[dict]:
        return collect(some, Path(cfg.output))[0]

    from mtkd.study.search import drive

    planner = Planner(cfg)
    if search_strategy(cfg, len(planner.candidates)) == "grid":
        screened: list[Job] = []
        failed: list[str] = []
        records: dict = {}
        if cfg.search.screen_epochs:
            screened, failed, records = drive(planner, reading_of(cfg), run, rows, screen_only=True)
        wanted, failures = settle(cfg, jobs, run)
        have = {j.id for j in wanted}
        return (
            wanted + [j for j in screened if j.id not in have],
            sorted(set(failed) | set(failures)),
            records,
        )

    return drive(planner, reading_of(cfg), run, rows)


def run_study(
    cfg: StudyConfig, workers: int = 1, report: bool = True, run: bool = True, nproc: int = 1,
    ray: str | None = None,
) -> dict:  # fmt: skip
    """Plan, run what is missing, write the report; returns the report's answers. `ray`: run the
    jobs as Ray tasks on the cluster at that address ('' starts a local Ray instance)."""
    if workers < 1:
        raise MtkdError(f"--jobs must be >= 1, got {workers}")
    if nproc < 1:
        raise MtkdError(f"--nproc-per-run must be >= 1, got {nproc}")
    if ray is not None and run:
        from mtkd.study.cluster import _ray

        _ray()  # one line naming what to install, before anything is written
    folder = Path(cfg.output)
    cfg = settle_study_threads(cfg)
    jobs = plan(cfg)  # every run's config is validated here, before anything runs
    if not run and not (folder / "study.yaml").is_file():
        raise MtkdError(f"{folder}: no study has run there (no study.yaml): nothing to report")
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock", f"study {folder}", wait=False), ExitStack() as stack:
        launcher = _ray_launcher(cfg, folder, nproc, ray, stack) if run and ray is not None else None
        atomic_write(folder / "study.yaml", to_yaml(cfg))
        wanted, failures, records = stages(
            cfg, jobs, (lambda some: run_jobs(cfg, some, workers, nproc, launcher)) if run else None
        )
        answers: dict = {}
        if report:
            from mtkd.study.report import write_report

            answers = write_report(cfg, wanted, failures, records)
    if failures:
        raise MtkdError(
            f"{len(failures)} run(s) failed, first {failures[0]} (state in {folder / 'state.json'})"
        )
    return answers


def _ray_launcher(cfg: StudyConfig, folder: Path, nproc: int, address: str, stack: ExitStack) -> Any:
    """Attach to Ray (a local instance for ''), check the shared storage on every node, and give
    the runner its launcher; Ray started here stops with the study."""
    from mtkd.study import cluster

    if cluster.connect(address or None):
        stack.callback(cluster._ray().shutdown)
    cluster.announce(cluster.check_storage(folder))
    return cluster.RayLauncher(cfg, nproc)


def study_from(
    config: str | os.PathLike | Mapping, *, jobs: int = 1, report_only: bool = False, ray: str | None = None,
    **options: Any,
) -> dict:  # fmt: skip
    """`mtkd.study(...)`: run (or finish) a study from a YAML path or a mapping, with study keys as
    options (`output=`, `seeds=`), write its report, and return its answers."""
    check_type(config, (str, os.PathLike, Mapping), "the study's config", "a YAML path or a mapping")
    check_type(jobs, (int,), "jobs", "a whole number >= 1")
    check_type(report_only, (bool,), "report_only", "True or False")
    if isinstance(config, (str, os.PathLike)):
        cfg = load_study_config(config, overrides=options)
    else:
        cfg = build_config(StudyConfig, overrides=options, mapping=dict(config))
    check_type(
        ray,
        (str, type(None)),
        "ray",
        "a Ray address ('auto', 'ray://host:10001'), '' for a local instance, or None",
    )
    if ray is not None and report_only:
        raise MtkdError("ray runs the study's jobs: it does not go with report_only")
    return run_study(cfg, workers=jobs, report=True, run=not report_only, ray=ray)
