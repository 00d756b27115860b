"""Data profile of the merged training examples, in DuckDB SQL straight over ``merged.parquet``.

What a coach would ask of a training set before a model learns from it:

* **coverage** — how many plans fall in each goal × level × session-length bucket × equipment set ×
  limitation cell (a plan with two limitations counts in both limitation cells; one with none in
  ``none``), and which share of the goal × level grid (6 × 3) is populated at all;
* **prescriptions per goal** — over main-block items: share prescribed as timed work vs reps, and
  the 10th/50th/90th percentiles of sets, reps, work seconds and rest seconds (absent ``sets`` is 1
  and absent ``rest_s`` is 0, the schema's omitted defaults);
* **exercise frequency** — the share of plans in which each exercise appears, separately for the
  main block and for warm-up/cool-down (names folded like the catalogue folds them);
* **split × days per week** counts.

The gates are plain functions over the profile (:func:`coverage_gate`, :func:`diversity_gate`);
the Dagster asset (``defs/profile.py``) only wires them to blocking checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from pumpl_assets.core import artifacts as A
from pumpl_assets.core.schemas import GOALS, LEVELS

REQUIRED_COLUMNS = ("example_id", "request_json", "plan_json")

# Session-length buckets (requests allow 10..120 minutes): label → inclusive upper bound.
LENGTH_BUCKETS: tuple[tuple[str, int], ...] = (("<=20", 20), ("21-40", 40), ("41-60", 60), (">60", 10_000))

QUANTILES = (0.1, 0.5, 0.9)
MAIN = "main"
WARMUP_COOLDOWN = "warmup_cooldown"
DEFAULT_MAX_SHARE = 0.2


class ProfileError(ValueError):
    """The merged examples cannot be profiled (missing file or column, not plan schema v2)."""


@dataclass
class DataProfile:
    """Tables of one profile run (polars frames) and a few scalars."""

    n_plans: int
    by_source: dict[str, int]
    coverage: pl.DataFrame  # goal, level, length, equipment, limitation, plans
    grid: pl.DataFrame  # goal, level, plans — the full 6 × 3 grid, empty cells with 0
    prescriptions: pl.DataFrame  # goal, items, share_timed, {sets,reps,work_s,rest_s}_p{10,50,90}
    exercise_frequency: pl.DataFrame  # block (main | warmup_cooldown), name, plans, share
    splits: pl.DataFrame  # split, days_per_week, plans
    marginals: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def grid_fraction(self) -> float:
        return self.grid.filter(pl.col("plans") > 0).height / max(1, self.grid.height)

    @property
    def empty_cells(self) -> list[str]:
        empty = self.grid.filter(pl.col("plans") == 0)
        return [f"{g} × {lv}" for g, lv in zip(empty["goal"], empty["level"], strict=True)]

    def top_shares(self, block: str, n: int = 10) -> dict[str, float]:
        top = self.exercise_frequency.filter(pl.col("block") == block).head(n)
        return {name: round(float(s), 4) for name, s in zip(top["name"], top["share"], strict=True)}

    def summary(self) -> dict[str, Any]:
        """What ``profile.json`` holds: scalars, the grid and the top exercise shares."""
        return {
            "n_plans": self.n_plans,
            "by_source": self.by_source,
            "coverage_cells": self.coverage.height,
            "goal_level_grid_fraction": round(self.grid_fraction, 4),
            "goal_level_grid": {f"{g}/{lv}": int(n) for g, lv, n in self.grid.iter_rows()},
            "empty_goal_level_cells": self.empty_cells,
            "marginals": self.marginals,
            "top_main_shares": self.top_shares(MAIN),
            "top_warmup_cooldown_shares": self.top_shares(WARMUP_COOLDOWN),
            "split_days": {f"{s}/{d}": int(n) for s, d, n in self.splits.iter_rows()},
        }


# ------------------------------------------------------------------------------------------ SQL


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _values(rows: list[tuple[str, ...]]) -> str:
    return ", ".join("(" + ", ".join(_quote(v) for v in row) + ")" for row in rows)


_NORMALIZED = "trim(regexp_replace(lower({col}), '[^a-z0-9]+', ' ', 'g'))"  # = exercises.normalize_name

_LENGTH_CASE = (
    "CASE "
    + " ".join(f"WHEN minutes <= {hi} THEN {_quote(label)}" for label, hi in LENGTH_BUCKETS[:-1])
    + f" ELSE {_quote(LENGTH_BUCKETS[-1][0])} END"
)

_PLANS_SQL = """
CREATE TEMP TABLE plans AS
SELECT
    example_id,
    {source} AS source,
    CAST(plan_json AS JSON) AS plan,
    json_extract_string(request_json, '$.goal') AS goal,
    json_extract_string(request_json, '$.level') AS level,
    CAST(json_extract(request_json, '$.minutes') AS INTEGER) AS minutes,
    array_to_string(list_sort(list_distinct(json_extract_string(request_json, '$.equipment[*]'))), ' + ')
        AS equipment,
    coalesce(json_extract_string(request_json, '$.limitations[*]'), []) AS limitations,
    json_extract_string(plan_json, '$.split') AS split,
    CAST(json_extract(plan_json, '$.days_per_week') AS INTEGER) AS days_per_week
