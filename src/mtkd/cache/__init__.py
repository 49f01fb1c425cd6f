"""Frozen teachers' outputs, computed once per view of every image and reused from disk."""

from mtkd.cache.teacher_cache import TeacherCache, build_cache

__all__ = ["TeacherCache", "build_cache"]
