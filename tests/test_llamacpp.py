"""GGUF export (gguf.py) and the llama.cpp engine (engine_llamacpp.py) on the tiny random Llama.

Real llama.cpp throughout (no mocks): the tiny model is converted once per session with the
vendored converter. Skipped, with the reason, where llama-cpp-python or the converter is absent
(``scripts/llamacpp.sh`` installs both).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.generation import GenerationParams, load_engine
from pumpl_assets.core.gguf import EXPORT_MARKER, GGUFExport, GGUFExportError, converter_path, export_gguf
from pumpl_assets.core.grammar import request_plan_schema
from pumpl_assets.core.prompts import render_prompt, request_to_prompt
from pumpl_assets.core.schemas import RequestSpec, parse_plan

# Skipped where llama.cpp is not installed; failed where it must be (PUMPL_REQUIRE_LLAMACPP=1: .ci/run).
_missing = None
try:
    import llama_cpp  # noqa: F401
except ImportError:
    _missing = "llama-cpp-python not installed (run scripts/llamacpp.sh)"
if _missing is None and not converter_path().is_file():
    _missing = f"llama.cpp converter missing at {converter_path()} (run scripts/llamacpp.sh)"
if _missing is not None:
    if os.environ.get("PUMPL_REQUIRE_LLAMACPP") == "1":
        pytest.fail(f"{_missing} (PUMPL_REQUIRE_LLAMACPP=1: required here)", pytrace=False)
    pytest.skip(_missing, allow_module_level=True)

from pumpl_assets.core.engine_llamacpp import LlamaCppEngine, resolve_gguf  # noqa: E402

RECORDS: list[dict[str, Any]] = [
    {"name": "Push-Up", "level": "beginner", "equipment": "body only", "category": "strength"},
    {"name": "Dumbbell Row", "level": "beginner", "equipment": "dumbbell", "category": "strength"},
    {"name": "Goblet Squat", "level": "beginner", "equipment": "kettlebells", "category": "strength"},
    {
        "name": "Arm Circles",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "push",
    },
    {
        "name": "Child's Pose",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "static",
    },
]
REQ_A = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3)
REQ_B = RequestSpec(goal="endurance", minutes=20, level="beginner", equipment=["body only"], days_per_week=2)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> GGUFExport:
    # f32 base: the exact-comparison file; q8_0 becomes model.gguf.
    return export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny", ("q8_0",), base_type="f32")


@pytest.fixture(scope="module")
def engine(tiny_gguf: GGUFExport) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(tiny_gguf.path("f32"))  # threads: torch_threads() (fewer on a busy box)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def catalogue() -> ExerciseCatalogue:
    return ExerciseCatalogue.from_records(RECORDS)


def prompts_for(eng: Any, reqs: list[RequestSpec]) -> list[str]:
    return [render_prompt(eng.tokenizer, request_to_prompt(r), system="Be brief.") for r in reqs]


@pytest.mark.unit
def test_export_writes_files_sizes_and_record(tiny_gguf: GGUFExport, tiny_model_dir: Path) -> None:
    out = Path(tiny_gguf.out_dir)
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-f32.gguf", "model-q8_0.gguf", "model.gguf"]
    assert resolve_gguf(out) == out / "model.gguf"
    assert (out / "model.gguf").samefile(out / "model-q8_0.gguf")
    assert (out / "tokenizer.json").is_file()
    base, q8 = tiny_gguf.base, tiny_gguf.quants["q8_0"]
    assert base.bytes == Path(base.path).stat().st_size
    assert q8.bytes == Path(q8.path).stat().st_size
    st = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert tiny_gguf.safetensors_bytes == st
    assert 0.9 < base.ratio < 1.5  # f32 weights + the vocab in the GGUF metadata
    assert q8.bytes < 0.6 * base.bytes
    assert "q8_0" in q8.tensor_types and set(base.tensor_types) <= {"f32"}
    # the converter wrote SmolLM2's real byte-level BPE vocab, not a SentencePiece one
    from gguf import GGUFReader

    fields = GGUFReader(str(out / "model-q8_0.gguf")).fields
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    assert tiny_gguf.tokenizer_patched
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads(
        (tiny_model_dir / "tokenizer.json").read_text()
    )
    record = json.loads((out / EXPORT_MARKER).read_text())
    assert record["quants"]["q8_0"]["bytes"] == q8.bytes
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.unit
def test_failed_export_leaves_previous_folder_intact(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "g"
    out.mkdir()
    (out / "model.gguf").write_bytes(b"old")
    bad = tmp_path / "convert_hf_to_gguf.py"
    bad.write_text("import sys\nprint('boom: unsupported model', file=sys.stderr)\nsys.exit(3)\n")
    monkeypatch.setenv("PUMPL_GGUF_CONVERTER", str(bad))
    with pytest.raises(GGUFExportError, match="boom: unsupported model"):
        export_gguf(tiny_model_dir, out, ("q8_0",))
    assert (out / "model.gguf").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert_hf_to_gguf.py", "g"]
    monkeypatch.setenv("PUMPL_GGUF_CONVERTER", str(tmp_path / "nope.py"))
    with pytest.raises(GGUFExportError, match="converter not found"):
        export_gguf(tiny_model_dir, out, ("q8_0",))
    with pytest.raises(ValueError, match="unknown quant 'q3'"):
        export_gguf(tiny_model_dir, out, ("q3",))


@pytest.mark.unit
def test_quantized_gguf_decodes_at_one_and_two_threads(tiny_gguf: GGUFExport) -> None:
    """q8_0 goes to llama.cpp's AMX buffer on an AMX Xeon unless the engine turns extra buffer types off,
    and the first decode then segfaults (llama.cpp #20824; this box, 2026-12-04). A subprocess, so a
    crash fails this test with its exit code instead of killing the test worker."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pumpl_assets.core.engine_llamacpp import LlamaCppEngine\n"
        "from pumpl_assets.core.generation import GenerationParams\n"
        "for threads in (1, 2):\n"
        "    eng = LlamaCppEngine(sys.argv[1], n_threads=threads)\n"
        "    (g,) = eng.generate(['Plan my week'], GenerationParams(max_new_tokens=8))\n"
        "    assert g.completion_tokens == 8, g\n"
        "    eng.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, tiny_gguf.path("q8_0")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


@pytest.mark.unit
def test_tokenization_parity_with_hf(engine: LlamaCppEngine) -> None:
    texts = [
        *prompts_for(engine, [REQ_A, REQ_B]),
        "Plain text, numbers 12345 and  double  spaces\n\ttabs",
        "Unicode: café, naïve, 日本語, emoji 💪🏋️",
        '{"title":"A","days":[{"day":1}]}',
    ]
    for t in texts:
        assert engine.llama_tokenize(t) == engine.tokenizer(t, add_special_tokens=False).input_ids, t


@pytest.mark.unit
def test_greedy_is_deterministic_and_batch_equals_single(engine: LlamaCppEngine) -> None:
    prompts = [*prompts_for(engine, [REQ_A, REQ_B]), "Hi"]
    params = GenerationParams(max_new_tokens=24)
    batched = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    single = [engine.generate([p], params)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in again]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    lens = [len(engine.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert [g.prompt_tokens for g in batched] == lens


@pytest.mark.unit
def test_max_new_tokens_gives_length(engine: LlamaCppEngine) -> None:
    g = engine.generate(prompts_for(engine, [REQ_A]), GenerationParams(max_new_tokens=7))[0]
    assert g.finish_reason == "length"
    assert g.completion_tokens == 7 == len(g.token_ids)


@pytest.mark.unit
def test_stop_strings_cut_text(engine: LlamaCppEngine) -> None:
    prompt = prompts_for(engine, [REQ_A])[0]
    full = engine.generate([prompt], GenerationParams(max_new_tokens=20))[0]
    assert len(full.text) > 6
    stop = full.text[4:7]
    cut = engine.generate([prompt], GenerationParams(max_new_tokens=20, stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


@pytest.mark.unit
def test_seeded_sampling_is_reproducible_and_batch_independent(engine: LlamaCppEngine) -> None:
    prompts = prompts_for(engine, [REQ_A, REQ_B])
    p1 = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    a = engine.generate([prompts[0]], p1)[0]
    assert engine.generate([prompts[0]], p1)[0].text == a.text
    assert engine.generate(prompts, [p1, GenerationParams(max_new_tokens=5)])[0].text == a.text
    others = {engine.generate([prompts[0]], GenerationParams(16, 1.0, 1.0, seed=s))[0].text for s in range(4)}
    assert len(others) > 1


@pytest.mark.unit
def test_constrained_output_is_schema_valid(engine: LlamaCppEngine, catalogue: ExerciseCatalogue) -> None:
    import jsonschema

    reqs = [REQ_A, REQ_B]
    schemas: list[dict | None] = [request_plan_schema(r, catalogue) for r in reqs]
    prompts = [*prompts_for(engine, reqs), "Hi"]
    params = [GenerationParams(max_new_tokens=1500)] * 2 + [GenerationParams(max_new_tokens=24)]
    gens = engine.generate(prompts, params, [*schemas, None])
    # The same served decoding as the transformers engines: grammar mask, then the no-repeat guard.
    assert {"guard_banned", "guard_fallbacks"} <= set(engine.last_stats)
    for g, s in zip(gens[:2], schemas, strict=True):
        assert g.finish_reason == "stop", g
        assert s is not None
        jsonschema.validate(json.loads(g.text), s)
        plan = parse_plan(g.text)
        for session in plan.sessions:
            names = [e.name for e in session.all_exercises()]
            assert len(names) == len(set(names)), names
    # the unconstrained row in the same batch is untouched by the grammar
    assert gens[2].text == engine.generate(["Hi"], params[2])[0].text


@pytest.mark.unit
def test_continuous_batching_refills_slots_and_equals_one_at_a_time(
    engine: LlamaCppEngine, catalogue: ExerciseCatalogue
) -> None:
    """max_batch=2 over 5 rows of mixed lengths, grammars and samplers: finished rows' sequence slots
    are refilled (rows admitted late), live rows move down to keep the slots consecutive, and every row
    decodes exactly as it does alone."""
    reqs = [REQ_B, REQ_A]
    schemas: list[dict | None] = [
        None,
        request_plan_schema(REQ_A, catalogue),
        None,
        request_plan_schema(REQ_B, catalogue),
        None,
    ]
    prompts = [*prompts_for(engine, reqs), "Hi", *prompts_for(engine, [REQ_B, REQ_A])]
    params = [
        GenerationParams(max_new_tokens=5),  # slot 0 frees first: the row in slot 1 moves down
        GenerationParams(max_new_tokens=300),
        GenerationParams(max_new_tokens=9),
        GenerationParams(max_new_tokens=200),
        GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3),
    ]
    together = engine.generate(prompts, params, schemas, max_batch=2)
    stats = dict(engine.last_stats)
    alone = [engine.generate([p], [q], [s])[0] for p, q, s in zip(prompts, params, schemas, strict=True)]
    assert stats["batch"] == 2 and stats["admitted_late"] == 3
    assert stats["moved"] >= 1  # a live row moved down a slot (its KV copied) and still decoded exactly
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert [g.finish_reason for g in together] == [g.finish_reason for g in alone]
    assert together[0].completion_tokens == 5 and together[2].completion_tokens == 9
    # fewer decode steps than consecutive batches of 2, which step for each pair's longest row
    consecutive = sum(max(len(g.token_ids) for g in together[b : b + 2]) for b in range(0, 5, 2))
    assert stats["steps"] < consecutive, (stats["steps"], consecutive)


@pytest.mark.unit
def test_stream_joins_to_generate(engine: LlamaCppEngine) -> None:
    prompt = prompts_for(engine, [REQ_B])[0]
    params = GenerationParams(max_new_tokens=20)
    pieces = list(engine.stream(prompt, params))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate([prompt], params)[0].text


@pytest.mark.unit
def test_one_at_a_time_mode_matches_parallel(tiny_gguf: GGUFExport, engine: LlamaCppEngine) -> None:
    prompts = prompts_for(engine, [REQ_A, REQ_B])
    params = GenerationParams(max_new_tokens=12)
    seq = LlamaCppEngine(tiny_gguf.path("f32"), parallel=False)
    try:
        assert [g.token_ids for g in seq.generate(prompts, params)] == [
            g.token_ids for g in engine.generate(prompts, params)
        ]
    finally:
        seq.close()


@pytest.mark.unit
def test_f32_gguf_greedy_matches_hf_fp32(tiny_model_dir: Path, engine: LlamaCppEngine) -> None:
    import torch

    torch.set_num_threads(2)
    hf = load_engine("transformers", tiny_model_dir, device="cpu", dtype="float32")
    try:
        prompts = prompts_for(engine, [REQ_A, REQ_B])
        params = GenerationParams(max_new_tokens=16)
        ours = [g.token_ids for g in engine.generate(prompts, params)]
        theirs = [g.token_ids for g in hf.generate(prompts, params)]
    finally:
        hf.close()
    # Random weights give near-ties, so allow a late divergence; the first tokens must agree.
    assert all(a[:4] == b[:4] for a, b in zip(ours, theirs, strict=True)), (ours, theirs)


@pytest.mark.unit
def test_load_engine_llamacpp_and_clear_errors(tiny_gguf: GGUFExport, tmp_path: Path) -> None:
    eng = load_engine("llamacpp", tiny_gguf.out_dir)
    try:
        assert eng.name == "llamacpp" and eng.quantization == "q8_0"
        assert eng.generate(["Hi"], GenerationParams(max_new_tokens=3))[0].completion_tokens <= 3
    finally:
        eng.close()
    with pytest.raises(ValueError, match="takes no adapter"):
        load_engine("llamacpp", tiny_gguf.out_dir, adapter_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="no GGUF model"):
        load_engine("llamacpp", tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="several GGUF files"):
        resolve_gguf(tmp_path)


# ------------------------------------------------------------------------------------------
# Serving: pumpl-serve --engine llamacpp over HTTP, on a folder the export CLI wrote
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import subprocess
    import sys

    from pumpl_serving.testing import REPO_ROOT, start_server

    tmp = tmp_path_factory.mktemp("serve-llamacpp")
    out = tmp / "gguf"
    exported = subprocess.run(
        [sys.executable, "-m", "pumpl_assets.core.gguf", str(tiny_model_dir), str(out), "--quants", "q8_0"],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert f"--engine llamacpp --model-path {out}" in exported.stdout
    srv = start_server(
        [
            "--engine",
            "llamacpp",
            "--model-path",
            str(out),
            "--threads",
            "1",
            "--max-batch-size",
            "4",
            "--batch-timeout",
            "0.5",
            "--timeout",
            "120",
            "--poll-interval",
            "0",
        ],
        log_path=tmp / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"},
    )
    yield srv
    srv.stop()
    assert not srv.group_alive(), "LitServe processes outlived the server"


@pytest.mark.integration
def test_server_serves_plans_through_llamacpp(llama_server: Any) -> None:
    import concurrent.futures as cf

    with llama_server.client() as c:
        info = c.get("/info").json()
        assert info["engine"] == "llamacpp" and info["quantization"] == "q8_0"
        assert Path(info["model_path"]).name == "gguf"
        # A sampled plan: constrained to the request's grammar, schema-valid, stopped by itself, and the
        # seed makes it reproducible (seed / top_p reach the llama.cpp rows).
        body = {
            "prompt": request_to_prompt(REQ_A),
            "max_tokens": 2048,
            "temperature": 0.8,
            "top_p": 0.9,
            "seed": 7,
        }
        r = c.post("/generate", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-constrained"] == "true" and r.headers["x-finish-reason"] == "stop"
        plan = parse_plan(r.json()["text"])
        assert r.json()["plan"] is not None and r.json()["plan"]["title"] == plan.title
        assert c.post("/generate", json=body).json()["text"] == r.json()["text"]
        # Stop strings cut the raw text.
        raw = {"prompt": "Say hello", "max_tokens": 16, "temperature": 0.0, "raw": True}
        full = c.post("/generate", json=raw).json()["text"]
        assert len(full) > 3, full
        cut = c.post("/generate", json={**raw, "stop": [full[2:4]]}).json()["text"]
        assert full.startswith(cut) and len(cut) < len(full)
        before = c.get("/info").json()["metrics"]["generate"]

    # Concurrent greedy requests share llama.cpp batches (parallel sequences) and each equals its answer
    # alone.
    def one(i: int) -> httpx.Response:
        with llama_server.client() as cc:
            return cc.post(
                "/generate",
                json={"prompt": f"Hello number {i}", "max_tokens": 24, "temperature": 0.0, "raw": True},
            )

    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
    with llama_server.client() as c:
        after = c.get("/info").json()["metrics"]["generate"]
        assert after["requests"] - before["requests"] == 4
        assert after["max_batch"] > 1, after
        solo = c.post(
            "/generate", json={"prompt": "Hello number 2", "max_tokens": 24, "temperature": 0.0, "raw": True}
        ).json()
        assert solo["text"] == results[2].json()["text"]


@pytest.mark.integration
def test_openai_route_streams_through_llamacpp(llama_server: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    msgs: Any = [{"role": "user", "content": request_to_prompt(REQ_B)}]
    full = client.chat.completions.create(model="pumpl", messages=msgs, max_tokens=2048, temperature=0)
    text = full.choices[0].message.content or ""
    parse_plan(text)  # a plan request through the OpenAI route is constrained too
    chunks = list(
        client.chat.completions.create(
            model="pumpl", messages=msgs, max_tokens=2048, temperature=0, stream=True
        )
    )
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.integration
def test_llamacpp_from_an_empty_registry_exits_2_naming_the_fix(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pumpl_serving.testing import REPO_ROOT

    env = {
        **os.environ,
        "PUMPL_DATA_ROOT": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}",
    }
    r = subprocess.run(
        [sys.executable, "-m", "pumpl_serving", "--engine", "llamacpp", "--partition", "smollm2-135m"],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no model answers to models:/pumpl-smollm2-135m@champion" in r.stderr, r.stderr[-2000:]
    assert "--model-path" in r.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "pumpl_assets.core.gguf", str(tmp_path / "nowhere"), str(tmp_path / "out")],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert bad.returncode == 2 and "not a Hugging Face model folder" in bad.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_serve_refuses_an_engine_that_cannot_read_the_folder(
    tiny_gguf: GGUFExport, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pumpl_serving.cli import main

    assert main(["--engine", "llamacpp", "--model-path", str(tiny_model_dir)]) == 2
    assert "holds no .gguf file" in capsys.readouterr().err
    assert main(["--engine", "transformers", "--model-path", tiny_gguf.out_dir]) == 2
    assert "serve it with --engine llamacpp" in capsys.readouterr().err


@pytest.mark.unit
def test_export_for_the_registry_keeps_only_the_quants(tiny_model_dir: Path, tmp_path: Path) -> None:
    """What gguf_model writes: the quants and the tokenizer, no f16 file, no hard link (a registry copy
    would store the link as a second full file); the record names the file the engine loads."""
    exp = export_gguf(tiny_model_dir, tmp_path / "g", ("q8_0", "q4_0"), keep_base=False, link_default=False)
    out = Path(exp.out_dir)
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-q4_0.gguf", "model-q8_0.gguf"]
    assert exp.default == "model-q8_0.gguf" and exp.base_kept is False
    assert json.loads((out / EXPORT_MARKER).read_text())["default"] == "model-q8_0.gguf"
    assert resolve_gguf(out) == out / "model-q8_0.gguf"
    assert exp.quants["q4_0"].bytes < exp.quants["q8_0"].bytes
    eng = load_engine("llamacpp", out)
    try:
        assert isinstance(eng, LlamaCppEngine) and eng.computes_loss is False
        assert eng.model_path == str(out / "model-q8_0.gguf")
    finally:
        eng.close()
    with pytest.raises(ValueError, match="keep_base=False needs at least one quant"):
        export_gguf(tiny_model_dir, tmp_path / "h", (), keep_base=False)


@pytest.mark.integration
def test_evaluation_through_llamacpp_reproduces_the_transformers_rows(
    tiny_model_dir: Path, tiny_gguf: GGUFExport, catalogue: ExerciseCatalogue
) -> None:
    """gguf_model's evaluation: the f32 GGUF decoded by llama.cpp on a reference's served rows, the same
    way (prompts, budgets, grammar, batches), writes the transformers fp32 engine's plans row for row,
    so every comparison is exact; no test loss without a torch forward."""
    import polars as pl

    from pumpl_assets.core.evaluate import evaluate_against_reference, evaluate_models, reference_rows

    reqs = [REQ_A, REQ_B, REQ_A.model_copy(update={"minutes": 20})]
    plan = (
        '{"title":"T","total_minutes":30,"days_per_week":3,"split":"full_body","sessions":[{"day":"full_body",'
        '"warmup":[{"name":"Arm Circles","work_s":60}],"main":[{"name":"Push-Up","sets":3,"rest_s":60,"reps":10}],'
        '"cooldown":[{"name":"Child\'s Pose","sets":2,"work_s":30}]}]}'
    )
    rows = pl.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(len(reqs))],
            "request_json": [r.model_dump_json() for r in reqs],
            "plan_json": [plan] * len(reqs),
        }
    )
    kw: dict[str, Any] = {"style": "chat_template", "system_prompt": "Be brief.", "batch_size": 2}
    ref_report = evaluate_models(
        tiny_model_dir, None, rows, catalogue, modes=("served",), include_base=False,
        tuned_model=tiny_model_dir, dtype="float32", max_new_tokens=40, **kw,
    )  # fmt: skip
    ref = reference_rows(ref_report.per_example, mode="served")
    got = evaluate_against_reference(
        Path(tiny_gguf.path("f32")), "llamacpp", ref, rows, catalogue,
        mode="served", columns=("adherent", "schema_valid"), max_new_tokens=40, **kw,
    )  # fmt: skip
    by_id = dict(zip(ref["example_id"], ref["text"], strict=True))
    assert {
        e: t for e, t in zip(got.per_example["example_id"], got.per_example["text"], strict=True)
    } == by_id
    for c in got.comparisons.values():
        assert (c.n, c.regressions, c.improvements, c.drop) == (3, 0, 0, 0.0)
    assert math.isnan(got.summary["adapter.test_loss"])
    assert got.summary["adapter.served.tokens_per_s"] > 0
    with pytest.raises(ValueError, match="only 2 of them are in the test split"):
        evaluate_against_reference(
            Path(tiny_gguf.path("f32")), "llamacpp", ref, rows.head(2), catalogue,
            mode="served", columns=("adherent",), max_new_tokens=40, **kw,
        )  # fmt: skip


@pytest.mark.integration
def test_server_engine_llamacpp_serves_the_registered_gguf_copy(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pumpl-serve --engine llamacpp` loads the champion's own GGUF copy (registry kind ``gguf``, the
    quant its export record names) over HTTP and answers like llama.cpp in process."""
    from pumpl_assets.core.io import sha256_tree
    from pumpl_assets.core.registry import Registry, register_candidate
    from pumpl_serving.testing import start_server

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PUMPL_DATA_ROOT", str(tmp_path / "data"))
    exp = export_gguf(
        tiny_model_dir, tmp_path / "gguf", ("q8_0", "q4_0"), keep_base=False, link_default=False
    )
    reg = Registry(uri, artifact_root=str(tmp_path / "artifacts"))
    done = register_candidate(
        reg, "smollm2-135m", merged_dir=tiny_model_dir, awq_dir=tiny_model_dir, gguf_dir=Path(exp.out_dir),
        gates={"gguf_model.size_ratio": True}, tags={},
    )  # fmt: skip
    assert done.promoted and done.sha256["gguf"] == sha256_tree(exp.out_dir)
    probe = {"prompt": "Plan my week", "max_tokens": 12, "temperature": 0.0, "raw": True}
    srv = start_server(
        ["--partition", "smollm2-135m", "--engine", "llamacpp", "--threads", "1", "--poll-interval", "0"],
        log_path=tmp_path / "server.log",
    )
    try:
        with srv.client() as c:
            info = c.get("/info").json()
            assert info["engine"] == "llamacpp" and info["quantization"] == "q8_0", info
            assert Path(info["model_path"]).parts[-2:] == (
                f"v{done.version}-{done.sha256['gguf'][:16]}",
                "gguf",
            )
            r = c.post("/generate", json=probe)
            assert r.status_code == 200, r.text
            served = r.json()
    finally:
        srv.stop()
    local = load_engine("llamacpp", exp.out_dir)
    try:
        prompt = render_prompt(local.tokenizer, probe["prompt"])  # type: ignore[arg-type]
        (want,) = local.generate([prompt], GenerationParams(max_new_tokens=12, temperature=0.0))
    finally:
        local.close()
    assert served["text"] == want.text and served["usage"]["completion_tokens"] == len(want.token_ids)


@pytest.mark.unit
def test_auto_engine_picks_llamacpp_only_where_it_can_serve(
    tiny_gguf: GGUFExport, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--engine auto` (the default): llama.cpp for a CPU partition on a CPU machine with llama.cpp
    installed, or for a GGUF path; transformers for a Hugging Face folder, a GPU partition, or a
    machine without llama-cpp-python (the reason names the install script). An explicit engine stays."""
    import importlib.util

    from pumpl_serving.config import ServeConfig, choose_engine

    assert choose_engine(ServeConfig("smollm2-135m", engine="bnb4")) == ("bnb4", "asked for")
    assert choose_engine(ServeConfig("smollm2-135m", model_path=tiny_gguf.out_dir))[0] == "llamacpp"
    assert choose_engine(ServeConfig("smollm2-135m", model_path=str(tiny_model_dir)))[0] == "transformers"
    assert choose_engine(ServeConfig("smollm2-135m"))[0] == "llamacpp"  # this machine: no CUDA
    engine, why = choose_engine(ServeConfig("qwen3-4b"))
    assert engine == "transformers" and "GPU model" in why
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    engine, why = choose_engine(ServeConfig("smollm2-135m"))
    assert engine == "transformers" and "scripts/llamacpp.sh" in why


@pytest.mark.integration
def test_auto_engine_serves_the_gguf_copy_and_falls_back_without_one(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the registry, `auto` serves the champion's GGUF copy with llama.cpp; a champion registered
    without one (before gguf_model existed) is served from its merged copy by the transformers engine,
    and the reason says so. An explicit `--engine llamacpp` does not fall back."""
    from pumpl_assets.core.registry import Registry, register_candidate
    from pumpl_serving.config import ServeConfig, resolve_source
    from pumpl_serving.model_source import ModelSourceError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PUMPL_DATA_ROOT", str(tmp_path / "data"))
    reg = Registry(uri, artifact_root=str(tmp_path / "artifacts"))
    old = register_candidate(
        reg, "smollm2-135m", merged_dir=tiny_model_dir, awq_dir=tiny_model_dir, gates={"g": True}, tags={}
    )
    cfg, ref, why = resolve_source(ServeConfig("smollm2-135m"))
    assert (cfg.engine, ref.version) == ("transformers", old.version)
    assert ref.path.name == "merged" and "no GGUF copy" in why, why
    with pytest.raises(ModelSourceError, match="gguf"):
        resolve_source(ServeConfig("smollm2-135m", engine="llamacpp"))
    exp = export_gguf(tiny_model_dir, tmp_path / "gguf", ("q8_0",), keep_base=False, link_default=False)
    new = register_candidate(
        reg, "smollm2-135m", merged_dir=tiny_model_dir, awq_dir=tiny_model_dir, gguf_dir=Path(exp.out_dir),
        gates={"g": True}, tags={},
    )  # fmt: skip
    cfg, ref, why = resolve_source(ServeConfig("smollm2-135m"))
    assert (cfg.engine, ref.version, ref.path.name) == ("llamacpp", new.version, "gguf"), why
    assert resolve_gguf(ref.path).name == "model-q8_0.gguf"
