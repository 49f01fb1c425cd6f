"""The study config: a dataset, one or more students, a teacher pool, methods, seeds and a budget.

A study YAML is short; its `student` and `teacher_fit` sections are partial `mtkd train` and
`mtkd teacher fit` configs shared by every run, and each entry of `students` / `teachers` may
override them. Every run's config is built and validated before anything runs, so a typo in
the study file is one line at the start, not a failure an hour in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mtkd.engine.config import (
    DataConfig,
    Section,
    StudentConfig,
    TeacherConfig,
    TeacherFitConfig,
    TrainConfig,
    build_config,
    format_error,
    merge_trees,
    read_yaml,
    set_dotted,
    settled,
)
from mtkd.errors import MtkdError


class LatencyConfig(Section):
    batch_size: int = Field(1, ge=1, description="images per forward pass when timing inference")
    repeats: int = Field(30, ge=1, le=10_000, description="timed forward passes (after 5 warm-up ones)")
    threads: int = Field(1, ge=1, description="CPU threads while timing (1: the edge-device case)")


class SeedRange(Section):
    """Sequential seeds: every configuration starts with seeds 0..min-1; the configurations the
    questions compare get one more seed per look until every answer is settled or `max` is reached."""

    min: int = Field(3, ge=2, le=100, description="seeds of every configuration before the first look")
    max: int = Field(10, ge=2, le=100, description="at most this many seeds for a compared configuration")

    @model_validator(mode="after")
    def _order(self) -> SeedRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class SearchConfig(Section):
    """How a study chooses teachers from its pool: every subset (grid), forward selection (greedy) or
    successive halving (halving), each spending at most `budget` student-run equivalents per student
    on screening and search; the pick is then confirmed on the study's own seeds, never used to choose."""

    strategy: Literal["auto", "grid", "greedy", "halving"] = Field(
        "auto", description="grid: every subset up to max_teachers; greedy: forward selection; halving: "
        "successive halving over teacher sets x methods; auto: grid up to 3 candidates, else greedy",
    )  # fmt: skip
    budget: float | None = Field(
        None, gt=0,
        description="student-run equivalents (a full-schedule run = 1, a run of e of E epochs = e/E) for "
        "screening and search, per student; default: what the strategy needs for the whole pool",
    )  # fmt: skip
    seeds: int = Field(1, ge=1, le=20, description="seeds of each full-schedule search run")
    seed_start: int = Field(
        1000, ge=0, description="search runs use seeds seed_start, +1, ...: never a confirmation seed"
    )
    screen_epochs: int | None = Field(
        None, ge=0,
        description="epochs of the short screening run of each candidate alone (0: none; default: a "
        "quarter of the student's schedule for greedy and halving, none for grid)",
    )  # fmt: skip
    eta: int = Field(
        3, ge=2, le=10, description="halving: keep the best 1/eta at each rung, eta x the epochs"
    )
    leave_one_out: bool = Field(
        True, description="confirm each member of the chosen set by training without it"
    )


