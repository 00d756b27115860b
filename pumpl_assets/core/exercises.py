"""The exercise catalogue: which exercises exist, what they need, who they suit.

Built from the normalized ``exercises`` table that the raw asset writes (columns
below), or straight from a free-exercise-db style JSON list. Lookups are by a
normalized name (case and punctuation folded), so "Push-Up" and "push up" match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pumpl_assets.core.schemas import LEVELS, Equipment, Level, Limitation

# Columns of the normalized exercise table (raw asset output).
EXERCISE_COLUMNS: dict[str, Any] = {
    "name": pl.String,
    "level": pl.String,
    "equipment": pl.String,
    "category": pl.String,
    "mechanic": pl.String,
    "force": pl.String,
    "primary_muscles": pl.List(pl.String),
}

# Limitation → what to avoid (muscles stressed, or categories with impact).
LIMITATION_AVOID_MUSCLES: dict[str, set[str]] = {
    "lower back": {"lower back"},
    "shoulders": {"shoulders"},
    "wrists": {"forearms"},
    "knees": set(),
}
LIMITATION_AVOID_CATEGORIES: dict[str, set[str]] = {
    "knees": {"plyometrics"},
    "lower back": {"olympic weightlifting", "powerlifting", "strongman"},
    "shoulders": {"olympic weightlifting"},
    "wrists": set(),
}


def normalize_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


@dataclass(frozen=True)
class CatalogueExercise:
    name: str
    level: Level
    equipment: Equipment  # None in the source means "body only"
    category: str
    primary_muscles: tuple[str, ...]
    mechanic: str | None = None
    force: str | None = None

    def suits(self, level: Level, equipment: Iterable[str], limitations: Iterable[str] = ()) -> bool:
        """Can a person of ``level`` with ``equipment`` and ``limitations`` do this exercise?"""
        if LEVELS.index(self.level) > LEVELS.index(level):
            return False
        if self.equipment not in set(equipment) | {"body only"}:
            return False
        for lim in limitations:
            if LIMITATION_AVOID_MUSCLES.get(lim, set()) & set(self.primary_muscles):
                return False
            if self.category in LIMITATION_AVOID_CATEGORIES.get(lim, set()):
                return False
        return True


class ExerciseCatalogue:
    def __init__(self, exercises: Iterable[CatalogueExercise]):
        self._by_key: dict[str, CatalogueExercise] = {}
        for ex in exercises:
            self._by_key.setdefault(normalize_name(ex.name), ex)

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())

    def get(self, name: str) -> CatalogueExercise | None:
        return self._by_key.get(normalize_name(name))

    def names(self) -> list[str]:
        return sorted(ex.name for ex in self._by_key.values())

    def suitable(
        self, level: Level, equipment: Iterable[str], limitations: Iterable[Limitation | str] = ()
    ) -> list[CatalogueExercise]:
        eq, lim = list(equipment), list(limitations)
        return [ex for ex in self._by_key.values() if ex.suits(level, eq, lim)]

    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> ExerciseCatalogue:
        out = []
        for row in df.iter_rows(named=True):
            out.append(
                CatalogueExercise(
                    name=row["name"],
                    level=row["level"],
                    equipment=row["equipment"] or "body only",
                    category=row.get("category") or "strength",
                    primary_muscles=tuple(row.get("primary_muscles") or ()),
                    mechanic=row.get("mechanic"),
                    force=row.get("force"),
                )
            )
        return cls(out)

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> ExerciseCatalogue:
        rows = [
            {
                "name": r["name"],
                "level": r.get("level", "beginner"),
                "equipment": r.get("equipment") or "body only",
                "category": r.get("category") or "strength",
                "mechanic": r.get("mechanic"),
                "force": r.get("force"),
                "primary_muscles": list(r.get("primaryMuscles") or r.get("primary_muscles") or []),
            }
            for r in records
        ]
        return cls.from_frame(pl.DataFrame(rows, schema=EXERCISE_COLUMNS))

    @classmethod
    def from_json_file(cls, path: Path | str) -> ExerciseCatalogue:
        return cls.from_records(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_parquet(cls, path: Path | str) -> ExerciseCatalogue:
        return cls.from_frame(pl.read_parquet(path))
