"""The data half materialized in-process, and blocking gates stopping everything downstream of bad data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pumpl_assets.common import DistillConfig, RawConfig, ValidateConfig
from pumpl_assets.core import settings
from tests.pipeline_helpers import PARTITION, check_outcomes, materialized, run

DATA_HALF = ["raw", "distilled", "validated", "merged", "data_profile", "split"]


@pytest.mark.integration
def test_data_half_materializes_with_every_gate_passing(pumpl_env: Path) -> None:
    result, _ = run(DATA_HALF, ops={"distilled": DistillConfig(n_examples=120)})
    assert result.success
    assert materialized(result) == set(DATA_HALF)
    checks = check_outcomes(result)
    assert len(checks) >= 14 and all(checks.values()), checks
    split_dir = settings.artifacts_dir(PARTITION, "split")
    sizes = {s: pl.read_parquet(split_dir / f"{s}.parquet").height for s in ("train", "val", "test")}
    assert sum(sizes.values()) >= 100 and all(sizes.values())
    train = pl.read_parquet(split_dir / "train.parquet")
    # Rendered with the partition's prompt style: the prompt is a prefix of the full training text.
    assert all(f.startswith(p) for p, f in zip(train["prompt_text"], train["full_text"], strict=True))
    # Nothing half-written is left next to the artifacts.
    leftovers = [p for p in settings.data_root().rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.integration
def test_bad_raw_files_fail_the_gate_and_block_everything_downstream(pumpl_env: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "broken.csv").write_text('name,level\n"Push-Up,beginner\n')
    (junk / "binary.json").write_bytes(bytes(range(256)) * 8)
    (junk / "empty.jsonl").write_text("")
    for i in range(40):
        (junk / f"bad_{i}.jsonl").write_text('{"request": {"goal": "fly"}, "plan": {}}\n')
    result, _ = run(
        DATA_HALF,
        ops={
            "raw": RawConfig(extra_dirs=[str(junk)], max_quarantine_rate=0.10),
            "distilled": DistillConfig(n_examples=60),
        },
    )
    assert not result.success
    checks = check_outcomes(result)
    assert checks["raw:quarantine_rate"] is False
    # raw itself is recorded (with its quarantine) but nothing downstream ran.
    assert materialized(result) == {"raw"}
    quarantine = pl.read_parquet(settings.artifacts_dir(PARTITION, "raw") / "quarantine.parquet")
    assert quarantine.height >= 43
    assert {"broken.csv", "binary.json", "empty.jsonl"} <= {Path(s).name for s in quarantine["source_file"]}


@pytest.mark.integration
def test_invalid_plans_fail_the_validation_gate_and_block_downstream(pumpl_env: Path) -> None:
    # Plans whose declared total_minutes is right but whose content is ~50% off: validation must catch them.
    raw_dir = settings.raw_dir()
    raw_dir.mkdir(parents=True)
    shipped = [
        json.loads(x) for x in (settings.shipped_raw_dir() / "pairs.jsonl").read_text().splitlines() if x
    ]
    bad = []
    for i, pair in enumerate(shipped * 3):
        plan = json.loads(json.dumps(pair["plan"]))
        for session in plan["sessions"]:  # every session loses its main work but one exercise
            session["main"] = session["main"][:1]
        plan["title"] = f"Short plan {i}"
        bad.append({"request": pair["request"], "plan": plan})
    (raw_dir / "bad_pairs.jsonl").write_text("\n".join(json.dumps(b) for b in bad) + "\n")
    result, _ = run(
        DATA_HALF,
        ops={"distilled": DistillConfig(n_examples=60), "validated": ValidateConfig(max_quarantine_rate=0.2)},
    )
    assert not result.success
    checks = check_outcomes(result)
    assert checks["validated:quarantine_rate"] is False
    assert materialized(result) == {"raw", "distilled", "validated"}
    q = pl.read_parquet(settings.artifacts_dir(PARTITION, "validated") / "quarantine.parquet")
    assert q.height >= len(bad) - 5
    assert q["reason"].str.contains("duration").mean() > 0.8  # type: ignore[operator]
