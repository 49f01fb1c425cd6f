"""What `mtkd models` lists of students (the teachers' list is mtkd.teachers.catalog)."""

from __future__ import annotations

from mtkd.models.cost import count_params
from mtkd.models.students import STUDENTS
from mtkd.registry import short_doc


def describe_students() -> list[dict]:
    return [
        {"name": name, "params": count_params(build(10, 1)), "description": short_doc(build)}
        for name, build in STUDENTS.items()
    ]
