"""Human-readable renderings of evaluation results (Dagster metadata, README, CLI report)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from pumpl_assets.core.evaluate import RATE_METRICS
from pumpl_assets.core.finalize import FINALIZED_CHECKS, FITTED_CHECKS
from pumpl_assets.core.grammar import GUARANTEED_CHECKS
from pumpl_assets.core.name_guard import GUARDED_CHECKS

COLUMNS = (
    ("base", "unconstrained"),
    ("base", "served"),
    ("adapter", "unconstrained"),
    ("adapter", "served"),
)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def check_table_markdown(
    summary: Mapping[str, float], causes: Mapping[str, Mapping[str, list[tuple[str, int]]]] | None = None
) -> str:
    """Per-check pass rates for base / adapter × unconstrained / served (what the person gets, after
    the served post-step) and the adapter's served answer as the model wrote it; who settles each
    check when served (grammar, post-step, fitted by the post-step when the model's choices allow,
    the model kept to a rule by the decode guard, model); and the adapter's most common served failure cause per check."""
    head = (
        "| check | "
        + " | ".join(f"{m} {mode}" for m, mode in COLUMNS)
        + " | adapter served, model's answer | served: | top served failure |"
    )
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    served_causes = (causes or {}).get("adapter.served", {})
    for metric in RATE_METRICS:
        vals = " | ".join(_pct(summary.get(f"{m}.{mode}.{metric}")) for m, mode in COLUMNS)
        decided = summary.get(f"adapter.served.decided.{metric}")
        if metric == "model_adherence":
            decided = summary.get("adapter.served.model_adherence")
        vals += f" | {_pct(decided)}"
        if metric in ("adherence", "model_adherence", "plan_safety"):
            who = "—"
        elif metric in GUARANTEED_CHECKS or metric in ("json_valid", "schema_valid"):
            who = "grammar"
        elif metric in FINALIZED_CHECKS:
            who = "post-step"
        elif metric in FITTED_CHECKS:
            who = "fitted"
        elif metric in GUARDED_CHECKS:
            who = "model + guard"
        else:
            who = "model"
        top = served_causes.get(metric) or []
        cause = f"{top[0][0]} (×{top[0][1]})" if top else ""
        lines.append(f"| {metric} | {vals} | {who} | {cause.replace('|', '/')} |")
    n = summary.get("n_examples")
    lines.append("")
    lines.append(
        f"Rows: {int(n) if n else '?'} test examples, the same rows for every column; requests reach the model "
        f"through the free-text parser ({int(summary.get('n_understood_differs', 0))} understood differently "
        f"from the true request). Test loss: base {summary.get('base.test_loss', float('nan')):.3f}, adapter "
        f"{summary.get('adapter.test_loss', float('nan')):.3f}."
    )
    return "\n".join(lines)
