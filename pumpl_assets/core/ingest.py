"""Raw-data ingestion: every raw file into normalized tables, bad rows into quarantine.

What this module accepts (see ``pumpl_assets/data/raw/README.md`` for the user-facing version):

* Formats by extension: ``.csv``; ``.jsonl``/``.ndjson``; ``.json``; ``.parquet``/``.pq``;
  Arrow IPC ``.arrow``/``.feather``/``.ipc``. Any other extension is quarantined as one
  file-level row (it is never silently ignored).
* Row kinds: a row with ``name`` + ``level`` is an *exercise* (free-exercise-db fields:
  ``equipment``, ``category``, ``mechanic``, ``force``, ``primaryMuscles`` or
  ``primary_muscles``; extra fields such as ``instructions`` are ignored); a row with
  ``request`` + ``plan`` is a *pair* (each an object or a JSON string). A JSON file is a
  list of rows, an object ``{"exercises": [...], "pairs": [...]}`` (either key), or one
  bare row object.
* Text encoding: UTF-8 (a BOM is allowed), or UTF-16/UTF-32 *with* a BOM (unambiguous).
  Anything else is quarantined with the offending byte and offset: Latin-1 and friends
  decode any byte string, so guessing would silently corrupt names.

Guarantees:

* For every file and overall, ``rows_in == accepted + quarantined``. A file that cannot be
  read at all (missing, empty, binary, bad encoding, unparseable JSON, over the size cap,
  unknown extension, no rows) counts as one row in and one quarantined with ``row_ref="file"``.
* One bad file never fails the run nor hides good ones; an unexpected error while checking
  one row quarantines that row only.
* Output order is deterministic: files in the order given, rows in file order. Duplicate
  exercise names (compared with :func:`exercises.normalize_name`) keep the first one seen;
  later ones are quarantined with a reason naming the first file and row.
* Files over :data:`MAX_FILE_BYTES` are rejected from ``stat`` alone, never read whole.
* Row refs: ``line N`` (JSONL physical line, 1-based), ``row N`` (CSV data row, 1-based,
  header not counted; ``line N`` if the CSV had to be re-read line by line after a quoting
  error), ``item N`` / ``exercises item N`` / ``pairs item N`` (JSON list position, 1-based),
  ``row N`` (Parquet/Arrow row, 1-based), ``file`` (file-level problem).

Schema and domain checks of plans (duration, catalogue names) are *not* done here: that is
the validation step's job. Here a plan only has to be a JSON object.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from pumpl_assets.core.exercises import EXERCISE_COLUMNS, normalize_name, tag_columns
from pumpl_assets.core.io import sha256_file, write_parquet_atomic
from pumpl_assets.core.schemas import EQUIPMENT, LEVELS, Muscle, RequestSpec

MAX_FILE_BYTES = 200 * 1024 * 1024  # per-file cap; bigger files are rejected unread
MAX_FIELD_CHARS = 1024 * 1024  # a single field above this quarantines its row
MAX_PAYLOAD_CHARS = 2048  # quarantine payloads are truncated to this

CSV_EXTS = {".csv"}
JSONL_EXTS = {".jsonl", ".ndjson"}
JSON_EXTS = {".json"}
PARQUET_EXTS = {".parquet", ".pq"}
ARROW_EXTS = {".arrow", ".feather", ".ipc"}
SUPPORTED_EXTS = CSV_EXTS | JSONL_EXTS | JSON_EXTS | PARQUET_EXTS | ARROW_EXTS

MUSCLES: frozenset[str] = frozenset(Muscle.__args__)  # type: ignore[attr-defined]

EXERCISE_TABLE_SCHEMA: dict[str, Any] = {**EXERCISE_COLUMNS, "source_file": pl.String}
PAIR_TABLE_SCHEMA: dict[str, Any] = {
    "request_json": pl.String,
    "plan_json": pl.String,
    "source_file": pl.String,
    "row_ref": pl.String,
}
QUARANTINE_SCHEMA: dict[str, Any] = {
    "source_file": pl.String,
    "row_ref": pl.String,
    "reason": pl.String,
    "payload": pl.String,
}
FILES_SCHEMA: dict[str, Any] = {
    "source_file": pl.String,
    "format": pl.String,
    "rows_in": pl.Int64,
    "accepted": pl.Int64,
    "quarantined": pl.Int64,
    "sha256": pl.String,
}

_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", ".swx", ".bak", "~")
_DOC_NAMES = ("readme", "license", "licence", "changelog")


@dataclass
class IngestResult:
    """Normalized raw data.

    * ``exercises``: :data:`exercises.EXERCISE_COLUMNS` + ``source_file``.
    * ``pairs``: ``request_json`` (canonical :meth:`RequestSpec.key`), ``plan_json`` (the plan's
      JSON text as given, or compact JSON of a plan object), ``source_file``, ``row_ref``.
    * ``quarantine``: ``source_file``, ``row_ref``, ``reason``, ``payload`` (≤ 2 KB).
    * ``files``: one row per file: ``source_file``, ``format``, ``rows_in``, ``accepted``,
      ``quarantined``, ``sha256`` (null when the file could not be opened).
    """

    exercises: pl.DataFrame
    pairs: pl.DataFrame
    quarantine: pl.DataFrame
    files: pl.DataFrame

    def summary(self) -> dict[str, int]:
        return {
            "files": self.files.height,
            "rows_in": int(self.files["rows_in"].sum() or 0),
            "exercises": self.exercises.height,
            "pairs": self.pairs.height,
            "quarantined": self.quarantine.height,
        }


class FileRejected(Exception):
    """The whole file is unusable; the message is the quarantine reason."""


# --------------------------------------------------------------------------- discovery


def _skip_name(name: str) -> bool:
    low = name.lower()
    if name.startswith((".", "~", "#")) or low.endswith(_TEMP_SUFFIXES):
        return True
    if low.endswith(".md") or low.split(".")[0] in _DOC_NAMES:
        return True
    if low == "schema.json" or low.endswith(".schema.json"):
        return True  # a JSON Schema describing the data, not data
    return low in {"thumbs.db", "desktop.ini"} or name == "__pycache__"


def discover_raw_files(dirs: list[Path]) -> list[Path]:
    """Raw files under ``dirs`` (recursively), ready for :func:`ingest_raw`.

    Order: the directories in the order given, and within each directory files sorted by
    their relative POSIX path — so with ``[shipped, user]`` the shipped rows win duplicate
    names. A path in ``dirs`` that is a file is taken as is; a missing directory yields
    nothing. Skipped: hidden files and folders (``.x``, including atomic-write temp dirs),
    editor/download temp files (``~x``, ``#x``, ``*.tmp``, ``*.part``, ``*.swp``, ``*~`` ...),
    documentation (``*.md``, ``README*``, ``LICENSE*``, ``CHANGELOG*``, ``schema.json``,
    ``*.schema.json``). Files with other
    unknown extensions are *kept*, so ingestion quarantines them visibly. The same file
    reached twice (by two dirs) is listed once.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if d.is_file():
            candidates = [d]
        elif d.is_dir():
            candidates = []
            for root, subdirs, files in os.walk(d):
                subdirs[:] = sorted(s for s in subdirs if not _skip_name(s))
                candidates.extend(Path(root) / f for f in files if not _skip_name(f))
            candidates.sort(key=lambda p: p.relative_to(d).as_posix())
        else:
            continue
        for p in candidates:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


# --------------------------------------------------------------------------- helpers


def _truncate(text: str, limit: int = MAX_PAYLOAD_CHARS) -> str:
    if len(text) <= limit:
        return text
    marker = f"...[truncated, {len(text)} chars]"
    return text[: limit - len(marker)] + marker


def _payload(obj: Any) -> str:
    if isinstance(obj, str):
        return _truncate(obj)
    try:
        return _truncate(json.dumps(obj, ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return _truncate(repr(obj))


def _format_of(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in CSV_EXTS:
        return "csv"
    if ext in JSONL_EXTS:
        return "jsonl"
    if ext in JSON_EXTS:
        return "json"
    if ext in PARQUET_EXTS:
        return "parquet"
    if ext in ARROW_EXTS:
        return "arrow"
    return "unknown"


def _decode(data: bytes) -> str:
    """Bytes → text: UTF-8 (BOM optional) or BOM-marked UTF-16/32; otherwise :class:`FileRejected`."""
    if not data.strip():
        raise FileRejected("empty file (no content)")
    boms = (
        (b"\xff\xfe\x00\x00", "utf-32-le"),
        (b"\x00\x00\xfe\xff", "utf-32-be"),
        (b"\xff\xfe", "utf-16-le"),
        (b"\xfe\xff", "utf-16-be"),
    )
    for bom, enc in boms:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(enc)
            except UnicodeDecodeError as e:
                raise FileRejected(f"starts with a {enc} byte-order mark but is not valid {enc}: {e}") from e
    nul = data.find(b"\x00")
    if nul >= 0:
        sample = data[:4096]
        utf16_like = sample[1::2].count(0) > len(sample) // 4 or sample[0::2].count(0) > len(sample) // 4
        hint = " (looks like UTF-16 without a byte-order mark; re-save as UTF-8)" if utf16_like else ""
        raise FileRejected(f"binary content, not text: NUL byte at offset {nul}{hint}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        raise FileRejected(
            f"not valid UTF-8: byte 0x{bad} at offset {e.start} ({e.reason}); "
            "re-save the file as UTF-8 (legacy encodings such as Latin-1 are not guessed)"
        ) from e


def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _oversized_field(rec: dict[str, Any]) -> str | None:
    for k, v in rec.items():
        if isinstance(v, str):
            size = len(v)
        elif isinstance(v, dict | list):
            try:
                size = len(json.dumps(v, ensure_ascii=False, default=str))
            except (TypeError, ValueError):
                size = 0
        else:
            continue
        if size > MAX_FIELD_CHARS:
            return f"field {k!r} is {size:,} chars, over the {MAX_FIELD_CHARS:,}-char field cap"
    return None


# A parsed record: (row_ref, value) where value is a dict, or an error string for rows that
# could not even be parsed (value is then the raw text for the payload).
@dataclass
class _Raw:
    row_ref: str
    value: Any
    error: str | None = None


# --------------------------------------------------------------------------- readers


def _read_jsonl(text: str) -> Iterator[_Raw]:
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            last = all(not rest.strip() for rest in lines[i:])
            hint = " (last line, probably truncated)" if last else ""
            yield _Raw(f"line {i}", line, f"invalid JSON{hint}: {e.msg} at column {e.colno}")
        except RecursionError:
            yield _Raw(f"line {i}", line, "invalid JSON: nested too deeply")
        else:
            yield _Raw(f"line {i}", obj)


def _read_json(text: str) -> Iterator[_Raw]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FileRejected(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise FileRejected("invalid JSON: nested too deeply") from e
    if isinstance(obj, list):
        for i, item in enumerate(obj, 1):
            yield _Raw(f"item {i}", item)
        return
    if isinstance(obj, dict):
        lists = {k: obj[k] for k in ("exercises", "pairs") if k in obj}
        if lists:
            for key, items in lists.items():
                if not isinstance(items, list):
                    raise FileRejected(f"JSON key {key!r} must be a list, got {type(items).__name__}")
            for key, items in lists.items():
                for i, item in enumerate(items, 1):
                    yield _Raw(f"{key} item {i}", item)
            return
        if ("name" in obj and "level" in obj) or ("request" in obj and "plan" in obj):
            yield _Raw("item 1", obj)
            return
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise FileRejected(
            "wrong-shaped JSON: top level is an object without 'exercises'/'pairs' lists and is not "
            f"a single exercise or pair (keys: {keys or 'none'})"
        )
    raise FileRejected(
        f"wrong-shaped JSON: top level is a {type(obj).__name__}; expected a list of rows or "
        "an object {'exercises': [...]} / {'pairs': [...]}"
    )


def _csv_records(text: str) -> list[list[str]]:
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, MAX_FILE_BYTES))
    try:
        return list(csv.reader(io.StringIO(text, newline=""), strict=True))
    finally:
        csv.field_size_limit(limit)


def _rows_from_cells(header: list[str], records: list[tuple[str, list[str], str]]) -> Iterator[_Raw]:
    for ref, cells, raw in records:
        if not any(c.strip() for c in cells):
            continue  # blank record
        if len(cells) != len(header):
            yield _Raw(ref, raw, f"has {len(cells)} fields, header has {len(header)}")
            continue
        yield _Raw(ref, {h: (c if c.strip() else None) for h, c in zip(header, cells, strict=True)})


def _read_csv(text: str) -> Iterator[_Raw]:
    try:
        records = _csv_records(text)
        quoting_error: str | None = None
    except csv.Error as e:
        records = []
        quoting_error = str(e)
    if quoting_error is None:
        records = [r for r in records if r]
        if not records:
            raise FileRejected("empty CSV (no header)")
        header = [h.strip() for h in records[0]]
        _check_header(header)
        rows = [(f"row {i}", cells, ",".join(cells)) for i, cells in enumerate(records[1:], 1)]
        yield from _rows_from_cells(header, rows)
        return
    # Broken quoting somewhere: re-read line by line so one bad line cannot swallow the rest.
    # (A legitimately multi-line quoted field is then split and quarantined, never lost.)
    lines = text.split("\n")
    header_idx = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if header_idx is None:
        raise FileRejected("empty CSV (no header)")
    try:
        header = [h.strip() for h in _csv_records(lines[header_idx])[0]]
    except (csv.Error, IndexError) as e:
        raise FileRejected(f"CSV header is unreadable: {e}") from e
    _check_header(header)
    for n, line in enumerate(lines[header_idx + 1 :], header_idx + 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            parsed = _csv_records(line)
        except csv.Error as e:
            yield _Raw(f"line {n}", line, f"broken CSV quoting: {e} (file-level error was: {quoting_error})")
            continue
        cells = parsed[0] if parsed else []
        yield from _rows_from_cells(header, [(f"line {n}", cells, line)])


def _check_header(header: list[str]) -> None:
    if not any(header):
        raise FileRejected("CSV header is empty")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise FileRejected(f"CSV header repeats column(s): {', '.join(dupes)}")


def _read_table(path: Path, fmt: str) -> Iterator[_Raw]:
    try:
        df = pl.read_parquet(path) if fmt == "parquet" else pl.read_ipc(path)
    except Exception as e:
        kind = "Parquet" if fmt == "parquet" else "Arrow IPC/Feather"
        raise FileRejected(f"not a readable {kind} file: {type(e).__name__}: {str(e)[:300]}") from e
    for i, row in enumerate(df.iter_rows(named=True), 1):
        yield _Raw(f"row {i}", row)


# --------------------------------------------------------------------------- row checks


def _text(v: Any) -> str | None:
    if _is_blank(v):
        return None
    return " ".join(str(v).split())


def _muscles(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            try:
                v = json.loads(s)
            except json.JSONDecodeError as e:
                raise ValueError(f"primaryMuscles looks like JSON but is not: {e.msg}") from e
        else:
            v = s.replace(",", ";").split(";")
    if not isinstance(v, list | tuple):
        raise ValueError(f"primaryMuscles must be a list or ';'-separated text, got {type(v).__name__}")
    out: list[str] = []
    for m in v:
        if _is_blank(m):
            continue
        if not isinstance(m, str):
            raise ValueError(f"muscle {m!r} is not text")
        norm = " ".join(m.lower().split())
        if norm not in MUSCLES:
            raise ValueError(f"muscle {m!r} not in vocabulary ({', '.join(sorted(MUSCLES))})")
        if norm not in out:
            out.append(norm)
    return out


def _exercise_row(rec: dict[str, Any]) -> dict[str, Any]:
    """Normalize one exercise record or raise ValueError naming the problem."""
    raw_name = rec.get("name")
    if raw_name is None:
        raise ValueError("exercise name is empty")
    if not isinstance(raw_name, str):
        raise ValueError(f"name must be text, got {type(raw_name).__name__}")
    name = _text(raw_name)
    if not name or not normalize_name(name):
        raise ValueError("exercise name is empty")
    level = _text(rec.get("level"))
    if level is None or level.lower() not in LEVELS:
        raise ValueError(f"level {rec.get('level')!r} not in {list(LEVELS)}")
    equipment = _text(rec.get("equipment"))
    equipment = "body only" if equipment is None else equipment.lower()
    if equipment not in EQUIPMENT:
        raise ValueError(f"equipment {rec.get('equipment')!r} not in vocabulary {list(EQUIPMENT)}")
    muscles_raw = rec.get("primaryMuscles", rec.get("primary_muscles"))
    out = {
        "name": name,
        "level": level.lower(),
        "equipment": equipment,
        "category": (_text(rec.get("category")) or "").lower() or None,
        "mechanic": (_text(rec.get("mechanic")) or "").lower() or None,
        "force": (_text(rec.get("force")) or "").lower() or None,
        "primary_muscles": _muscles(muscles_raw),
    }
    # Movement-pattern tags: the record's own, else inferred by rules (the rule is recorded).
    out.update(tag_columns({**out, "patterns": rec.get("patterns", rec.get("movement_patterns"))}))
    return out


def _pair_row(rec: dict[str, Any]) -> dict[str, str]:
    """Canonical request JSON + plan JSON text, or ValueError naming the problem."""
    req = rec.get("request")
    if isinstance(req, str):
        try:
            req = json.loads(req)
        except json.JSONDecodeError as e:
            raise ValueError(f"request is not valid JSON: {e.msg} at column {e.colno}") from e
    if not isinstance(req, dict):
        raise ValueError(f"request must be a JSON object, got {type(req).__name__}")
    try:
        spec = RequestSpec.model_validate(req)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise ValueError(f"request is not a valid RequestSpec: {problems}") from e
    plan = rec.get("plan")
    if isinstance(plan, str):
        try:
            parsed = json.loads(plan)
        except json.JSONDecodeError as e:
            raise ValueError(f"plan is not valid JSON: {e.msg} at column {e.colno}") from e
        if not isinstance(parsed, dict):
            raise ValueError(f"plan JSON must be an object, got {type(parsed).__name__}")
        plan_json = plan.strip()
    elif isinstance(plan, dict):
        plan_json = json.dumps(plan, ensure_ascii=False, separators=(",", ":"))
    else:
        raise ValueError(f"plan must be a JSON object or JSON text, got {type(plan).__name__}")
    return {"request_json": spec.key(), "plan_json": plan_json}


def _row_kind(rec: dict[str, Any]) -> str:
    """ "exercise", "pair", "both" or "neither".

    Keys decide; when a table carries both sets of columns (a mixed CSV/Parquet), the
    non-blank values decide.
    """
    ex_keys = "name" in rec and "level" in rec
    pair_keys = "request" in rec and "plan" in rec
    if ex_keys and pair_keys:
        ex_vals = not (_is_blank(rec["name"]) and _is_blank(rec["level"]))
        pair_vals = not (_is_blank(rec["request"]) and _is_blank(rec["plan"]))
        if ex_vals and pair_vals:
            return "both"
        return "pair" if pair_vals else "exercise"
    if pair_keys:
        return "pair"
    return "exercise" if ex_keys else "neither"


# --------------------------------------------------------------------------- driver


@dataclass
class _FileOutcome:
    exercises: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    rows_in: int


def _records(path: Path, fmt: str) -> Iterator[_Raw]:
    if fmt == "unknown":
        raise FileRejected(
            f"unsupported extension {path.suffix or '(none)'!r}; accepted: {', '.join(sorted(SUPPORTED_EXTS))}"
        )
    size = path.stat().st_size
    if size == 0:
        raise FileRejected("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise FileRejected(
            f"file is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB per-file cap; "
            "split it into smaller files"
        )
    if fmt in ("parquet", "arrow"):
        yield from _read_table(path, fmt)
        return
    text = _decode(path.read_bytes())
    if fmt == "jsonl":
        yield from _read_jsonl(text)
    elif fmt == "json":
        yield from _read_json(text)
    else:
        yield from _read_csv(text)


def _preview(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(MAX_PAYLOAD_CHARS)
    except OSError:
        return ""
    return _truncate(head.decode("utf-8", errors="backslashreplace"))


def _ingest_file(path: Path, fmt: str, seen: dict[str, str]) -> _FileOutcome:
    src = str(path)
    try:
        raws = list(_records(path, fmt))
        if not raws:
            raise FileRejected("file contains no rows")
    except FileRejected as e:
        q = {"source_file": src, "row_ref": "file", "reason": str(e), "payload": _preview(path)}
        return _FileOutcome([], [], [q], 1)
    except (OSError, MemoryError, UnicodeError, ValueError, RecursionError) as e:
        reason = f"unreadable file: {type(e).__name__}: {str(e)[:300]}"
        q = {"source_file": src, "row_ref": "file", "reason": reason, "payload": _preview(path)}
        return _FileOutcome([], [], [q], 1)

    ex_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []

    def reject(raw: _Raw, reason: str) -> None:
        quarantine.append(
            {"source_file": src, "row_ref": raw.row_ref, "reason": reason, "payload": _payload(raw.value)}
        )

    for raw in raws:
        if raw.error is not None:
            reject(raw, raw.error)
            continue
        rec = raw.value
        if not isinstance(rec, dict):
            reject(raw, f"row is a {type(rec).__name__}, expected an object")
            continue
        try:
            too_big = _oversized_field(rec)
            if too_big:
                reject(raw, too_big)
                continue
            kind = _row_kind(rec)
            if kind == "both":
                reject(raw, "row has both exercise values (name, level) and pair values (request, plan)")
            elif kind == "pair":
                pair_rows.append({**_pair_row(rec), "source_file": src, "row_ref": raw.row_ref})
            elif kind == "exercise":
                ex = _exercise_row(rec)
                key = normalize_name(ex["name"])
                if key in seen:
                    reject(raw, f"duplicate exercise name {ex['name']!r}: first seen in {seen[key]}")
                    continue
                seen[key] = f"{src} ({raw.row_ref})"
                ex_rows.append({**ex, "source_file": src})
            else:
                keys = ", ".join(sorted(map(str, rec))[:10])
                reject(
                    raw,
                    "row is neither an exercise (needs name + level) nor a pair (needs request + plan); "
                    f"keys: {keys or 'none'}",
                )
        except ValueError as e:
            reject(raw, str(e))
        except Exception as e:  # one odd row never fails the file
            reject(raw, f"unexpected error checking row: {type(e).__name__}: {str(e)[:300]}")
    return _FileOutcome(ex_rows, pair_rows, quarantine, len(raws))


def ingest_raw(paths: list[Path]) -> IngestResult:
    """Read ``paths`` in order into normalized tables (see the module docstring).

    Never raises for bad input: every problem becomes a quarantine row. The same
    resolved path given twice is read once.
    """
    exercises: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    seen_names: dict[str, str] = {}
    seen_paths: set[Path] = set()
    for p in paths:
        path = Path(p)
        try:
            resolved = path.resolve()
        except OSError:
            resolved = path
        if resolved in seen_paths:
            continue
        seen_paths.add(resolved)
        fmt = _format_of(path)
        out = _ingest_file(path, fmt, seen_names)
        try:
            digest: str | None = sha256_file(path) if path.is_file() else None
        except OSError:
            digest = None
        exercises.extend(out.exercises)
        pairs.extend(out.pairs)
        quarantine.extend(out.quarantine)
        files.append(
            {
                "source_file": str(path),
                "format": fmt,
                "rows_in": out.rows_in,
                "accepted": len(out.exercises) + len(out.pairs),
                "quarantined": len(out.quarantine),
                "sha256": digest,
            }
        )
    return IngestResult(
        exercises=pl.DataFrame(exercises, schema=EXERCISE_TABLE_SCHEMA)
        if exercises
        else pl.DataFrame(schema=EXERCISE_TABLE_SCHEMA),
        pairs=pl.DataFrame(pairs, schema=PAIR_TABLE_SCHEMA)
        if pairs
        else pl.DataFrame(schema=PAIR_TABLE_SCHEMA),
        quarantine=pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA)
        if quarantine
        else pl.DataFrame(schema=QUARANTINE_SCHEMA),
        files=pl.DataFrame(files, schema=FILES_SCHEMA) if files else pl.DataFrame(schema=FILES_SCHEMA),
    )


def write_ingest_outputs(result: IngestResult, out_dir: Path) -> dict[str, Path]:
    """Write the four tables as ``<out_dir>/{exercises,pairs,quarantine,files}.parquet``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "exercises": result.exercises,
        "pairs": result.pairs,
        "quarantine": result.quarantine,
        "files": result.files,
    }
    return {name: write_parquet_atomic(out_dir / f"{name}.parquet", df) for name, df in tables.items()}