FROM read_parquet(?)
"""

_ITEMS_SQL = """
CREATE TEMP TABLE items AS
WITH sessions AS (
    SELECT example_id, goal, unnest(json_extract(plan, '$.sessions[*]')) AS s FROM plans
), raw_items AS (
    SELECT example_id, goal, 'warmup' AS block, unnest(json_extract(s, '$.warmup[*]')) AS e FROM sessions
    UNION ALL
    SELECT example_id, goal, 'main' AS block, unnest(json_extract(s, '$.main[*]')) AS e FROM sessions
    UNION ALL
    SELECT example_id, goal, 'cooldown' AS block, unnest(json_extract(s, '$.cooldown[*]')) AS e FROM sessions
)
SELECT
    example_id,
    goal,
    block,
    e ->> '$.name' AS name,
    coalesce(CAST(e ->> '$.sets' AS INTEGER), 1) AS sets,
    CAST(e ->> '$.reps' AS INTEGER) AS reps,
    CAST(e ->> '$.work_s' AS INTEGER) AS work_s,
    coalesce(CAST(e ->> '$.rest_s' AS INTEGER), 0) AS rest_s
FROM raw_items
"""

_COVERAGE_SQL = f"""
SELECT goal, level, {_LENGTH_CASE} AS length, equipment, limitation, count(DISTINCT example_id) AS plans
FROM (
    SELECT *, unnest(CASE WHEN len(limitations) = 0 THEN ['none'] ELSE limitations END) AS limitation
    FROM plans
)
GROUP BY ALL
ORDER BY goal, level, length, equipment, limitation
"""

_GRID_SQL = """
WITH grid(goal, level) AS (VALUES {cells})
SELECT grid.goal, grid.level, count(DISTINCT plans.example_id) AS plans
FROM grid LEFT JOIN plans ON plans.goal = grid.goal AND plans.level = grid.level
GROUP BY grid.goal, grid.level
ORDER BY grid.goal, grid.level
"""


def _quantile_columns(col: str) -> str:
    """p10/p50/p90 of ``col`` (NULLs — e.g. reps of timed items — are ignored by DuckDB's aggregates)."""
    return ", ".join(f"quantile_cont({col}, {q}) AS {col}_p{round(q * 100)}" for q in QUANTILES)


_PRESCRIPTIONS_SQL = f"""
SELECT
    goal,
    count(*) AS items,
    avg(CASE WHEN work_s IS NOT NULL THEN 1.0 ELSE 0.0 END) AS share_timed,
    {_quantile_columns("sets")},
    {_quantile_columns("reps")},
    {_quantile_columns("work_s")},
    {_quantile_columns("rest_s")}
FROM items
WHERE block = 'main'
GROUP BY goal
ORDER BY goal
"""

_FREQUENCY_SQL = f"""
WITH named AS (
    SELECT
        example_id,
        CASE WHEN block = 'main' THEN '{MAIN}' ELSE '{WARMUP_COOLDOWN}' END AS block,
        {_NORMALIZED.format(col="name")} AS key,
        name
    FROM items
)
SELECT block, min(name) AS name, count(DISTINCT example_id) AS plans,
       count(DISTINCT example_id) / (SELECT count(*) FROM plans) AS share
FROM named
GROUP BY block, key
ORDER BY block, share DESC, name
"""

_SPLITS_SQL = """
SELECT split, days_per_week, count(*) AS plans FROM plans GROUP BY ALL ORDER BY split, days_per_week
"""


def _columns(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    rows = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    return [r[0] for r in rows]


def profile_examples(parquet_path: Path | str) -> DataProfile:
    """Profile the merged examples at ``parquet_path`` (``merged.parquet`` of the ``merged`` asset).

    Raises :class:`ProfileError` naming the problem when the file is missing, lacks a required
    column, holds JSON DuckDB cannot parse, or holds plans without ``sessions`` (not plan schema v2).
    """
    path = Path(parquet_path)
    if not path.is_file():
        raise ProfileError(f"no merged examples to profile: {path} does not exist")
    con = duckdb.connect(":memory:")
    try:
        cols = _columns(con, path)
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise ProfileError(f"{path.name} is missing column(s) {missing}; it has {cols}")
        source = "source" if "source" in cols else "'unknown'"
        try:
            con.execute(_PLANS_SQL.format(source=source), [str(path)])
        except duckdb.Error as exc:  # malformed JSON text in request_json / plan_json
            raise ProfileError(f"{path.name}: request_json/plan_json is not valid JSON: {exc}") from exc
        no_sessions = con.execute(
            "SELECT count(*), min(example_id) FROM plans WHERE json_type(plan, '$.sessions') IS DISTINCT FROM 'ARRAY'"
        ).fetchone()
        if no_sessions and no_sessions[0]:
            raise ProfileError(
                f"{path.name}: {no_sessions[0]} plan(s) have no 'sessions' array (not plan schema v2), "
                f"e.g. example_id {no_sessions[1]!r}"
            )
        con.execute(_ITEMS_SQL)
        n_plans = int(con.execute("SELECT count(*) FROM plans").fetchone()[0])  # type: ignore[index]
        by_source = {
            str(s): int(n)
            for s, n in con.execute(
                "SELECT source, count(*) FROM plans GROUP BY source ORDER BY source"
            ).fetchall()
        }
        cells = _values([(g, lv) for g in GOALS for lv in LEVELS])
        marginals: dict[str, dict[str, int]] = {}
        for dim, expr in (
            ("goal", "goal"),
            ("level", "level"),
            ("length", _LENGTH_CASE),
            ("equipment", "equipment"),
        ):
            rows = con.execute(f"SELECT {expr} AS k, count(*) FROM plans GROUP BY k ORDER BY k").fetchall()
            marginals[dim] = {str(k): int(n) for k, n in rows}
        rows = con.execute(
            "SELECT lim, count(*) FROM (SELECT unnest(CASE WHEN len(limitations) = 0 THEN ['none'] "
            "ELSE limitations END) AS lim FROM plans) GROUP BY lim ORDER BY lim"
        ).fetchall()
        marginals["limitation"] = {str(k): int(n) for k, n in rows}
        return DataProfile(
            n_plans=n_plans,
            by_source=by_source,
            coverage=con.sql(_COVERAGE_SQL).pl(),
            grid=con.sql(_GRID_SQL.format(cells=cells)).pl(),
            prescriptions=con.sql(_PRESCRIPTIONS_SQL).pl(),
            exercise_frequency=con.sql(_FREQUENCY_SQL).pl(),
            splits=con.sql(_SPLITS_SQL).pl(),
            marginals=marginals,
        )
    finally:
        con.close()


# ------------------------------------------------------------------------------------------ gates


@dataclass(frozen=True)
class GateOutcome:
    passed: bool
    description: str
    metadata: dict[str, Any]


def coverage_gate(profile: DataProfile) -> GateOutcome:
    """Every goal × level cell (6 × 3) holds at least one plan; a failure names the empty cells."""
    empty = profile.empty_cells
    populated = profile.grid.height - len(empty)
    desc = f"{populated}/{profile.grid.height} goal × level cells populated"
    if empty:
        desc += "; empty: " + ", ".join(empty)
    return GateOutcome(
        passed=not empty and profile.grid.height == len(GOALS) * len(LEVELS),
        description=desc,
        metadata={
            "grid_fraction": profile.grid_fraction,
            "empty_cells": len(empty),
            "plans": profile.n_plans,
        },
    )


def diversity_gate(profile: DataProfile, max_share: float = DEFAULT_MAX_SHARE) -> GateOutcome:
    """No exercise appears in the MAIN block of more than ``max_share`` of plans; names offenders.

    Warm-up/cool-down shares are reported, not gated: small pools of warm-up drills and stretches
    are legitimately reused across plans.
    """
    main = profile.exercise_frequency.filter(pl.col("block") == MAIN)
    offenders = main.filter(pl.col("share") > max_share)
    top_main = (str(main["name"][0]), float(main["share"][0])) if main.height else ("-", 0.0)
    wc = profile.exercise_frequency.filter(pl.col("block") == WARMUP_COOLDOWN)
    top_wc = (str(wc["name"][0]), float(wc["share"][0])) if wc.height else ("-", 0.0)
    if profile.n_plans == 0:
        desc = "no plans to profile"
    elif offenders.height:
        listed = ", ".join(f"{n} {s:.1%}" for n, s in zip(offenders["name"], offenders["share"], strict=True))
        desc = f"{offenders.height} exercise(s) in the main block of more than {max_share:.0%} of plans: {listed}"
    else:
        desc = (
            f"most frequent main exercise {top_main[0]} in {top_main[1]:.1%} of plans (max {max_share:.0%})"
        )
    desc += f"; warm-up/cool-down (reported, not gated): {top_wc[0]} in {top_wc[1]:.1%}"
    return GateOutcome(
        passed=profile.n_plans > 0 and offenders.height == 0,
        description=desc,
        metadata={
            "max_share": max_share,
            "max_main_share": top_main[1],
            "offenders": {
                str(n): round(float(s), 4) for n, s in zip(offenders["name"], offenders["share"], strict=True)
            },
            "max_warmup_cooldown_share": top_wc[1],
            "distinct_main_exercises": main.height,
        },
    )


# ------------------------------------------------------------------------------------------ output


def _md_table(df: pl.DataFrame, n: int | None = None, digits: int = 3) -> str:
    if df.height == 0:
        return "_(empty)_"
    rows = df if n is None else df.head(n)

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(rows.columns) + " |", "|" + "---|" * len(rows.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows.iter_rows()]
    return "\n".join(lines)


def grid_markdown(profile: DataProfile) -> str:
    """The goal × level grid as a goal-rows, level-columns table of plan counts."""
    lines = ["| goal | " + " | ".join(LEVELS) + " |", "|---|" + "---|" * len(LEVELS)]
    counts = {(g, lv): int(n) for g, lv, n in profile.grid.iter_rows()}
    for g in GOALS:
        lines.append(f"| {g} | " + " | ".join(str(counts.get((g, lv), 0)) for lv in LEVELS) + " |")
    return "\n".join(lines)


def render_markdown(profile: DataProfile, top: int = 10) -> dict[str, str]:
    """Short markdown renderings of the profile's tables (Dagster metadata and ``profile.md``)."""
    freq = profile.exercise_frequency

    def shares(block: str) -> str:
        sub = freq.filter(pl.col("block") == block).drop("block").head(top)
        return _md_table(sub.with_columns((pl.col("share") * 100).round(1).alias("share_%")).drop("share"))

    return {
        "goal_level_grid": grid_markdown(profile),
        "prescriptions": _md_table(profile.prescriptions),
        "top_main_exercises": shares(MAIN),
        "top_warmup_cooldown_exercises": shares(WARMUP_COOLDOWN),
        "split_days": _md_table(profile.splits),
    }


def write_profile(profile: DataProfile, dest_dir: Path | str) -> dict[str, Path]:
    """Write every table as Parquet, ``profile.json`` (the summary) and ``profile.md``, each atomically."""
    from pumpl_assets.core.io import write_json_atomic, write_parquet_atomic, write_text_atomic

    d = Path(dest_dir)
    paths = {
        name: write_parquet_atomic(d / f"{name}.parquet", df)
        for name, df in (
            ("coverage", profile.coverage),
            ("goal_level_grid", profile.grid),
            ("prescriptions", profile.prescriptions),
            ("exercise_frequency", profile.exercise_frequency),
            ("split_days", profile.splits),
        )
    }
    md = render_markdown(profile)
    text = "\n\n".join(f"## {k.replace('_', ' ')}\n\n{v}" for k, v in md.items())
    paths["markdown"] = write_text_atomic(d / A.FILE_PROFILE_MD, f"# Data profile\n\n{text}\n")
    paths["summary"] = write_json_atomic(d / A.FILE_PROFILE_SUMMARY, profile.summary())
    return paths
