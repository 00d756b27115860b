"""LoRA training: data masking/packing, the peft loop, adapters, resume after SIGKILL, backend selection.

All on the tiny random Llama (SmolLM2's real tokenizer), so every test takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pumpl_assets.core.prompts import render_prompt
from pumpl_assets.core.schemas import (
    ChatMessage,
    RepsExercise,
    RequestSpec,
    TimedExercise,
    TrainingConfig,
    TrainingExample,
    WorkoutDay,
    WorkoutPlanResponse,
    dump_plan,
)
from pumpl_assets.core.training import base, data, run
from pumpl_assets.core.training.base import BackendUnavailableError, TrainResult

SYSTEM = "You are a coach. Answer with JSON."


def _plan(i: int) -> str:
    plan = WorkoutPlanResponse(
        title=f"Plan number {i}",
        total_minutes=20 + i,
        days_per_week=3,
        split="full_body",
        sessions=[
            WorkoutDay(
                day="full_body",
                warmup=[TimedExercise(name="Jumping Jacks", sets=1, work_s=60, rest_s=0)],
                main=[RepsExercise(name="Push-Up", sets=3, reps=10 + i % 5, rest_s=60)],
                cooldown=[TimedExercise(name="Child's Pose", sets=1, work_s=45, rest_s=0)],
            )
        ],
    )
    return dump_plan(plan)


def _example(i: int, system: str | None = SYSTEM) -> TrainingExample:
    req = RequestSpec(
        goal="strength", minutes=20 + i, level="beginner", equipment=["body only"], days_per_week=3
    )
    msgs = [ChatMessage(role="system", content=system)] if system else []
    msgs += [
        ChatMessage(role="user", content=f"Goal: strength. Time: {20 + i} min. Level: beginner."),
        ChatMessage(role="assistant", content=_plan(i)),
    ]
    return TrainingExample(messages=msgs, request=req, source="test")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ------------------------------------------------------------------------------------------ data


@pytest.mark.unit
def test_labels_are_minus_100_exactly_on_prompt_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = _example(3)
    tok = data.tokenize_example(tokenizer, ex, style="chat_template", system_prompt=None)
    prompt_ids = tokenizer(render_prompt(tokenizer, ex.user, system=SYSTEM), add_special_tokens=False)[
        "input_ids"
    ]
    assert tok.input_ids[: len(prompt_ids)] == prompt_ids
    assert tok.n_prompt == len(prompt_ids)
    assert tok.labels[: tok.n_prompt] == [data.IGNORE_INDEX] * tok.n_prompt
    assert tok.labels[tok.n_prompt :] == tok.input_ids[tok.n_prompt :]
    assert data.IGNORE_INDEX not in tok.labels[tok.n_prompt :]
    # The supervised tail is the answer plus the end-of-turn token (the model must learn to stop).
    assert tokenizer.decode(tok.input_ids[tok.n_prompt :]) == ex.assistant + tokenizer.eos_token

    # In a rendered, padded batch: -100 exactly on prompt and padding positions.
    exs = [tok, data.tokenize_example(tokenizer, _example(11), style="chat_template", system_prompt=None)]
    batch = data.collate(exs, [[0], [1]], pad_id=tokenizer.pad_token_id, packing=False)
    for r, e in enumerate(exs):
        labels = batch["labels"][r].tolist()
        expected = [data.IGNORE_INDEX] * e.n_prompt + e.input_ids[e.n_prompt :]
        expected += [data.IGNORE_INDEX] * (len(labels) - len(e))
        assert labels == expected
        assert batch["attention_mask"][r].tolist() == [1] * len(e) + [0] * (len(labels) - len(e))


@pytest.mark.unit
def test_decision_weights_fall_on_the_values_a_request_decides(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = _example(3)
    plain = data.tokenize_example(tokenizer, ex, style="chat_template", system_prompt=None)
    assert plain.weights is None
    tok = data.tokenize_example(tokenizer, ex, style="chat_template", system_prompt=None, decision_weight=4.0)
    assert tok.input_ids == plain.input_ids and tok.labels == plain.labels
    assert tok.weights is not None and len(tok.weights) == len(tok.input_ids)
    assert tok.weights[: tok.n_prompt] == [0.0] * tok.n_prompt
    answer_ids = tok.input_ids[tok.n_prompt :]
    answer_w = tok.weights[tok.n_prompt :]
    assert set(answer_w) == {1.0, 4.0}
    weighted = "".join(tokenizer.decode([i]) for i, w in zip(answer_ids, answer_w, strict=True) if w == 4.0)
    plain_text = "".join(tokenizer.decode([i]) for i, w in zip(answer_ids, answer_w, strict=True) if w == 1.0)
    # Every decision value is on weighted tokens (split, day, sets, reps, rest, seconds, minutes) ...
    for value in ("full_body", "23", "13", "60", "45"):
        assert value in weighted, (value, weighted)
    # ... and the exercise names, the title and the JSON keys are not.
    for text in ("Push-Up", "Jumping Jacks", "Plan number", "warmup", "rest_s"):
        assert text in plain_text and text not in weighted, (text, weighted)
    # A batch carries the weights beside the labels (0 on prompt and padding); the loss denominator
    # is their sum over the answer.
    other = data.tokenize_example(
        tokenizer, _example(11), style="chat_template", system_prompt=None, decision_weight=4.0
    )
    for packing in (False, True):
        batch = data.collate([tok, other], [[0], [1]], pad_id=tokenizer.pad_token_id, packing=packing)
        assert batch["loss_weights"][0, : len(tok)].tolist() == tok.weights
        assert batch["loss_weights"][1, len(other) :].abs().sum() == 0
        assert ((batch["loss_weights"] > 0) == (batch["labels"] != data.IGNORE_INDEX)).all()
    assert other.weights is not None
    assert data.answer_weight([tok, other], [[0, 1]]) == sum(tok.weights) + sum(other.weights)
    assert data.answer_weight([plain], [[0]]) == plain.n_answer
    assert "loss_weights" not in data.collate([plain], [[0]], pad_id=0, packing=True)


@pytest.mark.unit
def test_decision_weighting_needs_the_plain_loop() -> None:
    with pytest.raises(ValueError, match=r"decision_weight=3\.0 needs loop=.plain."):
        TrainingConfig(loop="sft_trainer", decision_weight=3.0)
    with pytest.raises(ValueError):
        TrainingConfig(decision_weight=0.5)  # below 1 would weight the decisions down


@pytest.mark.unit
def test_system_prompt_override_and_example_own(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = _example(1, system=None)
    own = data.tokenize_example(tokenizer, ex, style="chat_template", system_prompt=None)
    forced = data.tokenize_example(tokenizer, ex, style="chat_template", system_prompt="Be brief.")
    assert "Be brief." in tokenizer.decode(forced.input_ids[: forced.n_prompt])
    assert "Be brief." not in tokenizer.decode(own.input_ids[: own.n_prompt])
    mistral = data.tokenize_example(tokenizer, ex, style="mistral_inst", system_prompt=None)
    assert tokenizer.decode(mistral.input_ids[: mistral.n_prompt]).startswith("<s>[INST]")


@pytest.mark.unit
def test_pack_keeps_examples_whole_and_within_seq_len() -> None:
    lengths = [300, 200, 500, 120, 90, 400, 30]
    rows = data.pack(lengths, 512)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(len(lengths)))  # every example exactly once, never split
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) < len(lengths)  # something was actually packed together
    with pytest.raises(ValueError, match="cannot be packed"):
        data.pack([600], 512)


@pytest.mark.unit
def test_too_long_examples_are_skipped_with_reason(tokenizer) -> None:  # type: ignore[no-untyped-def]
    kept, skipped = data.tokenize_examples(
        tokenizer, [_example(0), _example(1)], style="chat_template", system_prompt=None, seq_len=64
    )
    assert kept == []
    assert [i for i, _ in skipped] == [0, 1]
    assert "seq_len 64" in skipped[0][1]


@pytest.mark.unit
def test_packed_rows_do_not_attend_across_examples(tiny_model_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    exs = [
        data.tokenize_example(tokenizer, _example(i), style="chat_template", system_prompt=None)
        for i in (0, 4)
    ]
    packed = data.collate(exs, [[0, 1]], pad_id=tokenizer.pad_token_id, packing=True)
    assert packed["position_ids"][0, : len(exs[0])].tolist() == list(range(len(exs[0])))
    assert packed["position_ids"][0, len(exs[0]) :].tolist() == list(range(len(exs[1])))
    assert packed["labels"][0].tolist() == exs[0].labels + exs[1].labels
    with torch.no_grad():
        joint = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits[0]
        alone = [model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0] for e in exs]
    torch.testing.assert_close(joint[: len(exs[0])], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(joint[len(exs[0]) :], alone[1], atol=1e-4, rtol=1e-4)


@pytest.mark.unit
def test_batch_stream_is_deterministic_and_covers_every_example(tokenizer) -> None:  # type: ignore[no-untyped-def]
    exs = [
        data.tokenize_example(tokenizer, _example(i), style="chat_template", system_prompt=None)
        for i in range(9)
    ]
    a = data.micro_batches(exs, packing=True, seq_len=1024, batch_size=2, seed=5)
    b = data.micro_batches(exs, packing=True, seq_len=1024, batch_size=2, seed=5)
    per_epoch = data.batches_per_epoch(exs, packing=True, seq_len=1024, batch_size=2, seed=5)
    first = [next(a) for _ in range(per_epoch)]
    assert first == [next(b) for _ in range(per_epoch)]
    assert sorted(i for mb in first for row in mb for i in row) == list(range(9))


# ----------------------------------------------------------------------------------- backends


@pytest.mark.unit
def test_select_backend_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    if base.cuda_available():
        pytest.skip("CPU-only rules")
    assert base.resolve_backend_name("auto", "auto") == ("peft", "cpu")
    assert run.select_backend("peft", "cpu").name == "peft"
    with pytest.raises(BackendUnavailableError, match="unknown trainer backend"):
        run.select_backend("deepspeed", "cpu")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        run.select_backend("peft", "cuda")
    with pytest.raises(BackendUnavailableError, match="load_in_4bit"):
        run.select_backend("peft", "cpu", cfg=TrainingConfig(load_in_4bit=True))
    monkeypatch.setenv("UNSLOTH_DISABLE_CPU_FALLBACK", "1")
    with pytest.raises(BackendUnavailableError, match="UNSLOTH_DISABLE_CPU_FALLBACK"):
        run.select_backend("unsloth", "cpu")


@pytest.mark.unit
def test_unsloth_backend_refuses_a_process_that_imported_transformers() -> None:
    import transformers  # noqa: F401

    if "unsloth" in sys.modules:
        pytest.skip("unsloth already imported in this process")
    from pumpl_assets.core.training.model_unsloth import UnslothLoader

    with pytest.raises(BackendUnavailableError, match="imported before transformers"):
        UnslothLoader("cpu")


@pytest.mark.unit
def test_train_result_json_round_trip(tmp_path: Path) -> None:
    r = TrainResult(
        adapter_dir=tmp_path / "adapter",
        steps=3,
        resumed_from_step=2,
        train_loss=[(1, 2.5), (2, 2.0)],
        val_loss=None,
        tokens_per_s=10.0,
        peak_rss_mb=1.0,
        wall_s=2.0,
        backend="peft",
        train_tokens=99,
    )
    again = TrainResult.from_json(json.loads(json.dumps(r.to_json())))
    assert again == r


@pytest.mark.unit
def test_peft_loop_learns_and_writes_a_loadable_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    base.patch_peft_torchao()
    from peft import PeftModel

    cfg = TrainingConfig(
        backend="peft",
        rank=8,
        alpha=16,
        learning_rate=1e-2,
        max_steps=8,
        warmup_steps=0,
        batch_size=2,
        seq_len=1024,
        checkpoint_every=4,
    )
    ex = _example(2)
    result = run.train_lora(
        tiny_model_dir,
        cfg,
        [ex] * 4,
        [ex],
        tmp_path / "run",
        style="chat_template",
        system_prompt=None,
        device="cpu",
    )
    assert result.backend == "peft" and result.steps == 8 and result.resumed_from_step is None
    losses = [v for _, v in result.train_loss]
    # The tiny random model's tied embeddings (std 0.02) cap how far any LoRA can move its logits
    # (~1-2 nats from ln(vocab) = 10.8); a steady 0.2-nat drop on a repeated example is learning.
    assert losses[-1] < losses[0] - 0.2, losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert result.val_loss is not None and result.val_loss < losses[0]
    n_tok = len(data.tokenize_example(_tok(tiny_model_dir), ex, style="chat_template", system_prompt=None))
    assert result.tokens_per_s > 0 and result.train_tokens > 0 and result.train_tokens % n_tok == 0
    adapter = result.adapter_dir
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 8 and len(metrics["train_loss"]) == 8
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(model, adapter)
        after = peft_model(input_ids=ids).logits
    assert not torch.allclose(before, after)  # the trained adapter changes the model

    # Re-running a finished job resumes from its final checkpoint and trains nothing.
    again = run.train_lora(tiny_model_dir, cfg, [ex] * 4, [ex], tmp_path / "run", device="cpu")
    assert again.resumed_from_step == 8 and again.steps == 0


@pytest.mark.integration
def test_decision_weighting_moves_learning_onto_the_decisions(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same data, seed and steps: with decision_weight the trained adapter's loss on the decision
    tokens falls further than without it (and its plain validation loss is still reported)."""
    import torch
    from transformers import AutoModelForCausalLM

    base.patch_peft_torchao()
    from peft import PeftModel

    examples = [_example(i) for i in range(6)]
    tok = _tok(tiny_model_dir)
    probe = data.tokenize_example(
        tok, examples[0], style="chat_template", system_prompt=None, decision_weight=2.0
    )
    assert probe.weights is not None
    ids = torch.tensor([probe.input_ids])
    targets = ids[0, 1:]
    is_decision = torch.tensor(probe.weights[1:]) == 2.0
    is_answer = torch.tensor(probe.labels[1:]) != data.IGNORE_INDEX

    def decision_and_other_loss(adapter: Path) -> tuple[float, float]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        with torch.no_grad():
            logits = PeftModel.from_pretrained(model, adapter)(input_ids=ids).logits[0, :-1]
        ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        return float(ce[is_decision].mean()), float(ce[is_answer & ~is_decision].mean())

    out = {}
    for weight in (1.0, 8.0):
        cfg = TrainingConfig(
            backend="peft", rank=8, alpha=16, learning_rate=1e-2, max_steps=8, warmup_steps=0,
            batch_size=2, seq_len=1024, decision_weight=weight,
        )  # fmt: skip
        result = run.train_lora(
            tiny_model_dir, cfg, examples, examples[:2], tmp_path / str(weight), device="cpu"
        )
        assert result.steps == 8 and result.val_loss is not None
        out[weight] = decision_and_other_loss(result.adapter_dir)
    (dec_plain, other_plain), (dec_weighted, other_weighted) = out[1.0], out[8.0]
    assert dec_weighted < dec_plain - 0.05, out
    # what the decisions gained is not simply everything gained: the other tokens did not gain as much
    assert dec_plain - dec_weighted > other_plain - other_weighted, out


