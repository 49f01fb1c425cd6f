"""Studies: plan every run of "is one teacher enough?", run them, answer with intervals.

The package is also `mtkd.study(...)`, the API's function: importing a submodule
(`mtkd.study.config`) makes `mtkd.study` this package, so the package is callable too
(`study.runner.study_from`, which the API's function calls as well).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mtkd.study.runner import study_from

        return study_from(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
