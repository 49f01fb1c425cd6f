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
from mtkd.engine.config import Section, TeacherFitConfig, TrainConfig, _merge
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


def teacher_subsets(labels: list[str], max_size: int) -> list[tuple[str, ...]]:
    return [s for k in range(1, min(max_size, len(labels)) + 1) for s in combinations(labels, k)]


def _max_teachers(spec: str | dict) -> int | None:
    return method_class(spec if isinstance(spec, str) else spec["name"]).max_teachers


def _fixed_threads(tree: dict, threads: int) -> dict:
    """A run's tree with its compute threads: its own `train.threads`, else the study's."""
    if not (tree.get("train") or {}).get("threads"):
        tree.setdefault("train", {})["threads"] = threads
    return tree


def plan(cfg: StudyConfig) -> list[Job]:
    """Every run the study may make, each config complete and validated (with sequential seeds,
    every seed up to max: `first_jobs` and the looks pick which run); the study's `threads` must be
    settled (`run_study` does it), so a run's results do not depend on how many run at once."""
    assert cfg.threads is not None, "settle the study's threads first"
    folder = Path(cfg.output)
    data = cfg.data.model_dump(mode="json")
    jobs: list[Job] = []
    teacher_dirs: dict[str, str] = {}
    for label, tree in teacher_entries(cfg).items():
        if "checkpoint" in tree:
            teacher_dirs[label] = tree["checkpoint"]
            jobs.append(
                Job(
                    f"teachers/{label}",
                    "teacher",
                    None,
                    info={"teacher": label, "given": True, "checkpoint": tree["checkpoint"]},
                )
            )
            continue
        for k in range(cfg.teacher_seeds):
            # The students learn from the first; the others measure the teacher's seed-to-seed spread.
            seed = cfg.teacher_seed + k
            job_id = f"teachers/{label}" if k == 0 else f"teacher-seeds/{label}/seed{seed}"
            full = _merge(tree, {"data": data, "output": {"dir": str(folder / job_id)}})
            full = _fixed_threads(full, cfg.threads)
            full.setdefault("train", {})["seed"] = seed
            config = _validated(TeacherFitConfig, full, f"study teacher {label}")
            if k == 0:
                teacher_dirs[label] = str(folder / job_id)
            jobs.append(Job(job_id, "teacher", config, info={"teacher": label, "given": False, "seed": seed}))

    methods = [method_label(m) for m in cfg.methods]
    if not any(spec == "none" or (isinstance(spec, dict) and spec["name"] == "none") for _, spec in methods):
        methods.insert(0, ("none", "none"))
    labels = [label for label, _ in methods]
    if len(set(labels)) != len(labels):
        raise MtkdError(f"study methods: two methods share a label ({', '.join(labels)}); give them labels")
    subsets = teacher_subsets(list(teacher_dirs), cfg.max_teachers)
    for student, tree in student_configs(cfg).items():
        for label, spec in methods:
            is_none = spec == "none" or (isinstance(spec, dict) and spec["name"] == "none")
            limit = None if is_none else _max_teachers(spec)
            sets = [()] if is_none else [s for s in subsets if limit is None or len(s) <= limit]
            if not is_none and not teacher_dirs:
                raise MtkdError(f"study method '{label}' needs teachers, and the study has none")
            for subset in sets:
                for seed in cfg.seed_pool:
                    team = "+".join(subset) if subset else "alone"
                    job_id = f"runs/{student}/{label}/{team}/seed{seed}"
                    full = _merge(tree, {
                        "data": data, "output": {"dir": str(folder / job_id)},
                        "train": {"seed": seed},
                        "transfer": {"teachers": [teacher_dirs[t] for t in subset], "methods": [spec]},
                    })  # fmt: skip
                    config = _validated(
                        TrainConfig, _fixed_threads(full, cfg.threads), f"study student {student}"
                    )
                    info = {"student": student, "method": label, "teachers": list(subset), "seed": seed}
                    jobs.append(Job(job_id, "student", config, [f"teachers/{t}" for t in subset], info))
    _check_names(cfg, jobs)
    return jobs


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
                check_student(job.config.model.name)
                for name, options in job.config.transfer.method_specs():
                    method_options(name, options)
        except MtkdError as exc:
            raise MtkdError(f"{where}: {exc}") from None


def first_jobs(cfg: StudyConfig, jobs: list[Job]) -> list[Job]:
    """The runs made before the first look: every teacher, every configuration's first seeds."""
    first = set(cfg.first_seeds)
    return [j for j in jobs if j.kind == "teacher" or j.info["seed"] in first]
