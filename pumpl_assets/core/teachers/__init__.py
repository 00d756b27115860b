"""Teachers: where distilled training plans come from.

* ``offline`` — :class:`OfflineTeacher`, a deterministic rule-based planner (no key, no network).
* ``claude`` — :class:`ClaudeTeacher`, Anthropic's Messages API with strict tool use, cached.
* ``auto`` — ``claude`` when ``ANTHROPIC_API_KEY`` is set, else ``offline``.
"""

from __future__ import annotations

import os
from typing import Any

from pumpl_assets.core.teachers.base import Teacher, TeacherResult, redact
from pumpl_assets.core.teachers.offline import OfflineTeacher, PlanningError, plan_for_request

TEACHER_CHOICES = ("auto", "offline", "claude")


def get_teacher(name: str = "auto", **kwargs: Any) -> Teacher:
    """A teacher by name; ``kwargs`` go to its constructor. Unknown name → ValueError listing choices."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        key = "claude" if os.environ.get("ANTHROPIC_API_KEY") else "offline"
    if key == "offline":
        return OfflineTeacher(**kwargs)
    if key == "claude":
        from pumpl_assets.core.teachers.claude import ClaudeTeacher

        return ClaudeTeacher(**kwargs)
    raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHER_CHOICES)}")


__all__ = [
    "TEACHER_CHOICES",
    "OfflineTeacher",
    "PlanningError",
    "Teacher",
    "TeacherResult",
    "get_teacher",
    "plan_for_request",
    "redact",
]