class StudyConfig(Section):
    """`mtkd study`: the grid that answers the paper's three questions."""

    name: str = Field("study", description="a name for the report's title")
    output: Path = Field(Path("runs/study"), description="the study folder (runs, state, report)")
    data: DataConfig = DataConfig()
    seeds: list[int] | SeedRange = Field(
        default_factory=lambda: [0, 1, 2],
        description="seeds of every student config, or {min:, max:} to add seeds until the answers settle",
    )
    teacher_seed: int = Field(0, ge=0, description="the seed of the adapted teacher the students learn from")
    teacher_seeds: int = Field(
        1, ge=1, le=20,
        description="adapt each teacher this many times (seeds teacher_seed, +1, ...); the students learn from "
        "the first, the others measure the teacher's own seed-to-seed spread for Q2",
    )  # fmt: skip
    max_teachers: int = Field(2, ge=1, le=8, description="combinations of the pool up to this size")
    min_teachers: int = Field(
        1, ge=1, le=8,
        description="combinations of the pool from this size (a grid): 2 compares methods on teams only",
    )  # fmt: skip
    methods: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["none", "features"],
        description="transfer methods compared (none is always added); {name:, label:, options}",
    )
    student: dict[str, Any] = Field(
        default_factory=dict, description="partial mtkd train config for every student"
    )
    students: list[str | dict[str, Any]] | None = Field(
        None,
        description="student models by name, or partial train configs (default: student)",
    )
    teacher_fit: dict[str, Any] = Field(default_factory=dict, description="partial mtkd teacher fit config")
    teachers: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="the pool: model names, partial teacher-fit configs, or {checkpoint: adapted run folder}",
    )
    threads: int | None = Field(
        None, ge=1,
        description="CPU compute threads of every run, part of its results; the same whatever --jobs is "
        "(default: all cores of the machine that starts the study, then kept)",
    )  # fmt: skip
    alpha: float = Field(0.05, gt=0, lt=1, description="chance of a false answer allowed (over all looks)")
    equivalence: float = Field(
        0.5, ge=0, lt=100,
        description="points of accuracy that matter: an interval inside +-equivalence reads 'no difference that matters'",
    )  # fmt: skip
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_range(cls, v: Any) -> Any:
        """A mapping is a SeedRange: its own error, not the list branch's 'must be a valid list'.
        true/false are not seeds (YAML would make them 1 and 0)."""
        if isinstance(v, (list, tuple)) and any(isinstance(s, bool) for s in v):
            raise ValueError("seeds must be whole numbers, not true/false")
        if not isinstance(v, dict):
            return v
        try:
            return SeedRange.model_validate(v)
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(map(str, e["loc"]))
            raise ValueError(
                f"{{min:, max:}} {key + ': ' if key else ''}{e['msg']}".replace("Value error, ", "")
            ) from None

    @field_validator("students")
    @classmethod
    def _students(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError(
                "is empty: leave 'students' out for the default student (cnn_small), or name one"
            )
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | SeedRange) -> list[int] | SeedRange:
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or any(s < 0 for s in v)):
            raise ValueError(
                "seeds must be a non-empty list of distinct non-negative integers, or {min:, max:}"
            )
        return v

    @model_validator(mode="after")
    def _team_sizes(self) -> StudyConfig:
        if self.min_teachers > self.max_teachers:
            raise ValueError(f"min_teachers {self.min_teachers} is above max_teachers {self.max_teachers}")
        if self.min_teachers > 1 and self.search.strategy in ("greedy", "halving"):
            raise ValueError(
                f"min_teachers is for a grid; search.strategy {self.search.strategy} starts from one teacher"
            )
        return self

    @model_validator(mode="after")
    def _search_seeds(self) -> StudyConfig:
        shared = sorted(set(self.search_seeds) & set(self.seed_pool))
        if shared:
            raise ValueError(
                f"search seeds {self.search_seeds[0]}..{self.search_seeds[-1]} overlap the confirmation seeds "
                f"(e.g. {shared[0]}): the search must choose on seeds the answers never use; move search.seed_start"
            )
        return self

    @property
    def search_seeds(self) -> list[int]:
        """The seeds of the search's runs; the answers never use them."""
        return list(range(self.search.seed_start, self.search.seed_start + self.search.seeds))

    @property
    def sequential(self) -> bool:
        return isinstance(self.seeds, SeedRange)

    @property
    def seed_pool(self) -> list[int]:
        """Every seed a student configuration may get, in the order they are added."""
        return list(range(self.seeds.max)) if isinstance(self.seeds, SeedRange) else list(self.seeds)

    @property
    def first_seeds(self) -> list[int]:
        """The seeds every configuration gets before the first look."""
        return list(range(self.seeds.min)) if isinstance(self.seeds, SeedRange) else list(self.seeds)

    @property
    def looks(self) -> int:
        """How many times the answers may be read before they are final (1 for a fixed list)."""
        return self.seeds.max - self.seeds.min + 1 if isinstance(self.seeds, SeedRange) else 1


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-")


def folder_name(text: str, where: str) -> str:
    """`text` made folder-safe (other characters become '-'), refused when nothing is left or
    it would name the folder itself or its parent."""
    label = _slug(str(text))
    if not label.strip(".") or len(label) > 200:
        raise MtkdError(f"{where} '{text}' cannot name a folder: use letters, digits, _ . = - (at most 200)")
    return label


