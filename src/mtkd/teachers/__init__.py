"""Everything that is a teacher: pretrained networks and their spec (`nets`), modules of yours and
plugin teachers (`modules`), the cache of frozen teachers' outputs (`cache`), and the `Teacher` of
a run that owns one of each (`teacher`). Nothing here knows of training (`mtkd.engine`)."""

from mtkd.teachers.cache import CacheSpec, TeacherCache, build_cache
from mtkd.teachers.modules import ModuleTeacher, register_teacher
from mtkd.teachers.nets import TeacherNet, TeacherSpec
from mtkd.teachers.teacher import Teacher

__all__ = [
    "CacheSpec", "ModuleTeacher", "Teacher", "TeacherCache", "TeacherNet", "TeacherSpec", "build_cache",
    "register_teacher",
]  # fmt: skip