def _tok(path: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.unit
def test_incomplete_or_foreign_checkpoints_are_never_resumed(tmp_path: Path) -> None:
    out = tmp_path / "run"

    def write(tmp: Path) -> None:
        (tmp / "state.bin").write_bytes(b"x" * 10)

    base.write_checkpoint(out, 4, "fp-a", write)
    assert base.latest_checkpoint(out, "fp-a") == (base.checkpoint_dir(out, 4), 4)
    # A newer checkpoint without its manifest (killed mid-write) and a corrupted one are skipped.
    half = base.checkpoint_dir(out, 8)
    half.mkdir(parents=True)
    (half / "state.bin").write_bytes(b"partial")
    assert base.latest_checkpoint(out, "fp-a") == (base.checkpoint_dir(out, 4), 4)
    base.write_checkpoint(out, 12, "fp-a", write)
    (base.checkpoint_dir(out, 12) / "state.bin").write_bytes(b"corrupted!")
    assert base.latest_checkpoint(out, "fp-a") == (base.checkpoint_dir(out, 4), 4)
    # Another run's checkpoint (different recipe/data fingerprint) is not resumed.
    assert base.latest_checkpoint(out, "fp-b") is None


def _job(tiny_model_dir: Path, out: Path, **cfg: object) -> dict:  # type: ignore[type-arg]
    exs = [_example(i) for i in range(12)]
    return {
        "base_model": str(tiny_model_dir),
        "cfg": {
            "backend": "peft",
            "rank": 4,
            "alpha": 8,
            "batch_size": 2,
            "seq_len": 1024,
            "learning_rate": 5e-3,
            **cfg,
        },
        "train": [e.model_dump(mode="json") for e in exs[:10]],
        "val": [e.model_dump(mode="json") for e in exs[10:]],
        "out_dir": str(out),
        "style": "chat_template",
        "system_prompt": None,
        "device": "cpu",
    }


@pytest.mark.integration
def test_resume_after_sigkill(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pumpl_assets.core.io import write_json_atomic
    from pumpl_assets.core.training.run import run_training_subprocess

    out = tmp_path / "run"
    job = _job(tiny_model_dir, out, max_steps=16, checkpoint_every=2)
    job_path = write_json_atomic(tmp_path / "job.json", job)
    env = dict(os.environ, PUMPL_TORCH_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pumpl_assets.core.training.run", "--job", str(job_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if any((p / base.MANIFEST).is_file() for p in (out / base.CHECKPOINTS).glob("step-*")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished before it could be killed; raise max_steps"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "adapter").exists()  # killed before the end: no final adapter
    result = run_training_subprocess(job)
    assert result.resumed_from_step is not None and result.resumed_from_step >= 2
    assert result.total_steps == 16
    assert result.steps == 16 - result.resumed_from_step < 16
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert [s for s, _ in result.train_loss] == list(range(1, 17))  # history carried over the kill


@pytest.mark.integration
def test_subprocess_reports_failures_clearly(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pumpl_assets.core.training.run import TrainingSubprocessError, run_training_subprocess

    job = _job(tiny_model_dir, tmp_path / "run", max_steps=2, seq_len=64)  # every example longer than 64
    with pytest.raises(TrainingSubprocessError, match="no usable training examples"):
        run_training_subprocess(job)


@pytest.mark.integration
def test_unsloth_cpu_fallback_trains_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Measured: unsloth 2026.10's CPU fallback trains (plain PEFT model + chunked CE) once peft's
    torchao probe is patched; it is no faster than the peft backend, so ``auto`` keeps peft on CPU."""
    pytest.importorskip("unsloth", reason="unsloth not installed")
    if base.cuda_available():
        pytest.skip("covered by tests/gpu/test_unsloth_gpu.py")
    from pumpl_assets.core.training.run import run_training_subprocess

    job = _job(tiny_model_dir, tmp_path / "run", backend="unsloth", max_steps=3, checkpoint_every=2)
    result = run_training_subprocess(job)
    assert result.backend == "unsloth" and result.steps == 3
    assert all(v == v and v > 0 for _, v in result.train_loss)  # finite
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and set(cfg["target_modules"]) >= {"q_proj", "v_proj"}


@pytest.mark.integration
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_sft_trainer_loop_trains_checkpoints_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, packing: bool
) -> None:
    """loop="sft_trainer": PEFT + TRL SFTTrainer behind the same backend interface and outputs."""
    from pumpl_assets.core.training.recipe_sft import complete_checkpoints
    from pumpl_assets.core.training.run import run_training_subprocess

    out = tmp_path / "run"
    common = {"loop": "sft_trainer", "checkpoint_every": 2, "warmup_steps": 0, "packing": packing}
    first = run_training_subprocess(_job(tiny_model_dir, out, max_steps=4, **common))
    assert first.backend == "peft" and first.extra["loop"] == "sft_trainer"
    assert first.steps == 4 and first.resumed_from_step is None
    assert [s for s, _ in first.train_loss] == [1, 2, 3, 4]
    assert all(v == v and v > 0 for _, v in first.train_loss)  # finite, positive
    assert first.train_tokens > 0 and first.tokens_per_s > 0
    assert first.val_loss is not None and first.val_loss > 0
    adapter = first.adapter_dir
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "pumpl_training.json").read_text())["loop"] == "sft_trainer"
    run_dir = Path(first.extra["checkpoints"])
    assert [s for s, _ in complete_checkpoints(run_dir)] == [2, 4]
    if not packing:
        return  # resuming does not depend on how rows are built: the packed case below covers it
    # A checkpoint cut short (no trainer_state.json) is never resumed from.
    (run_dir / "checkpoint-6").mkdir()
    assert [s for s, _ in complete_checkpoints(run_dir)] == [2, 4]
    # The same job again → finds its last complete checkpoint and trains nothing twice.
    again = run_training_subprocess(_job(tiny_model_dir, out, max_steps=4, **common))
    assert again.resumed_from_step == 4 and again.steps == 0
    assert again.train_loss == first.train_loss
    # Resuming mid-schedule: drop the final checkpoint, the rerun continues from step 2 (runs 2 steps).
    import shutil

    shutil.rmtree(run_dir / "checkpoint-4")
    resumed = run_training_subprocess(_job(tiny_model_dir, out, max_steps=4, **common))
    assert resumed.resumed_from_step == 2 and resumed.steps == 2
    assert [s for s, _ in resumed.train_loss] == [1, 2, 3, 4]


@pytest.mark.unit
def test_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="loop"):
        TrainingConfig(loop="keras")  # type: ignore[arg-type]
