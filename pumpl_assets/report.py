"""Print what the last run of a partition produced: per-asset wall time and every gate's outcome.

``python -m pumpl_assets.report --partition smollm2-135m`` exits 1 if an asset of the
graph is missing or any blocking gate failed (used after the main job in CI).
"""

from __future__ import annotations

import argparse
import json
import sys

from pumpl_assets.core import artifacts as A
from pumpl_assets.core import settings

# The artifact contract names every asset, upstream first (tests/test_artifacts.py checks it against the graph).
ASSETS = A.ASSETS


def collect(partition: str) -> list[dict]:
    import dagster as dg

    instance = dg.DagsterInstance.get()
    rows = []
    for name in ASSETS:
        recs = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[partition]), limit=1
        ).records
        gates_path = settings.artifacts_dir(partition, name) / "gates.json"
        gates = json.loads(gates_path.read_text()) if gates_path.is_file() else {}
        wall = None
        if recs:
            md = recs[0].asset_materialization.metadata if recs[0].asset_materialization else {}
            v = md.get("wall_s")
            wall = getattr(v, "value", None)
        rows.append({"asset": name, "materialized": bool(recs), "wall_s": wall, "gates": gates})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--partition", default=settings.base_model_key())
    args = ap.parse_args(argv)
    rows = collect(args.partition)
    ok = True
    print("| asset | materialized | wall s | gates |\n|---|---|---|---|")
    for r in rows:
        gates = ", ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in r["gates"].items()) or "-"
        wall = f"{r['wall_s']:.1f}" if isinstance(r["wall_s"], int | float) else "-"
        print(f"| {r['asset']} | {'yes' if r['materialized'] else 'NO'} | {wall} | {gates} |")
        ok = ok and r["materialized"] and all(r["gates"].values())
    eval_dir = settings.artifacts_dir(args.partition, "eval_report")
    if (eval_dir / "summary.json").is_file():
        from pumpl_assets.core.evaluate import load_summary
        from pumpl_assets.core.report import check_table_markdown

        causes_path = eval_dir / "failure_causes.json"
        causes = json.loads(causes_path.read_text()) if causes_path.is_file() else None
        print("\nPer-check pass rates (eval_report):\n")
        print(check_table_markdown(load_summary(eval_dir), causes))
    if not ok:
        print(f"partition {args.partition}: some asset is missing or a gate failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
