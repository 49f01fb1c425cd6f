"""mtkd: transfer knowledge from one or several pretrained teachers into a small student.

    import mtkd
    teacher = mtkd.fit_teacher("mobilenet_v2", data="animal-mnist", input_size=96, out="runs/t")
    run = mtkd.train("cnn_small", teachers=[teacher], data="animal-mnist", methods=["features"], out="runs/s")
    student = mtkd.load_student(run)        # takes float images in [0, 1]

The names below are imported on first use, so `import mtkd` (and the CLI) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mtkd.errors import MtkdError
from mtkd.version import __version__

_LAZY = {
    "fit_teacher": "mtkd.api", "train": "mtkd.api", "study": "mtkd.api", "evaluate": "mtkd.api",
    "load_student": "mtkd.api", "export": "mtkd.api", "Run": "mtkd.api",
    "ModuleTeacher": "mtkd.teachers.modules", "register_teacher": "mtkd.teachers.modules",
    "register_student": "mtkd.models.students", "create_student": "mtkd.models.zoo",
    "register_method": "mtkd.methods", "register_dataset": "mtkd.data",
}  # fmt: skip
_SUBMODULES = {"data", "methods", "models", "teachers", "engine", "deploy", "study"}

__all__ = [
    "ModuleTeacher", "MtkdError", "Run", "__version__", "create_student", "evaluate", "export", "fit_teacher",
    "load_student", "register_dataset", "register_method", "register_student", "register_teacher",
    "study", "train",
]  # fmt: skip

if TYPE_CHECKING:
    from mtkd.api import Run, evaluate, export, fit_teacher, load_student, study, train
    from mtkd.data import register_dataset
    from mtkd.methods import register_method
    from mtkd.models.students import register_student
    from mtkd.models.zoo import create_student
    from mtkd.teachers.modules import ModuleTeacher, register_teacher


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f"mtkd.{name}")
    raise AttributeError(f"module 'mtkd' has no attribute '{name}'")
