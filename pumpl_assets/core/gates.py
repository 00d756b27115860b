"""Quality-gate arithmetic and the champion/challenger policy, Dagster-free.

Assets call these and wrap each :class:`Gate` into a blocking ``AssetCheckResult``
(:func:`pumpl_assets.common.check`); tests call them directly with numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pumpl_assets.core.catalogue import GateThresholds
from pumpl_assets.core.grammar import GUARANTEED_CHECKS
from pumpl_assets.core.validate import DOMAIN_CHECKS

if TYPE_CHECKING:
    from pumpl_assets.core.evaluate import RateComparison

MODEL_DECIDED_SERVED = tuple(c for c in DOMAIN_CHECKS if c not in GUARANTEED_CHECKS)


@dataclass
class Gate:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _get(summary: Mapping[str, float], key: str, default: float = float("nan")) -> float:
    v = summary.get(key, default)
    return float(default if v is None else v)


def model_decided_mean(summary: Mapping[str, float], model: str) -> float:
    """Mean served pass rate over the checks the served grammar does not guarantee, on the model's own
    answers before the served post-step (``decided.<check>``; older summaries: the plain rates).
    NaN if absent."""
    vals = [
        summary.get(f"{model}.served.decided.{c}", summary.get(f"{model}.served.{c}"))
        for c in MODEL_DECIDED_SERVED
    ]
    if any(v is None for v in vals):
        return float("nan")
    return sum(float(v) for v in vals if v is not None) / len(vals)


def served_adherence_threshold(g: GateThresholds) -> tuple[float, bool]:
    """(threshold in force, provisional?) — a partition may carry a measured provisional figure
    beside the 90% goal (catalogue.py says which and why); it never applies silently."""
    if g.provisional_served_adherence is not None:
        return g.provisional_served_adherence, True
    return g.min_served_adherence, False


def eval_gates(
    summary: Mapping[str, float],
    g: GateThresholds,
    champion: Mapping[str, float] | None,
    champion_version: str | None = None,
) -> list[Gate]:
    """The eval_report gates over an :func:`evaluate.evaluate_models` summary.

    * ``schema_valid`` — the fine-tuned model, unconstrained, writes schema-valid plans (≥ threshold);
    * ``served_adherence`` — every check at once, served configuration (≥ 90% goal, or the partition's
      provisional figure, reported as such);
    * ``served_safety`` — no contraindicated exercise in any served plan (100%);
    * ``better_than_base`` — on the same rows, the adapter beats the base on the checks the served
      configuration leaves to the model (and on test loss);
    * ``not_worse_than_champion`` — served adherence and safety no worse than the champion's
      (within tolerance); the first passing model becomes champion.
    """
    sv = _get(summary, "adapter.unconstrained.schema_valid", 0.0)
    sv_thr = g.provisional_schema_valid if g.provisional_schema_valid is not None else g.min_schema_valid
    adh = _get(summary, "adapter.served.adherence", 0.0)
    unc_adh = _get(summary, "adapter.unconstrained.adherence", 0.0)
    safety = _get(summary, "adapter.served.plan_safety")
    n_plans = _get(summary, "adapter.served.n_plans", 0.0)
    thr, provisional = served_adherence_threshold(g)
    a_model = _get(summary, "adapter.served.model_adherence", 0.0)
    a_checks = model_decided_mean(summary, "adapter")
    b_checks = model_decided_mean(summary, "base")
    a_loss, b_loss = _get(summary, "adapter.test_loss", math.inf), _get(summary, "base.test_loss")
    n_a, n_b = _get(summary, "adapter.n_generated", 0.0), _get(summary, "base.n_generated")
    gates = [
        Gate(
            "schema_valid",
            sv >= sv_thr - 1e-9,
            f"{sv:.1%} schema-valid (adapter, unconstrained); need ≥ {sv_thr:.0%}"
            + (
                f" (PROVISIONAL measured figure; the goal is {g.min_schema_valid:.0%})"
                if g.provisional_schema_valid is not None
                else ""
            ),
            {"schema_valid": sv, "threshold": sv_thr, "provisional": g.provisional_schema_valid is not None},
        ),
        Gate(
            "served_adherence",
            adh >= thr - 1e-9,
            f"{adh:.1%} of served plans pass every check; need ≥ {thr:.0%}"
            + (
                f" (PROVISIONAL measured figure; the goal is {g.min_served_adherence:.0%})"
                if provisional
                else ""
            )
            + f"; model-decided checks {a_model:.1%}; unconstrained adherence {unc_adh:.1%}",
            {
                "served_adherence": adh,
                "threshold": thr,
                "provisional": provisional,
                "goal": g.min_served_adherence,
                "unconstrained_adherence": unc_adh,
            },
        ),
        Gate(
            "served_safety",
            n_plans > 0 and safety >= g.min_served_safety - 1e-9,
            f"{safety:.1%} of the {n_plans:.0f} served plans free of contraindicated exercises; need "
            f"{g.min_served_safety:.0%}"
            if n_plans > 0
            else "no served answer was a plan: safety cannot be judged",
            {"served_safety": safety, "n_plans": n_plans},
        ),
    ]
    if math.isnan(b_checks) or math.isnan(b_loss):
        gates.append(Gate("better_than_base", False, "the base model was not evaluated; cannot compare"))
    elif n_a != n_b:
        gates.append(
            Gate(
                "better_than_base", False, f"adapter on {n_a:.0f} rows, base on {n_b:.0f}: not the same rows"
            )
        )
    else:
        better = a_checks > b_checks and a_loss < b_loss
        gates.append(
            Gate(
                "better_than_base",
                better,
                f"mean pass rate of the checks the served grammar leaves to the model "
                f"({', '.join(MODEL_DECIDED_SERVED)}; served, same {n_a:.0f} rows): adapter {a_checks:.1%} vs "
                f"base {b_checks:.1%}; test loss {a_loss:.3f} vs {b_loss:.3f}",
                {
                    "adapter_model_checks": a_checks,
                    "base_model_checks": b_checks,
                    "adapter_model_adherence": a_model,
                },
            )
        )
    gates.append(champion_gate(summary, champion, g.champion_tolerance, champion_version))
    return gates


def champion_gate(
    summary: Mapping[str, float],
    champion: Mapping[str, float] | None,
    tolerance: float,
    version: str | None = None,
) -> Gate:
    """Champion/challenger: the challenger may be at most ``tolerance`` worse on served adherence and
    must not be less safe. A champion evaluated under an older standard (no served metrics) is replaced."""
    if champion is None:
        return Gate(
            "not_worse_than_champion", True, "no champion yet: the first passing model becomes champion"
        )
    # Adherence is "every check at once": a champion scored before a check existed (e.g. balance and
    # title, 2026-12-01) passed an easier bar, so its figure is not comparable.
    unscored = [c for c in DOMAIN_CHECKS if f"adapter.served.{c}" not in champion]
    if "adapter.served.adherence" not in champion or unscored:
        return Gate(
            "not_worse_than_champion",
            True,
            f"champion v{version} was scored under an earlier standard"
            + (f" (without {', '.join(unscored)})" if unscored else "")
            + "; not comparable",
        )
    adh, safety = _get(summary, "adapter.served.adherence", 0.0), _get(summary, "adapter.served.safety", 0.0)
    c_adh, c_safety = (
        float(champion["adapter.served.adherence"]),
        float(champion.get("adapter.served.safety", 0.0)),
    )
    ok = adh >= c_adh - tolerance and safety >= c_safety
    return Gate(
        "not_worse_than_champion",
        ok,
        f"challenger served adherence {adh:.3f}, safety {safety:.3f} vs champion v{version} {c_adh:.3f}, {c_safety:.3f} "
        f"(tolerance {tolerance:.2f})",
    )


def awq_gates(size_ratio: float, max_ratio: float, drop: float, max_drop: float, n: int, regressions: int, improvements: int,
              reference_rate: float, candidate_rate: float) -> list[Gate]:  # fmt: skip
    """AWQ: artifact size against the merged model, schema-valid drop on the same rows."""
    return [
        Gate("size_ratio", size_ratio <= max_ratio, f"AWQ / merged size = {size_ratio:.3f} (≤ {max_ratio})",
             {"size_ratio": size_ratio}),
        Gate(
            "schema_valid_drop",
            drop <= max_drop + 1e-9,
            f"merged {reference_rate:.1%} → awq {candidate_rate:.1%} on the same {n} test rows (drop {drop * 100:.1f} "
            f"points, {regressions} row(s) lost, {improvements} gained; allowed {max_drop * 100:.1f}; one row = "
            f"{100 / max(n, 1):.1f})" + (" (PROVISIONAL: the goal is 2 points)" if max_drop > 0.02 + 1e-9 else ""),
            {"merged_schema_valid": reference_rate, "awq_schema_valid": candidate_rate, "n_examples": n,
             "regressions": regressions},
        ),
    ]  # fmt: skip


def gguf_gates(
    size_ratios: Mapping[str, float],
    max_ratio: float,
    comparisons: Mapping[str, Mapping[str, RateComparison]],
    max_drop: float,
) -> list[Gate]:
    """GGUF: per exported quant, size against the merged model (``size_ratio``) and, on the same served
    rows, the drop in served adherence (``served_adherence_drop``) and in served schema validity
    (``schema_valid_drop``). ``comparisons``: quant -> {"adherent" | "schema_valid": comparison}.
    One gate per measure; each fails on its worst quant and lists every quant."""
    if not size_ratios or set(comparisons) != set(size_ratios):
        raise ValueError(f"gguf_gates needs the same quants for sizes and comparisons, got "
                         f"{sorted(size_ratios)} and {sorted(comparisons)}")  # fmt: skip
    size_ok = all(r <= max_ratio for r in size_ratios.values())
    gates = [
        Gate("size_ratio", size_ok,
             "GGUF / merged size: " + ", ".join(f"{q} {r:.3f}" for q, r in size_ratios.items()) + f" (each ≤ {max_ratio})",
             {f"size_ratio_{q}": float(r) for q, r in size_ratios.items()}),
    ]  # fmt: skip
    for gate_name, column, label in (
        ("served_adherence_drop", "adherent", "served adherence"),
        ("schema_valid_drop", "schema_valid", "served schema-valid"),
    ):
        parts, meta, ok = [], {}, True
        for q, by_col in comparisons.items():
            c = by_col[column]
            ok = ok and c.drop <= max_drop + 1e-9
            parts.append(f"{q} {c.candidate_rate:.1%} (drop {c.drop * 100:.1f} pts, {c.regressions} lost, "
                         f"{c.improvements} gained)")  # fmt: skip
            meta[f"{q}_{column}"] = c.candidate_rate
            meta[f"{q}_drop"] = c.drop
            meta["merged_" + column] = c.reference_rate
            meta["n_examples"] = c.n
        n = next(iter(comparisons.values()))[column].n
        ref = next(iter(comparisons.values()))[column].reference_rate
        gates.append(Gate(
            gate_name, ok,
            f"{label} on the same {n} test rows: merged {ref:.1%} → " + "; ".join(parts)
            + f" (allowed drop {max_drop * 100:.1f}; one row = {100 / max(n, 1):.1f})",
            meta,
        ))  # fmt: skip
    return gates


def split_proportion_gate(
    shares: Mapping[str, float],
    n: int,
    tolerance: float,
    min_rows: int,
    target: Mapping[str, float] | None = None,
) -> Gate:
    """Split shares against 80/10/10. A stable hash assigns each request independently, so each share
    is binomial: the allowed deviation is max(``tolerance``, 3σ) with σ = sqrt(p(1-p)/n). Beyond 3σ the
    hash or the bucketing is broken; a fixed ±2 points at n ≈ 600 would also fail ~1 in 20 healthy
    datasets (σ of the 10% shares is 1.2 points there)."""
    target = target or {"train": 0.8, "val": 0.1, "test": 0.1}
    if n < min_rows:
        return Gate("proportions", True, f"n={n}: the gate applies from n ≥ {min_rows}", {"n": n})
    worst_name, worst_excess, detail = "", -1.0, []
    for k, p in target.items():
        allowed = max(tolerance, 3 * math.sqrt(p * (1 - p) / n))
        dev = abs(shares.get(k, 0.0) - p)
        detail.append(f"{k} {shares.get(k, 0.0):.3f} (±{allowed:.3f})")
        if dev - allowed > worst_excess:
            worst_name, worst_excess = k, dev - allowed
    return Gate(
        "proportions",
        worst_excess <= 1e-12,
        f"n={n}: " + ", ".join(detail) + ("" if worst_excess <= 1e-12 else f"; {worst_name} out of range"),
        {"n": n, **{f"share_{k}": float(v) for k, v in shares.items()}},
    )