def method_label(spec: str | dict[str, Any]) -> tuple[str, str | dict[str, Any]]:
    """A method's short, folder-safe label and the spec passed to transfer.methods."""
    if isinstance(spec, str):
        return folder_name(spec, "study method"), spec
    if "name" not in spec:
        raise MtkdError(f"study methods: each mapping needs a 'name', got {spec}")
    spec = dict(spec)
    label = spec.pop("label", None)
    if label is None:
        options = ",".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        label = f"{spec['name']}({options})" if options else str(spec["name"])
    return folder_name(str(label), "study method label"), spec


def _entry_tree(entry: str | dict[str, Any], sections: set[str], leaf: str, inner: set[str]) -> dict:
    """A pool entry as a partial config: a name, section mappings, or the inner section's own keys."""
    if isinstance(entry, str):
        return {leaf: {"name": entry}}
    tree: dict[str, Any] = {}
    for key, value in entry.items():
        if key in sections:
            tree[key] = (
                merge_trees(tree[key], value)
                if isinstance(tree.get(key), dict) and isinstance(value, dict)
                else value
            )
        elif key in inner:
            set_dotted(tree, f"{leaf}.{key}", value)
        elif key != "label":
            raise MtkdError(
                f"unknown key '{key}' in a study entry (use {', '.join(sorted(sections | inner))})"
            )
    return tree


def _validated(model: type[Section], tree: dict, where: str) -> Section:
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise MtkdError(f"{where}: {format_error(model, err)}") from None


def student_configs(cfg: StudyConfig) -> dict[str, dict]:
    """label -> partial train config tree (without data, seed, transfer.teachers/methods, output)."""
    sections = set(TrainConfig.model_fields)
    entries = cfg.students or [{}]
    out: dict[str, dict] = {}
    for entry in entries:
        tree = merge_trees(
            cfg.student, _entry_tree(entry, sections, "model", set(StudentConfig.model_fields))
        )
        for forbidden in ("data", "output"):
            if forbidden in tree:
                raise MtkdError(f"study student: '{forbidden}' is set by the study, not per student")
        base = _validated(TrainConfig, tree, "study student")
        label = (
            safe_label(str(entry["label"]), "study student")
            if isinstance(entry, dict) and entry.get("label")
            else folder_name(base.model.name, "study student")
        )
        if label in out:
            raise MtkdError(f"study students: '{label}' appears twice (give one a label)")
        out[label] = tree
    return out


def expand_entry(entry: str | dict[str, Any]) -> list[tuple[str | None, str | dict[str, Any]]]:
    """One pool entry as its candidates: `{name: m, input_size: [64, 96], mode: [probe, finetune]}` is
    four teachers, labelled `m-64px-probe`, ... (a given `label` replaces `m`); (label or None, entry)."""
    if not isinstance(entry, dict) or "checkpoint" in entry:
        return [(None, entry)]
    entry = dict(entry)
    teacher = dict(entry.get("teacher") or {}) if isinstance(entry.get("teacher"), dict) else None
    adapt = dict(entry.get("adapt") or {}) if isinstance(entry.get("adapt"), dict) else None
    if "mode" in entry:  # shorthand for adapt.mode
        adapt = {**(adapt or {}), "mode": entry.pop("mode")}
        entry["adapt"] = adapt
    axes: list[tuple[str, list]] = []
    for where, key, suffix in (
        (None, "input_size", "px"),
        ("teacher", "input_size", "px"),
        ("adapt", "mode", ""),
    ):
        holder = entry if where is None else (teacher if where == "teacher" else adapt)
        if holder is not None and isinstance(holder.get(key), list):
            values = holder[key]
            if not values:
                raise MtkdError(f"study teachers: '{key}' is an empty list in {entry}")
            axes.append((f"{where + '.' if where else ''}{key}", [(v, f"{v}{suffix}") for v in values]))
    if not axes:
        return [(str(entry["label"]) if entry.get("label") else None, entry)]
    base = str(entry.get("label") or entry.get("name") or (teacher or {}).get("name") or "mobilenet_v2")
    out: list[tuple[str | None, str | dict[str, Any]]] = [(base, entry)]
    for key, values in axes:
        grown = []
        for label, variant in out:
            for value, tag in values:
                one = json_copy(variant)
                set_dotted(one, key, value)
                grown.append((f"{label}-{tag}", one))
        out = grown
    return out


