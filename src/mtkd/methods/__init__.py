"""Knowledge-transfer methods: each in its own file, registered by name.

Importing this package registers every method; `METHODS` maps names to classes.
"""

from mtkd.methods import avg_kd, camkd, crd, dist, dkd, ebkd, features, hint, kd, mtkd_rl, none, reviewkd  # noqa: F401 - registration
from mtkd.methods.base import (
    METHODS,
    Method,
    StudentOutputs,
    TeacherOutputs,
    build_method,
    method_class,
    method_options,
    register,
)

register_method = register  # a Method subclass by its `name` (also: the mtkd.methods entry point group)

__all__ = [
    "METHODS",
    "Method",
    "method_class",
    "method_options",
    "register_method",
    "StudentOutputs",
    "TeacherOutputs",
    "build_method",
]
