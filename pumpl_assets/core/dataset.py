"""The ``merged`` and ``split`` data layers: dedup, stable splits, chat examples, token budgets.

Assumptions: inputs are already validated (:func:`pumpl_assets.core.validate.validate_rows`), so
``request_json`` parses as a :class:`RequestSpec` and ``plan_json`` as a plan. Functions still cope
with text that does not parse (they fall back to whitespace/case-folded text), so a bad row never
crashes a merge or a split.

Splitting is by a stable hash of the *canonical request* (:func:`request_key`: the RequestSpec's
JSON with equipment and limitations sorted, so the same request written differently hashes the
same): ``int(sha256(key)[:16], 16) % 10000`` is the row's bucket, and buckets below
``10000·f_train`` are train, below ``10000·(f_train + f_val)`` are val, the rest test. Consequences:

* adding data never moves an old example (its bucket depends on its own request only);
* all examples sharing a request land in the same split (no request leakage by construction);
* proportions follow the fractions only in expectation. With few distinct requests they deviate
  (with 20 requests, val/test may even be empty): the downstream gate checks proportions within
  ±2 points only when n ≥ 200, and :func:`split_stats` reports ``empty_splits``. Rebalancing tiny
  data would break stability (an example could move from train into test when data is added), so
  it is deliberately not done.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl

from pumpl_assets.core import artifacts as A
from pumpl_assets.core import prompts, settings
from pumpl_assets.core.exercises import normalize_name
from pumpl_assets.core.io import sha256_text, write_jsonl_atomic, write_parquet_atomic
from pumpl_assets.core.request_text import parse_request
from pumpl_assets.core.schemas import ChatMessage, RequestSpec, TrainingExample

SPLITS = ("train", "val", "test")
N_BUCKETS = 10_000
EXAMPLE_ID_LEN = 16
_WS = re.compile(r"\s+")


def _fold(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def request_key(request_json: str) -> str:
    """Canonical request string: RequestSpec JSON, keys sorted, equipment/limitations sorted.

    Falls back to the whitespace/case-folded text when ``request_json`` is not a valid request.
    """
    try:
        req = RequestSpec.model_validate_json(request_json)
    except ValueError:
        return _fold(request_json)
    d = req.model_dump(mode="json")
    d["equipment"] = sorted(d["equipment"])
    d["limitations"] = sorted(d["limitations"])
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def request_hash(request_json: str) -> str:
    """sha256 hex of :func:`request_key` (the split and leakage key)."""
    return sha256_text(request_key(request_json))


def _norm_value(key: str | None, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _norm_value(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm_value(None, v) for v in value]
    if isinstance(value, str):
        return normalize_name(value) if key == "name" else _fold(value)
    return value


def normalized_plan(plan_json: str) -> str:
    """Plan with every string whitespace/case-folded and exercise names normalized, keys sorted."""
    try:
        obj = json.loads(plan_json)
    except (json.JSONDecodeError, TypeError):
        return _fold(plan_json)
    return json.dumps(_norm_value(None, obj), sort_keys=True, separators=(",", ":"))


def normalized_key(request_json: str, plan_json: str) -> str:
    return request_key(request_json) + "\n" + normalized_plan(plan_json)


def example_id(request_json: str, plan_json: str) -> str:
    """Stable id: first 16 hex of sha256 of the normalized (request, plan) pair."""
    return sha256_text(normalized_key(request_json, plan_json))[:EXAMPLE_ID_LEN]


def _prepare(df: pl.DataFrame, default_source: str, what: str) -> pl.DataFrame:
    if df.width == 0:
        df = pl.DataFrame(schema={"request_json": pl.String, "plan_json": pl.String, "source": pl.String})
    missing = {"request_json", "plan_json"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{what} is missing columns {sorted(missing)} (needs request_json, plan_json, source)"
        )
    if "source" not in df.columns:
        df = df.with_columns(pl.lit(default_source, dtype=pl.String).alias("source"))
    return df


def merge_examples(raw_pairs: pl.DataFrame, distilled: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Union of validated raw pairs and distilled examples, deduplicated; raw pairs win.

    Two passes, each keeping the first occurrence (raw rows come first, in input order):
    exact (same ``request_json`` and ``plan_json`` strings), then normalized
    (:func:`normalized_key`: canonical request + plan with strings case/whitespace-folded and
    exercise names normalized). Duplicates inside one input count too.

    Returns the merged frame (all input columns, diagonal union, plus ``example_id``) and counts
    ``in_raw``, ``in_distilled``, ``exact_dupes``, ``normalized_dupes``, ``out``, ``out_raw``,
    ``out_distilled``.
    """
    raw = _prepare(raw_pairs, "raw", "raw_pairs")
    dist = _prepare(distilled, "distilled", "distilled")
    both = pl.concat(
        [
            raw.with_columns(pl.lit(0, dtype=pl.Int8).alias("_origin")),
            dist.with_columns(pl.lit(1, dtype=pl.Int8).alias("_origin")),
        ],
        how="diagonal_relaxed",
    )
    n_in = both.height
    exact = both.unique(subset=["request_json", "plan_json"], keep="first", maintain_order=True)
    keys = [
        normalized_key(r, p)
        for r, p in zip(exact.get_column("request_json"), exact.get_column("plan_json"), strict=True)
    ]
    exact = exact.with_columns(pl.Series("_norm", keys, dtype=pl.String))
    merged = exact.unique(subset=["_norm"], keep="first", maintain_order=True)
    ids = [sha256_text(k)[:EXAMPLE_ID_LEN] for k in merged.get_column("_norm").to_list()]
    merged = merged.drop("_norm").with_columns(pl.Series("example_id", ids, dtype=pl.String))
    counts = {
        "in_raw": raw.height,
        "in_distilled": dist.height,
        "exact_dupes": n_in - exact.height,
        "normalized_dupes": exact.height - merged.height,
        "out": merged.height,
        "out_raw": merged.filter(pl.col("_origin") == 0).height,
        "out_distilled": merged.filter(pl.col("_origin") == 1).height,
    }
    return merged.drop("_origin"), counts


