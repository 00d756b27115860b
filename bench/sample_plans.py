"""Ask the served champion for three plans a coach would check, and score each with every check.

``python -m bench.sample_plans --partition smollm2-135m`` starts ``pumpl-serve`` on the registry's
champion (127.0.0.1, a free port), sends over HTTP:

1. a beginner strength request in the canonical layout,
2. the product's own example, "Create a 30-minute HIIT workout",
3. a knee-limited request in plain language,

then prints, for each, the request the server understood, the plan JSON and the verdict of every check of
:mod:`pumpl_assets.core.validate` (against the request the person meant). ``--out`` writes the same as
JSON. Exit 0 even when a plan fails a check (this reports; the gates live in the graph).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "Goal: strength. Time: 45 min. Level: beginner. Equipment: body only, dumbbell. Days/week: 3. "
        "Limitations: none.",
        {"goal": "strength", "minutes": 45, "level": "beginner", "equipment": ["body only", "dumbbell"],
         "days_per_week": 3},
    ),
    ("Create a 30-minute HIIT workout", {"goal": "fat_loss", "minutes": 30, "level": "beginner",
                                         "equipment": ["body only"], "days_per_week": 3}),
    (
        "I have a bad knee. 40 minutes, 4 days a week, I want to build muscle with dumbbells, intermediate.",
        {"goal": "hypertrophy", "minutes": 40, "level": "intermediate", "equipment": ["body only", "dumbbell"],
         "days_per_week": 4, "limitations": ["knees"]},
    ),
]  # fmt: skip


def score(meant: dict[str, Any], text: str, catalogue: Any) -> dict[str, Any]:
    from pumpl_assets.core.schemas import RequestSpec
    from pumpl_assets.core.validate import DOMAIN_CHECKS, validate_example

    out = validate_example(RequestSpec.model_validate(meant), text, catalogue)
    checks = out.adherence.checks if out.adherence else dict.fromkeys(DOMAIN_CHECKS, False)
    return {
        "stage": out.stage,
        "checks": checks,
        "session_minutes": [round(m, 1) for m in out.adherence.session_minutes] if out.adherence else [],
        "reasons": out.reasons,
    }


def main(argv: list[str] | None = None) -> int:
    from pumpl_assets.core import settings
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_serving.testing import running_server

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--partition", default=settings.base_model_key())
    ap.add_argument("--engine", default="transformers")
    ap.add_argument("--max-tokens", type=int, default=1536)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    catalogue = ExerciseCatalogue.from_parquet(
        settings.artifacts_dir(args.partition, "raw") / "exercises.parquet"
    )
    results = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(
            ["--partition", args.partition, "--engine", args.engine], log_path=Path(tmp) / "serve.log"
        ) as server,
        server.client(timeout=600.0) as client,
    ):
        for prompt, meant in REQUESTS:
            t0 = time.perf_counter()
            r = client.post(
                "/generate", json={"prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}
            )
            r.raise_for_status()
            body = r.json()
            results.append(
                {
                    "prompt": prompt,
                    "understood": body.get("request"),
                    "latency_s": round(time.perf_counter() - t0, 1),
                    # the finished plan the person gets (after the served post-step) and its checks;
                    # the model's own answer is scored beside it
                    "plan": body["plan"] if body.get("plan") else body["text"],
                    "adjustments": body.get("adjustments", []),
                    **score(meant, json.dumps(body["plan"]) if body.get("plan") else body["text"], catalogue),
                    "model_answer_failed": [
                        c for c, ok in score(meant, body["text"], catalogue)["checks"].items() if not ok
                    ],
                }
            )
    for res in results:
        passed = [c for c, ok in res["checks"].items() if ok]
        failed = [c for c, ok in res["checks"].items() if not ok]
        print(f"\n### {res['prompt']}\nunderstood: {json.dumps(res['understood'])}")
        print(f"latency {res['latency_s']} s; session minutes {res['session_minutes']}")
        print(json.dumps(res["plan"], indent=None))
        print(f"checks passed: {', '.join(passed) or '-'}; failed: {', '.join(failed) or 'none'}")
        print(f"post-step: {'; '.join(res['adjustments']) or 'no change'}")
        print(f"the model's own answer failed: {', '.join(res['model_answer_failed']) or 'none'}")
        for reason in res["reasons"]:
            print(f"  - {reason}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