def json_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: json_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [json_copy(v) for v in tree]
    return tree


def teacher_entries(cfg: StudyConfig) -> dict[str, dict]:
    """label -> {'checkpoint': path} or a partial teacher-fit config tree, one per candidate (an entry
    with lists of input sizes or adaptation modes gives one candidate per value)."""
    if not cfg.teachers:
        return {}
    sections = set(TeacherFitConfig.model_fields)
    out: dict[str, dict] = {}
    seen: dict[str, str] = {}  # the candidate's validated config -> its label
    for given in cfg.teachers:
        for expanded_label, entry in expand_entry(given):
            if isinstance(entry, dict) and "checkpoint" in entry:
                path = Path(entry["checkpoint"])
                if not (path / "best.json").is_file():
                    raise MtkdError(
                        f"study teacher checkpoint {path}: no adapted teacher there (best.json missing)"
                    )
                from mtkd.engine.checkpoint import read_meta

                meta = read_meta(path / "best.json")  # checked (content, shape) before anything runs
                if meta["kind"] != "teacher":
                    raise MtkdError(
                        f"study teacher checkpoint {path} is a {meta['kind']} run, not an adapted teacher "
                        "(mtkd teacher fit)"
                    )
                label = safe_label(str(entry.get("label") or path.name), "study teacher")
                tree: dict[str, Any] = {"checkpoint": str(path)}
                identity = f"checkpoint:{path.resolve()}"
            else:
                tree = merge_trees(
                    cfg.teacher_fit, _entry_tree(entry, sections, "teacher", set(TeacherConfig.model_fields))
                )
                for forbidden in ("data", "output"):
                    if forbidden in tree:
                        raise MtkdError(f"study teacher: '{forbidden}' is set by the study, not per teacher")
                base = _validated(TeacherFitConfig, tree, "study teacher")
                label = safe_label(expanded_label or base.teacher.name, "study teacher")
                identity = str(base.model_dump(mode="json"))
            if identity in seen:
                raise MtkdError(
                    f"study teachers: '{label}' is the same candidate as '{seen[identity]}' (a duplicate, after "
                    "expanding the pool's lists)"
                )
            if label in out:
                raise MtkdError(f"study teachers: '{label}' appears twice (give one a label)")
            seen[identity] = label
            out[label] = tree
    return out


def safe_label(text: str, where: str) -> str:
    """A label that becomes a folder name: refused when it is a path or has nothing folder-safe."""
    if "/" in text or "\\" in text or text in (".", "..") or "\0" in text:
        raise MtkdError(
            f"{where} label '{text}' is a path: a label names a folder, use letters, digits, _ . = -"
        )
    label = _slug(text).replace("+", "-")  # '+' joins a team's labels
    if not label.strip(".") or len(label) > 200:
        raise MtkdError(f"{where} label '{text}' has no letters or digits to name a folder with")
    return label


def settle_study_threads(cfg: StudyConfig) -> StudyConfig:
    """The study with its runs' thread count settled: as given, else the count the study started
    with (recorded in its study.yaml), else every core of this machine."""
    from mtkd.device import default_threads

    written = Path(cfg.output) / "study.yaml"
    saved = read_yaml(written).get("threads") if not cfg.threads and written.is_file() else None
    saved = saved if isinstance(saved, int) and not isinstance(saved, bool) and saved > 0 else None
    return cfg.model_copy(update={"threads": settled(cfg.threads, saved, default_threads)})


def load_study_config(
    path: str | Path,
    sets: list[str] | None = None,
    output: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """Defaults, then the YAML file, then overrides and --set; `name` defaults to the file's stem."""
    overrides = dict(overrides or {})
    if "name" not in overrides and "name" not in read_yaml(path):
        overrides["name"] = Path(path).stem
    if output is not None:
        overrides["output"] = output
    cfg = build_config(StudyConfig, path, overrides, sets)
    assert isinstance(cfg, StudyConfig)
    return cfg