def split_examples(df: pl.DataFrame, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> pl.DataFrame:
    """Add ``request_hash``, ``bucket`` (0..9999) and ``split`` (train/val/test); see the module doc."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if "request_json" not in df.columns:
        raise ValueError("split_examples needs a request_json column")
    train_cut = round(fractions[0] * N_BUCKETS)
    val_cut = round((fractions[0] + fractions[1]) * N_BUCKETS)
    hashes = [request_hash(r) for r in df.get_column("request_json").to_list()]
    buckets = [int(h[:16], 16) % N_BUCKETS for h in hashes]
    splits = ["train" if b < train_cut else "val" if b < val_cut else "test" for b in buckets]
    return df.with_columns(
        pl.Series("request_hash", hashes, dtype=pl.String),
        pl.Series("bucket", buckets, dtype=pl.Int32),
        pl.Series("split", splits, dtype=pl.String),
    )


def _leaks(keys: list[str], splits: list[str]) -> int:
    seen: dict[str, set[str]] = {}
    for k, s in zip(keys, splits, strict=True):
        seen.setdefault(k, set()).add(s)
    return sum(1 for v in seen.values() if len(v) > 1)


def split_stats(df: pl.DataFrame) -> dict[str, Any]:
    """Counts and proportions per split, and leakage.

    ``request_leakage``: request hashes present in more than one split (0 by construction; a
    non-zero value means the frame was split by something else). ``plan_leakage``: normalized
    plans present in more than one split (legitimate when two requests get the same plan; reported
    for the gate to judge). ``empty_splits``: splits with no rows.
    """
    if "split" not in df.columns:
        raise ValueError("split_stats needs a split column (run split_examples first)")
    n = df.height
    splits = df.get_column("split").to_list()
    counts = {s: sum(1 for x in splits if x == s) for s in SPLITS}
    unknown = n - sum(counts.values())
    if unknown:
        raise ValueError(f"{unknown} rows have a split outside {SPLITS}")
    reqs = (
        df.get_column("request_hash").to_list()
        if "request_hash" in df.columns
        else [request_hash(r) for r in df.get_column("request_json").to_list()]
    )
    plans = [normalized_plan(p) for p in df.get_column("plan_json").to_list()]
    return {
        "n": n,
        "counts": counts,
        "proportions": {s: (counts[s] / n if n else 0.0) for s in SPLITS},
        "n_requests": len(set(reqs)),
        "request_leakage": _leaks(reqs, splits),
        "plan_leakage": _leaks(plans, splits),
        "empty_splits": [s for s in SPLITS if counts[s] == 0],
    }


def _resolve_system(system_prompt: str | None) -> str:
    # Same rule as prompts.render_prompt: None means the configured default, "" means none.
    return settings.system_prompt() if system_prompt is None else system_prompt


def understood_request(row: dict[str, Any]) -> RequestSpec:
    """The request the model is told for a row: its free-text ``request_text`` read by the serving
    parser (train and serve share the parser), or the request itself when the row has no text."""
    text = row.get("request_text")
    if isinstance(text, str) and text.strip():
        return parse_request(text).spec
    return RequestSpec.model_validate_json(row["request_json"])


def to_training_examples(df: pl.DataFrame, system_prompt: str | None) -> list[TrainingExample]:
    """Chat examples ``[system?, user=request_to_prompt(understood request), assistant=plan_json]``.

    ``system_prompt=None`` uses the configured default (``PUMPL_SYSTEM_PROMPT``), exactly as
    :func:`prompts.render_prompt` does at serving time; ``""`` omits the system message.
    """
    system = _resolve_system(system_prompt)
    has_source = "source" in df.columns
    out = []
    for row in df.iter_rows(named=True):
        req = RequestSpec.model_validate_json(row["request_json"])
        msgs = [ChatMessage(role="system", content=system)] if system else []
        msgs += [
            ChatMessage(role="user", content=prompts.request_to_prompt(understood_request(row))),
            ChatMessage(role="assistant", content=row["plan_json"]),
        ]
        out.append(
            TrainingExample(
                messages=msgs, request=req, source=(row["source"] if has_source else None) or "unknown"
            )
        )
    return out


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def render_for_model(
    df: pl.DataFrame,
    tokenizer: Any,
    style: str,
    max_seq_len: int,
    system_prompt: str | None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Render every example as the model sees it and measure its tokens.

    Adds ``understood_json`` (the row's free-text ``request_text`` read by the serving parser, see
    :func:`understood_request`) and ``understood_matches`` (it equals ``request_json``),
    ``prompt_text``, ``full_text`` (:func:`prompts.render_example`), ``n_prompt_tokens``,
    ``n_tokens``, ``too_long`` (``n_tokens > max_seq_len``) and ``prompt_token_prefix`` (the
    prompt's tokens are a prefix of the full text's tokens, so masking the loss by
    ``n_prompt_tokens`` is exact). Texts are tokenized without adding special tokens: the
    rendered text already carries them. Adds ``example_id`` if absent.

    Report: ``n``, ``style``, ``max_seq_len``, ``max_tokens``, ``mean_tokens``,
    ``max_prompt_tokens``, ``too_long``, ``too_long_ids``, ``prefix_mismatch``, ``understood_mismatch``.
    """
    if "example_id" not in df.columns:
        df = df.with_columns(
            pl.Series(
                "example_id",
                [
                    example_id(r, p)
                    for r, p in zip(df.get_column("request_json"), df.get_column("plan_json"), strict=True)
                ],
                dtype=pl.String,
            )
        )
    system = _resolve_system(system_prompt)
    prompt_texts: list[str] = []
    full_texts: list[str] = []
    understood: list[str] = []
    matches: list[bool] = []
    for row in df.iter_rows(named=True):
        seen = understood_request(row)
        understood.append(seen.key())
        matches.append(seen == RequestSpec.model_validate_json(row["request_json"]))
        prompt, full = prompts.render_example(
            tokenizer, prompts.request_to_prompt(seen), row["plan_json"], system=system, style=style
        )
        prompt_texts.append(prompt)
        full_texts.append(full)
    p_ids = _token_ids(tokenizer, prompt_texts)
    f_ids = _token_ids(tokenizer, full_texts)
    n_prompt = [len(x) for x in p_ids]
    n_full = [len(x) for x in f_ids]
    prefix = [f[: len(p)] == p for p, f in zip(p_ids, f_ids, strict=True)]
    too_long = [n > max_seq_len for n in n_full]
    out = df.with_columns(
        pl.Series("understood_json", understood, dtype=pl.String),
        pl.Series("understood_matches", matches, dtype=pl.Boolean),
        pl.Series("prompt_text", prompt_texts, dtype=pl.String),
        pl.Series("full_text", full_texts, dtype=pl.String),
        pl.Series("n_prompt_tokens", n_prompt, dtype=pl.Int64),
        pl.Series("n_tokens", n_full, dtype=pl.Int64),
        pl.Series("too_long", too_long, dtype=pl.Boolean),
        pl.Series("prompt_token_prefix", prefix, dtype=pl.Boolean),
    )
    ids = out.get_column("example_id").to_list()
    report: dict[str, Any] = {
        "n": out.height,
        "style": style,
        "max_seq_len": max_seq_len,
        "max_tokens": max(n_full, default=0),
        "mean_tokens": (sum(n_full) / len(n_full)) if n_full else 0.0,
        "max_prompt_tokens": max(n_prompt, default=0),
        "too_long": sum(too_long),
        "too_long_ids": [i for i, t in zip(ids, too_long, strict=True) if t],
        "prefix_mismatch": sum(1 for x in prefix if not x),
        "understood_mismatch": sum(1 for x in matches if not x),
    }
    return out, report


def publish_split(split_dir: Path | str, partition: str, store: Any = None) -> dict[str, str]:
    """Publish the split asset's files (``{train,val,test}.parquet`` + ``gates.json``) to the store.

    What a training worker on another host reads (:mod:`pumpl_assets.core.training.run`). The local
    folder stays as it is (other assets read it). ``{}`` on the default local root, where the store's
    folder is ``split_dir`` itself; else ``{name: uri}`` (see :func:`artifacts.publish_files`).
    """
    names = [A.split_file(s) for s in SPLITS] + [A.FILE_GATES]
    return A.publish_files(split_dir, partition, A.ASSET_SPLIT, names, store)


def write_split_files(df: pl.DataFrame, out_dir: Path | str) -> dict[str, Path]:
    """Write ``{train,val,test}.jsonl`` and ``{train,val,test}.parquet`` (each atomically).

    Every split's files are written even when the split is empty. Returns paths keyed
    ``train``, ``val``, ``test`` (JSONL) and ``train_parquet``, ``val_parquet``, ``test_parquet``.
    """
    if "split" not in df.columns:
        raise ValueError("write_split_files needs a split column (run split_examples first)")
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for s in SPLITS:
        part = df.filter(pl.col("split") == s)
        paths[s] = write_jsonl_atomic(out_dir / A.split_file(s, "jsonl"), part.to_dicts())
        paths[f"{s}_parquet"] = write_parquet_atomic(out_dir / A.split_file(s), part)
    return paths
