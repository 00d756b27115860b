"""Raw ingestion: every format, hostile input, the rows_in = accepted + quarantined invariant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pumpl_assets.core import ingest
from pumpl_assets.core.exercises import EXERCISE_COLUMNS, ExerciseCatalogue
from pumpl_assets.core.ingest import (
    IngestResult,
    discover_raw_files,
    ingest_raw,
    write_ingest_outputs,
)
from pumpl_assets.core.io import sha256_file
from pumpl_assets.core.schemas import RequestSpec

REQ = {
    "goal": "strength",
    "minutes": 30,
    "level": "beginner",
    "equipment": ["dumbbell"],
    "days_per_week": 3,
    "limitations": [],
}
PLAN = {
    "title": "Test Plan",
    "total_minutes": 30,
    "days_per_week": 3,
    "session": {
        "warmup": [{"name": "Jog", "sets": 1, "work_s": 60, "rest_s": 0}],
        "main": [{"name": "Squat", "sets": 3, "reps": 10, "rest_s": 60}],
        "cooldown": [{"name": "Stretch", "sets": 1, "work_s": 60, "rest_s": 0}],
    },
}


def ex(name: str, level: str = "beginner", equipment: str | None = "body only", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "level": level,
        "equipment": equipment,
        "category": "strength",
        "mechanic": "compound",
        "force": "push",
        "primaryMuscles": ["quadriceps"],
        "instructions": ["Do it."],
        **kw,
    }


def check_invariant(res: IngestResult) -> None:
    """rows_in = accepted + quarantined per file and overall; tables agree with the file table."""
    files = res.files
    assert (files["rows_in"] == files["accepted"] + files["quarantined"]).all(), files
    accepted = res.exercises.height + res.pairs.height
    assert int(files["accepted"].sum()) == accepted
    assert int(files["quarantined"].sum()) == res.quarantine.height
    assert int(files["rows_in"].sum()) == accepted + res.quarantine.height
    for row in files.iter_rows(named=True):
        src = row["source_file"]
        n_acc = (
            res.exercises.filter(pl.col("source_file") == src).height
            + res.pairs.filter(pl.col("source_file") == src).height
        )
        assert n_acc == row["accepted"], row
        assert res.quarantine.filter(pl.col("source_file") == src).height == row["quarantined"], row
    assert res.exercises.columns == [*EXERCISE_COLUMNS, "source_file"]
    assert res.exercises.schema == pl.Schema(ingest.EXERCISE_TABLE_SCHEMA)
    assert res.exercises.schema["primary_muscles"] == pl.List(pl.String)
    assert list(res.pairs.columns) == ["request_json", "plan_json", "source_file", "row_ref"]
    assert list(res.quarantine.columns) == ["source_file", "row_ref", "reason", "payload"]
    assert (res.quarantine["payload"].str.len_chars() <= ingest.MAX_PAYLOAD_CHARS).all()


def run(*paths: Path) -> IngestResult:
    res = ingest_raw(list(paths))
    check_invariant(res)
    return res


def file_row(res: IngestResult, path: Path) -> dict[str, Any]:
    rows = res.files.filter(pl.col("source_file") == str(path)).to_dicts()
    assert len(rows) == 1
    return rows[0]


def reasons(res: IngestResult) -> list[str]:
    return res.quarantine["reason"].to_list()


# --------------------------------------------------------------------------- discovery


@pytest.mark.unit
def test_discover_skips_hidden_temp_docs_and_keeps_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    (a / ".hidden_dir").mkdir()
    b.mkdir()
    for name in ["z.csv", "m.json", "sub/x.jsonl", "weird.xlsx"]:
        (a / name).write_text("x")
    for name in [".hidden.csv", "~lock.csv", "file.csv.tmp", "dl.part", "old.json~", "README.md", "LICENSE"]:
        (a / name).write_text("x")
    (a / ".hidden_dir" / "inside.csv").write_text("x")
    (a / "schema.json").write_text("{}")
    (b / "a.csv").write_text("x")
    found = discover_raw_files([b, a, tmp_path / "missing", a / "z.csv"])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    # b first (dir order), then a sorted by relative path; a/z.csv listed once; unknown .xlsx kept.
    assert rel == ["b/a.csv", "a/m.json", "a/sub/x.jsonl", "a/weird.xlsx", "a/z.csv"]


# --------------------------------------------------------------------------- formats


@pytest.mark.unit
def test_json_list_of_exercises_normalizes_case_and_null_equipment(tmp_path: Path) -> None:
    p = tmp_path / "ex.json"
    rows = [
        ex("Push-Up", level="Beginner", equipment=None, primaryMuscles=["Chest"]),
        ex("  Goblet   Squat ", level="INTERMEDIATE", equipment="Dumbbell"),
    ]
    p.write_text(json.dumps(rows))
    res = run(p)
    assert res.quarantine.height == 0
    got = res.exercises.to_dicts()
    assert got[0]["name"] == "Push-Up"
    assert got[0]["level"] == "beginner"
    assert got[0]["equipment"] == "body only"
    assert got[0]["primary_muscles"] == ["chest"]
    assert got[1]["name"] == "Goblet Squat"
    assert got[1]["equipment"] == "dumbbell"
    assert file_row(res, p) | {"sha256": None} == {
        "source_file": str(p),
        "format": "json",
        "rows_in": 2,
        "accepted": 2,
        "quarantined": 0,
        "sha256": None,
    }
    assert file_row(res, p)["sha256"] == sha256_file(p)


@pytest.mark.unit
def test_json_object_forms(tmp_path: Path) -> None:
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"exercises": [ex("A1")], "pairs": [{"request": REQ, "plan": PLAN}]}))
    only_pairs = tmp_path / "pairs.json"
    only_pairs.write_text(json.dumps({"pairs": [{"request": json.dumps(REQ), "plan": json.dumps(PLAN)}]}))
    pair_list = tmp_path / "pair_list.json"
    pair_list.write_text(json.dumps([{"request": REQ, "plan": PLAN}]))
    single = tmp_path / "single.json"
    single.write_text(json.dumps(ex("B1")))
    res = run(both, only_pairs, pair_list, single)
    assert res.quarantine.height == 0
    assert res.exercises["name"].to_list() == ["A1", "B1"]
    assert res.pairs["row_ref"].to_list() == ["pairs item 1", "pairs item 1", "item 1"]
    canonical = RequestSpec.model_validate(REQ).key()
    assert set(res.pairs["request_json"]) == {canonical}
    # plan objects become compact JSON; plan strings are kept as given
    assert json.loads(res.pairs["plan_json"][0]) == PLAN
    assert res.pairs["plan_json"][1] == json.dumps(PLAN)


@pytest.mark.unit
def test_csv_exercises_and_pairs(tmp_path: Path) -> None:
    p = tmp_path / "ex.csv"
    p.write_text(
        "name,level,equipment,category,mechanic,force,primaryMuscles\n"
        "Band Row,beginner,bands,strength,compound,pull,middle back;lats\n"
        "Air Squat,beginner,,strength,,,quadriceps\n"
        '"Lunge, Reverse",intermediate,body only,strength,compound,push,"quadriceps; glutes"\n'
        '"Multi\nLine",beginner,body only,strength,,,abdominals\n'
    )
    pairs = tmp_path / "pairs.csv"
    pl.DataFrame({"request": [json.dumps(REQ)], "plan": [json.dumps(PLAN)]}).write_csv(pairs)
    res = run(p, pairs)
    assert res.quarantine.height == 0
    got = res.exercises.to_dicts()
    assert [g["name"] for g in got] == ["Band Row", "Air Squat", "Lunge, Reverse", "Multi Line"]
    assert got[0]["primary_muscles"] == ["middle back", "lats"]
    assert got[1]["equipment"] == "body only"
    assert got[1]["mechanic"] is None
    assert got[2]["primary_muscles"] == ["quadriceps", "glutes"]
    assert res.pairs.height == 1
    assert res.pairs["row_ref"][0] == "row 1"
    assert json.loads(res.pairs["plan_json"][0]) == PLAN


@pytest.mark.unit
def test_jsonl_mixed_rows(tmp_path: Path) -> None:
    p = tmp_path / "mixed.ndjson"
    lines = [json.dumps(ex("Row A")), "", json.dumps({"request": REQ, "plan": PLAN}), json.dumps(ex("Row B"))]
    p.write_text("\n".join(lines) + "\n")
    res = run(p)
    assert res.quarantine.height == 0
    assert res.exercises["name"].to_list() == ["Row A", "Row B"]
    assert res.pairs["row_ref"].to_list() == ["line 3"]
    assert file_row(res, p)["rows_in"] == 3  # blank line is not a row


@pytest.mark.unit
@pytest.mark.parametrize("ext", [".parquet", ".arrow", ".feather", ".ipc"])
def test_parquet_and_arrow(tmp_path: Path, ext: str) -> None:
    df = pl.DataFrame(
        {
            "name": ["Cable Fly", "Bad Level"],
            "level": ["intermediate", "godlike"],
            "equipment": ["cable", "cable"],
            "category": ["strength", "strength"],
            "primaryMuscles": [["chest"], ["chest"]],
        }
    )
    pairs = pl.DataFrame({"request": [REQ], "plan": [json.dumps(PLAN)]})  # request as a struct column
    p, q = tmp_path / f"ex{ext}", tmp_path / f"pairs{ext}"
    if ext == ".parquet":
        df.write_parquet(p)
        pairs.write_parquet(q)
    else:
        df.write_ipc(p)
        pairs.write_ipc(q)
    res = run(p, q)
    assert res.exercises["name"].to_list() == ["Cable Fly"]
    assert res.exercises["primary_muscles"].to_list() == [["chest"]]
    assert res.quarantine["row_ref"].to_list() == ["row 2"]
    assert "level 'godlike'" in reasons(res)[0]
    assert res.pairs["request_json"].to_list() == [RequestSpec.model_validate(REQ).key()]
    assert file_row(res, p)["format"] == ("parquet" if ext == ".parquet" else "arrow")


# --------------------------------------------------------------------------- row-level checks


@pytest.mark.unit
def test_row_level_vocabulary_and_name_checks(tmp_path: Path) -> None:
    p = tmp_path / "ex.json"
    rows: list[Any] = [
        ex("Good One"),
        ex("   "),
        ex("!!!"),
        ex("Bad Level", level="master"),
        ex("Bad Equipment", equipment="trampoline"),
        ex("Bad Muscle", primaryMuscles=["biceps", "soul"]),
        {"name": "No Level"},
        {"foo": 1},
        42,
        {"request": REQ, "plan": PLAN, "name": "X", "level": "beginner"},
    ]
    p.write_text(json.dumps(rows))
    res = run(p)
    assert res.exercises["name"].to_list() == ["Good One"]
    q = dict(zip(res.quarantine["row_ref"], res.quarantine["reason"], strict=True))
    assert "name is empty" in q["item 2"]
    assert "name is empty" in q["item 3"]
    assert "level 'master'" in q["item 4"]
    assert "equipment 'trampoline'" in q["item 5"]
    assert "muscle 'soul'" in q["item 6"]
    assert "neither an exercise" in q["item 7"]
    assert "neither an exercise" in q["item 8"]
    assert "row is a int" in q["item 9"]
    assert "both exercise" in q["item 10"]


@pytest.mark.unit
def test_duplicate_names_first_wins_and_reason_names_first_file(tmp_path: Path) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.jsonl"
    first.write_text(json.dumps([ex("Push-Up", level="beginner"), ex("push up", level="expert")]))
    second.write_text(json.dumps(ex("PUSH UP!", level="intermediate")) + "\n" + json.dumps(ex("Dip")) + "\n")
    res = run(first, second)
    assert res.exercises["name"].to_list() == ["Push-Up", "Dip"]
    assert res.exercises["level"].to_list() == ["beginner", "beginner"]
    assert res.quarantine["row_ref"].to_list() == ["item 2", "line 1"]
    for reason in reasons(res):
        assert "duplicate exercise name" in reason
        assert f"first seen in {first} (item 1)" in reason


@pytest.mark.unit
def test_pair_checks(tmp_path: Path) -> None:
    p = tmp_path / "pairs.jsonl"
    bad_req = {**REQ, "minutes": 5}
    rows = [
        {"request": REQ, "plan": PLAN},
        {"request": bad_req, "plan": PLAN},
        {"request": {**REQ, "extra": 1}, "plan": PLAN},
        {"request": "{not json", "plan": PLAN},
        {"request": REQ, "plan": '{"title": "cut'},
        {"request": REQ, "plan": "[1, 2]"},
        {"request": REQ, "plan": 7},
        {"request": REQ, "plan": json.dumps({"anything": "goes here"})},  # schema is validation's job
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(p)
    assert res.pairs["row_ref"].to_list() == ["line 1", "line 8"]
    q = dict(zip(res.quarantine["row_ref"], res.quarantine["reason"], strict=True))
    assert "not a valid RequestSpec" in q["line 2"] and "minutes" in q["line 2"]
    assert "not a valid RequestSpec" in q["line 3"] and "extra" in q["line 3"]
    assert "request is not valid JSON" in q["line 4"]
    assert "plan is not valid JSON" in q["line 5"]
    assert "must be an object" in q["line 6"]
    assert "plan must be a JSON object or JSON text" in q["line 7"]


# --------------------------------------------------------------------------- hostile input


@pytest.mark.unit
def test_broken_csv_quoting_keeps_good_rows(tmp_path: Path) -> None:
    p = tmp_path / "broken.csv"
    p.write_text(
        "name,level,equipment,category,mechanic,force,primaryMuscles\n"
        "Good A,beginner,body only,strength,,,chest\n"
        '"Bad" quote,beginner,body only,strength,,,chest\n'
        '"Unterminated,beginner,body only,strength,,,chest\n'
        "Good B,beginner,body only,strength,,,chest\n"
        "Too,Few\n"
    )
    res = run(p)
    assert res.exercises["name"].to_list() == ["Good A", "Good B"]
    row = file_row(res, p)
    assert row["rows_in"] == 5
    assert row["quarantined"] == 3
    q = dict(zip(res.quarantine["row_ref"], res.quarantine["reason"], strict=True))
    assert "broken CSV quoting" in q["line 3"]
    assert "broken CSV quoting" in q["line 4"]
    assert "has 2 fields, header has 7" in q["line 6"]


@pytest.mark.unit
def test_wrong_field_count_in_well_quoted_csv(tmp_path: Path) -> None:
    p = tmp_path / "ragged.csv"
    p.write_text("name,level\nA,beginner\nB,beginner,extra\n,beginner\n")
    res = run(p)
    assert res.exercises["name"].to_list() == ["A"]
    assert res.quarantine["row_ref"].to_list() == ["row 2", "row 3"]
    assert "has 3 fields, header has 2" in reasons(res)[0]
    assert "exercise name is empty" in reasons(res)[1]


@pytest.mark.unit
def test_encodings(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("name,level\nCafé Curl,beginner\n".encode("latin-1"))
    utf16 = tmp_path / "utf16.json"
    utf16.write_bytes(json.dumps([ex("Über Row")]).encode("utf-16"))  # with BOM: unambiguous
    bom8 = tmp_path / "bom.csv"
    bom8.write_bytes("name,level\nBOM Squat,beginner\n".encode("utf-8-sig"))
    utf16_nobom = tmp_path / "utf16le.jsonl"
    utf16_nobom.write_bytes(json.dumps(ex("Hidden Row")).encode("utf-16-le"))
    res = run(latin, utf16, bom8, utf16_nobom)
    assert res.exercises["name"].to_list() == ["Über Row", "BOM Squat"]
    assert res.quarantine["row_ref"].to_list() == ["file", "file"]
    assert "UTF-16 without a byte-order mark" in reasons(res)[1]
    assert "not valid UTF-8: byte 0xe9 at offset 14" in reasons(res)[0]
    assert file_row(res, latin) | {"sha256": None} == {
        "source_file": str(latin),
        "format": "csv",
        "rows_in": 1,
        "accepted": 0,
        "quarantined": 1,
        "sha256": None,
    }


@pytest.mark.unit
def test_empty_binary_and_unknown_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n  \n")
    junk_json = tmp_path / "junk.json"
    junk_json.write_bytes(bytes(range(256)) * 4)
    junk_csv = tmp_path / "junk.csv"
    junk_csv.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    junk_parquet = tmp_path / "junk.parquet"
    junk_parquet.write_bytes(b"PAR1 not really")
    unknown = tmp_path / "sheet.xlsx"
    unknown.write_bytes(b"PK\x03\x04")
    header_only = tmp_path / "header.csv"
    header_only.write_text("name,level\n")
    good = tmp_path / "good.json"
    good.write_text(json.dumps([ex("Survivor")]))
    paths = [empty, blank, junk_json, junk_csv, junk_parquet, unknown, header_only, good]
    res = run(*paths)
    assert res.exercises["name"].to_list() == ["Survivor"]  # one bad file never hides good ones
    assert res.quarantine["row_ref"].to_list() == ["file"] * 7
    by_file = dict(zip(res.quarantine["source_file"], res.quarantine["reason"], strict=True))
    assert "empty file" in by_file[str(empty)]
    assert "empty file" in by_file[str(blank)]
    assert "binary content" in by_file[str(junk_json)] or "not valid UTF-8" in by_file[str(junk_json)]
    assert "binary content" in by_file[str(junk_csv)] or "not valid UTF-8" in by_file[str(junk_csv)]
    assert "not a readable Parquet file" in by_file[str(junk_parquet)]
    assert "unsupported extension '.xlsx'" in by_file[str(unknown)]
    assert "no rows" in by_file[str(header_only)]
    assert file_row(res, unknown)["format"] == "unknown"


@pytest.mark.unit
def test_missing_file_is_quarantined(tmp_path: Path) -> None:
    gone = tmp_path / "gone.json"
    res = run(gone)
    assert res.quarantine["row_ref"].to_list() == ["file"]
    assert "unreadable file" in reasons(res)[0] and "FileNotFoundError" in reasons(res)[0]
    assert file_row(res, gone)["sha256"] is None


@pytest.mark.unit
def test_truncated_jsonl_last_line(tmp_path: Path) -> None:
    p = tmp_path / "cut.jsonl"
    full = json.dumps({"request": REQ, "plan": PLAN})
    p.write_text(full + "\n" + full + "\n" + full[: len(full) // 2])
    res = run(p)
    assert res.pairs.height == 2
    assert res.quarantine["row_ref"].to_list() == ["line 3"]
    assert "probably truncated" in reasons(res)[0]
    assert res.quarantine["payload"][0] == full[: len(full) // 2]


@pytest.mark.unit
def test_enormous_field_quarantines_row_and_truncates_payload(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    huge = ex("Huge", notes="x" * (ingest.MAX_FIELD_CHARS + 10))
    p.write_text(json.dumps(huge) + "\n" + json.dumps(ex("Small")) + "\n")
    csv_p = tmp_path / "big.csv"
    csv_p.write_text(
        "name,level,instructions\nHuge CSV,beginner," + "y" * (ingest.MAX_FIELD_CHARS + 1) + "\n"
    )
    res = run(p, csv_p)
    assert res.exercises["name"].to_list() == ["Small"]
    assert res.quarantine["row_ref"].to_list() == ["line 1", "row 1"]
    assert "field 'notes'" in reasons(res)[0] and "field cap" in reasons(res)[0]
    assert "field 'instructions'" in reasons(res)[1]
    assert all(len(x) <= ingest.MAX_PAYLOAD_CHARS for x in res.quarantine["payload"])
    assert "truncated" in res.quarantine["payload"][0]


@pytest.mark.unit
def test_wrong_shaped_json(tmp_path: Path) -> None:
    number = tmp_path / "number.json"
    number.write_text("42")
    dict_of_numbers = tmp_path / "dict.json"
    dict_of_numbers.write_text(json.dumps({"a": 1, "b": 2}))
    bad_list = tmp_path / "badlist.json"
    bad_list.write_text(json.dumps({"exercises": 5}))
    truncated = tmp_path / "trunc.json"
    truncated.write_text(json.dumps([ex("A")])[:-5])
    list_of_numbers = tmp_path / "nums.json"
    list_of_numbers.write_text("[1, 2, 3]")
    res = run(number, dict_of_numbers, bad_list, truncated, list_of_numbers)
    assert res.exercises.height == 0
    by_file: dict[str, list[str]] = {}
    for src, reason in zip(res.quarantine["source_file"], res.quarantine["reason"], strict=True):
        by_file.setdefault(src, []).append(reason)
    assert "top level is a int" in by_file[str(number)][0]
    assert "keys: a, b" in by_file[str(dict_of_numbers)][0]
    assert "'exercises' must be a list" in by_file[str(bad_list)][0]
    assert "invalid JSON" in by_file[str(truncated)][0]
    assert len(by_file[str(list_of_numbers)]) == 3  # each item counted and quarantined
    assert file_row(res, list_of_numbers)["rows_in"] == 3


@pytest.mark.unit
def test_oversized_file_rejected_without_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "huge.jsonl"
    with open(big, "wb") as fh:  # sparse: 201 MiB on paper, nothing on disk
        fh.truncate(ingest.MAX_FILE_BYTES + 1024 * 1024)
    read_calls: list[Path] = []
    real_read_bytes = Path.read_bytes

    def spy(self: Path) -> bytes:
        read_calls.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    res = run(big)
    assert read_calls == []
    assert res.quarantine["row_ref"].to_list() == ["file"]
    assert "over the 200 MiB per-file cap" in reasons(res)[0]


# --------------------------------------------------------------------------- outputs, determinism


@pytest.mark.unit
def test_deterministic_and_written_atomically(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "b.jsonl").write_text(json.dumps({"request": REQ, "plan": PLAN}) + "\n{broken\n")
    (raw / "a.json").write_text(json.dumps([ex("Zed"), ex("Alpha"), ex("zed")]))
    (raw / "c.csv").write_text("name,level\nMid,beginner\n")
    r1 = run(*discover_raw_files([raw]))
    r2 = run(*discover_raw_files([raw]))
    for name in ("exercises", "pairs", "quarantine", "files"):
        assert getattr(r1, name).equals(getattr(r2, name)), name
    assert r1.exercises["name"].to_list() == ["Zed", "Alpha", "Mid"]  # file order, then row order
    out1 = write_ingest_outputs(r1, tmp_path / "out1")
    out2 = write_ingest_outputs(r2, tmp_path / "out2")
    assert set(out1) == {"exercises", "pairs", "quarantine", "files"}
    for key, path in out1.items():
        assert path == tmp_path / "out1" / f"{key}.parquet"
        assert pl.read_parquet(path).equals(getattr(r1, key))
        assert sha256_file(path) == sha256_file(out2[key])
    assert sorted(p.name for p in (tmp_path / "out1").iterdir()) == [
        "exercises.parquet",
        "files.parquet",
        "pairs.parquet",
        "quarantine.parquet",
    ]  # no temp leftovers
    assert r1.summary() == {"files": 3, "rows_in": 6, "exercises": 3, "pairs": 1, "quarantined": 2}


@pytest.mark.unit
def test_empty_input_gives_typed_empty_tables(tmp_path: Path) -> None:
    res = run()
    assert res.files.height == 0 and res.exercises.height == 0
    paths = write_ingest_outputs(res, tmp_path / "out")
    assert pl.read_parquet(paths["exercises"]).schema == res.exercises.schema


@pytest.mark.integration
def test_free_exercise_db_all_rows_accounted(shared_exercises_path: Path) -> None:
    source_rows = json.loads(shared_exercises_path.read_text(encoding="utf-8"))
    res = run(shared_exercises_path)
    row = file_row(res, shared_exercises_path)
    assert row["rows_in"] == len(source_rows) == 873
    assert row["accepted"] + row["quarantined"] == 873
    assert res.exercises.height == 873 and res.quarantine.height == 0
    null_equipment = sum(1 for r in source_rows if r["equipment"] is None)
    assert null_equipment > 0
    assert res.exercises.filter(pl.col("equipment") == "body only").height == null_equipment + sum(
        1 for r in source_rows if r["equipment"] == "body only"
    )
    cat = ExerciseCatalogue.from_frame(res.exercises)
    assert len(cat) == 873
    assert cat.get("3/4 Sit-Up") is not None


@pytest.mark.unit
def test_exercise_table_carries_movement_patterns_and_their_source(tmp_path: Path) -> None:
    """Tagged records keep their tags ("catalogue"); untagged ones get the rules' (with the rule named)."""
    p = tmp_path / "ex.json"
    rows = [
        ex("Pistol Squat", patterns=["deep_knee_flexion"]),
        ex("Box Jump", category="plyometrics", primaryMuscles=["quadriceps"]),
        ex("Glute Bridge", primaryMuscles=["glutes"]),
        ex("Weird Move", patterns=["levitation"]),  # unknown pattern: quarantined with the reason
    ]
    p.write_text(json.dumps(rows))
    res = run(p)
    assert {"movement_patterns", "patterns_source"} <= set(EXERCISE_COLUMNS)
    assert res.exercises.schema["movement_patterns"] == pl.List(pl.String)
    got = {r["name"]: r for r in res.exercises.to_dicts()}
    assert got["Pistol Squat"]["movement_patterns"] == ["deep_knee_flexion"]
    assert got["Pistol Squat"]["patterns_source"] == "catalogue"
    assert "jump" in got["Box Jump"]["movement_patterns"]
    assert (
        got["Box Jump"]["patterns_source"].startswith("rule:")
        and "name:jump" in got["Box Jump"]["patterns_source"]
    )
    assert (
        got["Glute Bridge"]["movement_patterns"] == []
        and got["Glute Bridge"]["patterns_source"] == "rule:none"
    )
    assert res.quarantine.height == 1 and "levitation" in res.quarantine["reason"][0]
    # the catalogue built from the table reads the same verdicts
    cat = ExerciseCatalogue.from_frame(res.exercises)
    assert not cat.get("Box Jump").safe_for(["knees"])  # type: ignore[union-attr]
    assert cat.get("Glute Bridge").safe_for(["knees", "lower back", "shoulders", "wrists"])  # type: ignore[union-attr]
