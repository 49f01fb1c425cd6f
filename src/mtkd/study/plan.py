"""The study's grid as jobs: adapt each teacher once, then every (student, method, teacher set, seed).

Each job is one ordinary `mtkd teacher fit` or `mtkd train` run with its own folder under the
study folder, so it can be inspected, evaluated or resumed with the usual commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from mtkd.data.catalog import check_dataset
from mtkd.engine.config import Section, TeacherFitConfig, TrainConfig, merge_trees
from mtkd.errors import MtkdError
from mtkd.methods import method_class, method_options
from mtkd.models.zoo import check_pretrained, check_student
from mtkd.study.config import StudyConfig, _validated, method_label, student_configs, teacher_entries


@dataclass
class Job:
    id: str  # also its folder, relative to the study folder
    kind: str  # "teacher" | "student"
    config: Section | None  # None for a teacher given as an already adapted checkpoint
    needs: list[str] = field(default_factory=list)  # ids of jobs that must finish first
    info: dict[str, Any] = field(default_factory=dict)  # student, method, teachers, seed


def teacher_subsets(labels: list[str], max_size: int, min_size: int = 1) -> list[tuple[str, ...]]:
    return [s for k in range(min_size, min(max_size, len(labels)) + 1) for s in combinations(labels, k)]


def _max_teachers(spec: str | dict) -> int | None:
    return method_class(spec if isinstance(spec, str) else spec["name"]).max_teachers


def _fixed_threads(tree: dict, threads: int) -> dict:
    """A run's tree with its compute threads: its own `train.threads`, else the study's."""
    if not (tree.get("train") or {}).get("threads"):
        tree.setdefault("train", {})["threads"] = threads
    return tree


def is_none(spec: str | dict) -> bool:
    return spec == "none" or (isinstance(spec, dict) and spec.get("name") == "none")


def study_methods(cfg: StudyConfig) -> list[tuple[str, str | dict]]:
    """(label, spec) of every method the study compares, `none` (the student alone) first."""
    methods = [method_label(m) for m in cfg.methods]
    if not any(is_none(spec) for _, spec in methods):
        methods.insert(0, ("none", "none"))
    labels = [label for label, _ in methods]
    if len(set(labels)) != len(labels):
        raise MtkdError(f"study methods: two methods share a label ({', '.join(labels)}); give them labels")
    return methods


class Planner:
    """Makes any run of a study on demand, its config complete and validated: the teachers' fits,
    and a student run for (student, method, teacher set, seed, epochs). The grid asks for every
    one up front; a search asks stage by stage. The same run always gets the same id and config."""

    def __init__(self, cfg: StudyConfig):
        assert cfg.threads is not None, "settle the study's threads first"
        self.cfg, self.folder = cfg, Path(cfg.output)
        self.data = cfg.data.model_dump(mode="json")
        self.teacher_jobs: list[Job] = []
        self.teacher_dirs: dict[str, str] = {}
        for label, tree in teacher_entries(cfg).items():
            self._teacher(label, tree)
        self.methods = study_methods(cfg)
        self.specs = dict(self.methods)
        self.students = student_configs(cfg)
        self.epochs = {s: _validated(TrainConfig, t, "study student").schedule.epochs
                       for s, t in self.students.items()}  # fmt: skip
        for label, spec in self.methods:
            if not is_none(spec) and not self.teacher_dirs:
                raise MtkdError(f"study method '{label}' needs teachers, and the study has none")
        self.made: dict[str, Job] = {}

    def _teacher(self, label: str, tree: dict) -> None:
        cfg = self.cfg
        if "checkpoint" in tree:
            self.teacher_dirs[label] = tree["checkpoint"]
            info = {"teacher": label, "given": True, "checkpoint": tree["checkpoint"]}
            self.teacher_jobs.append(Job(f"teachers/{label}", "teacher", None, info=info))
            return
        for k in range(cfg.teacher_seeds):
            # The students learn from the first; the others measure the teacher's seed-to-seed spread.
            seed = cfg.teacher_seed + k
            job_id = f"teachers/{label}" if k == 0 else f"teacher-seeds/{label}/seed{seed}"
            full = merge_trees(tree, {"data": self.data, "output": {"dir": str(self.folder / job_id)}})
            full = _fixed_threads(full, cfg.threads)
            full.setdefault("train", {})["seed"] = seed
            config = _validated(TeacherFitConfig, full, f"study teacher {label}")
            if k == 0:
                self.teacher_dirs[label] = str(self.folder / job_id)
            self.teacher_jobs.append(
                Job(job_id, "teacher", config, info={"teacher": label, "given": False, "seed": seed})
            )

    @property
    def candidates(self) -> list[str]:
        return list(self.teacher_dirs)

    def transfer_methods(self) -> list[str]:
        return [label for label, spec in self.methods if not is_none(spec)]

    def allows(self, method: str, size: int) -> bool:
        spec = self.specs[method]
        limit = None if is_none(spec) else _max_teachers(spec)
        return limit is None or size <= limit

    def student(self, student: str, method: str, teachers: tuple[str, ...], seed: int,
                epochs: int | None = None, stage: str = "confirm") -> Job:  # fmt: skip
        """One student run; `epochs` below the student's schedule makes a short (screening) run."""
        full_epochs = self.epochs[student]
        short = epochs is not None and epochs < full_epochs
        team = "+".join(teachers) if teachers else "alone"
        job_id = (f"search/{student}/{method}/{team}/e{epochs}/seed{seed}" if short
                  else f"runs/{student}/{method}/{team}/seed{seed}")  # fmt: skip
        if job_id in self.made:
            return self.made[job_id]
        spec = self.specs[method]
        update: dict[str, Any] = {
            "data": self.data, "output": {"dir": str(self.folder / job_id)}, "train": {"seed": seed},
            "transfer": {"teachers": [self.teacher_dirs[t] for t in teachers], "methods": [spec]},
        }  # fmt: skip
        if short:
            update["schedule"] = {"epochs": epochs}
        full = merge_trees(self.students[student], update)
        config = _validated(TrainConfig, _fixed_threads(full, self.cfg.threads), f"study student {student}")
        info = {"student": student, "method": method, "teachers": list(teachers), "seed": seed,
                "epochs": epochs if short else full_epochs, "full_epochs": full_epochs, "stage": stage}  # fmt: skip
        job = Job(job_id, "student", config, [f"teachers/{t}" for t in teachers], info)
        self.made[job_id] = job
        return job


