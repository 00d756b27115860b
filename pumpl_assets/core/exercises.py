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

from pumpl_assets.core.contraindications import PATTERNS, infer_patterns, verdict
from pumpl_assets.core.schemas import LEVELS, Equipment, Level, Limitation
from pumpl_assets.core.standard import Role

# Columns of the normalized exercise table (raw asset output).
EXERCISE_COLUMNS: dict[str, Any] = {
    "name": pl.String,
    "level": pl.String,
    "equipment": pl.String,
    "category": pl.String,
    "mechanic": pl.String,
    "force": pl.String,
    "primary_muscles": pl.List(pl.String),
    # Movement-pattern tags (core/contraindications.py) and where they came from: "catalogue" when
    # the source carried them, else "rule:<rules that fired>".
    "movement_patterns": pl.List(pl.String),
    "patterns_source": pl.String,
}
_HOLD_NAME = re.compile(r"plank|hold|wall sit|carry|hang\b|l-sit")


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
    patterns: tuple[str, ...] | None = None  # None: not tagged; inferred by rules (see tags())
    patterns_source: str | None = None

    def tags(self) -> tuple[tuple[str, ...], str]:
        """(movement patterns, source): the catalogue's tags, else the rules' (with the rule named)."""
        if self.patterns is not None:
            return self.patterns, self.patterns_source or "catalogue"
        return infer_patterns(
            self.name, self.category, self.force, self.mechanic, self.equipment, self.primary_muscles
        )

    def contraindications(self, limitations: Iterable[str]) -> dict[str, list[str]]:
        """limitation → the excluded movement patterns this exercise has (empty: safe for all)."""
        return verdict(self.tags()[0], limitations)

    def safe_for(self, limitations: Iterable[str]) -> bool:
        return not self.contraindications(limitations)

    @property
    def role(self) -> Role:
        """Main-block role in the coaching standard (core/standard.py)."""
        if self.category == "stretching":
            return "stretch" if self.force == "static" else "drill"
        if self.category in ("cardio", "plyometrics"):
            return "conditioning"
        if self.force == "static" or _HOLD_NAME.search(self.name.lower()):
            return "hold"
        return "primary" if self.mechanic == "compound" else "assistance"

    @property
    def timed(self) -> bool:
        """Prescribed in seconds (holds, stretches, drills, cardio) rather than reps."""
        return self.role in ("hold", "stretch", "drill") or self.category == "cardio"

    @property
    def warmup_ok(self) -> bool:
        """Light dynamic movement or easy cardio: dynamic drills, beginner-level cardio."""
        return self.role == "drill" or (self.category == "cardio" and self.level == "beginner")

    @property
    def cooldown_ok(self) -> bool:
        """Static stretching (and foam rolling)."""
        return self.role == "stretch" or (self.category == "stretching" and self.equipment == "foam roll")

    def suits(self, level: Level, equipment: Iterable[str], limitations: Iterable[str] = ()) -> bool:
        """Can a person of ``level`` with ``equipment`` and ``limitations`` do this exercise?"""
        if LEVELS.index(self.level) > LEVELS.index(level):
            return False
        if self.equipment not in set(equipment) | {"body only"}:
            return False
        return self.safe_for(limitations)


def tag_columns(rec: dict[str, Any]) -> dict[str, Any]:
    """``movement_patterns`` / ``patterns_source`` for a raw record: its own tags, else the rules'."""
    tags = rec.get("patterns", rec.get("movement_patterns"))
    if tags is not None:
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"patterns must be a list of pattern names, got {tags!r}")
        unknown = sorted(set(tags) - set(_KNOWN_PATTERNS))
        if unknown:
            raise ValueError(f"unknown movement pattern(s) {unknown}; known: {sorted(_KNOWN_PATTERNS)}")
        return {
            "movement_patterns": sorted(set(tags)),
            "patterns_source": rec.get("patterns_source") or "catalogue",
        }
    muscles = rec.get("primaryMuscles") or rec.get("primary_muscles") or []
    pats, rule = infer_patterns(
        str(rec.get("name", "")),
        rec.get("category"),
        rec.get("force"),
        rec.get("mechanic"),
        rec.get("equipment") or "body only",
        muscles,
    )
    return {"movement_patterns": list(pats), "patterns_source": rule}


_KNOWN_PATTERNS = frozenset(PATTERNS)


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
                    patterns=tuple(row["movement_patterns"])
                    if row.get("movement_patterns") is not None
                    else None,
                    patterns_source=row.get("patterns_source"),
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
                **tag_columns(r),
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