def plan(cfg: StudyConfig) -> list[Job]:
    """Every run the grid may make, each config complete and validated (with sequential seeds,
    every seed up to max: `first_jobs` and the looks pick which run); the study's `threads` must be
    settled (`run_study` does it), so a run's results do not depend on how many run at once.
    A search (`search.strategy` greedy or halving) plans its runs stage by stage
    (`mtkd.study.search`); here it gets its teachers and one run per student, method and candidate,
    which is enough to check every model, weight source and option before anything runs."""
    planner = Planner(cfg)
    jobs = list(planner.teacher_jobs)
    strategy = search_strategy(cfg, len(planner.candidates))
    if strategy == "grid":
        if planner.candidates and cfg.min_teachers > len(planner.candidates):
            raise MtkdError(
                f"min_teachers {cfg.min_teachers} is above the pool's {len(planner.candidates)} teachers"
            )
        subsets = teacher_subsets(planner.candidates, cfg.max_teachers, cfg.min_teachers)
        for student in planner.students:
            for label, spec in planner.methods:
                sets = [()] if is_none(spec) else [s for s in subsets if planner.allows(label, len(s))]
                if not sets:
                    raise MtkdError(
                        f"method '{label}' takes at most {_max_teachers(spec)} teacher(s) and min_teachers is "
                        f"{cfg.min_teachers}: it would have no configuration"
                    )
                for subset in sets:
                    jobs += [planner.student(student, label, subset, seed) for seed in cfg.seed_pool]
    else:
        seed = cfg.seed_pool[0]
        for student in planner.students:
            jobs.append(planner.student(student, "none", (), seed))
            for label in planner.transfer_methods():
                jobs += [planner.student(student, label, (c,), seed) for c in planner.candidates]
    from mtkd.study.search import check_search  # the search reads the plan: imported here, not above

    check_search(planner)
    _check_names(cfg, jobs)
    return jobs


def search_strategy(cfg: StudyConfig, candidates: int) -> str:
    """The strategy a study uses: as asked, or grid for pools of up to 3 candidates (or teams of a
    least size, min_teachers), else greedy."""
    if cfg.search.strategy != "auto":
        return cfg.search.strategy
    return "grid" if candidates <= 3 or cfg.min_teachers > 1 else "greedy"


def _check_names(cfg: StudyConfig, jobs: list[Job]) -> None:
    """What the runs will build, checked now: the dataset, every student and teacher model and
    weight source, every method's options. A study that would fail an hour in fails here."""
    check_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
    for job in jobs:
        where = f"study {job.kind} {job.id.split('/', 1)[1]}"
        try:
            if isinstance(job.config, TeacherFitConfig):
                check_pretrained(job.config.teacher.name, job.config.teacher.pretrained)
            elif isinstance(job.config, TrainConfig):
                check_student(job.config.model.name, job.config.model.pretrained)
                for name, options in job.config.transfer.method_specs():
                    method_options(name, options)
        except MtkdError as exc:
            raise MtkdError(f"{where}: {exc}") from None


def first_jobs(cfg: StudyConfig, jobs: list[Job]) -> list[Job]:
    """The runs made before the first look: every teacher, every configuration's first seeds."""
    first = set(cfg.first_seeds)
    return [j for j in jobs if j.kind == "teacher" or j.info["seed"] in first]
