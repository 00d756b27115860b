"""Corrupted model files fail fast and say which file is wrong.

(a) A real peft LoRA adapter built on the tiny model, then damaged on disk (truncated,
    emptied, garbled, NaN/Inf written into a tensor): ``verify_adapter`` and
    ``merge_adapter`` raise :class:`AdapterError` naming ``adapter_model.safetensors``,
    write no output folder, and leave the damaged file as it was (nothing lost).
(b) The real server started on a model folder whose ``model.safetensors`` is truncated (or
    whose ``config.json`` is not JSON) exits non-zero within a bounded time with a message
    saying the model could not be loaded and why, and leaves no process behind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pumpl_assets.core.merge import ADAPTER_WEIGHTS, AdapterError, merge_adapter, verify_adapter
from pumpl_serving.testing import start_server

pytestmark = pytest.mark.integration

EXIT_WAIT_S = 120.0  # the server must have exited by then (a hang fails the test)


def _build_adapter(base: Path, dest: Path) -> Path:
    """A real LoRA adapter (peft ``save_pretrained``) on the tiny model, with non-zero lora_B."""
    import torch
    from transformers import AutoModelForCausalLM

    from pumpl_assets.core.training.base import patch_peft_torchao

    patch_peft_torchao()
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    peft_model.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _build_adapter(tiny_model_dir, tmp_path_factory.mktemp("fault-adapter") / "lora")
    verify_adapter(path)  # the intact adapter passes: the failures below come from the damage
    return path


def _truncate_half(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _truncate_header(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:5])  # not even the 8-byte header length survives


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _garble_header(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header is no longer JSON
    p.write_bytes(bytes(data))


def _poison(value: float) -> Callable[[Path], str]:
    def write(p: Path) -> str:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(p))
        name = sorted(k for k in tensors if "lora_B" in k)[-1]
        tensors[name][0, 0] = value
        save_file(tensors, str(p))
        return name

    return write


CORRUPTIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated-half": (_truncate_half, r"cannot be loaded \(truncated or corrupt\?\)"),
    "truncated-header": (_truncate_header, r"cannot be loaded \(truncated or corrupt\?\)"),
    "empty-file": (_empty, r"cannot be loaded \(truncated or corrupt\?\)"),
    "garbled-header": (_garble_header, r"cannot be loaded \(truncated or corrupt\?\)"),
    "nan-weight": (_poison(float("nan")), r"NaN/Inf values in 1 tensor\(s\)"),
    "inf-weight": (_poison(float("-inf")), r"NaN/Inf values in 1 tensor\(s\)"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_adapter_is_refused_naming_the_file(
    kind: str, adapter_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "adapter"
    shutil.copytree(adapter_dir, bad)
    weights = bad / ADAPTER_WEIGHTS
    damage, reason = CORRUPTIONS[kind]
    poisoned = damage(weights)
    damaged_bytes = weights.read_bytes()

    with pytest.raises(AdapterError) as info:
        verify_adapter(bad)
    msg = str(info.value)
    assert str(weights) in msg, msg  # names the exact file
    assert re.search(reason, msg), msg
    if isinstance(poisoned, str):
        assert poisoned in msg, f"the NaN/Inf tensor {poisoned} is not named: {msg}"

    out = tmp_path / "merged"
    with pytest.raises(AdapterError, match=ADAPTER_WEIGHTS.replace(".", r"\.")):
        merge_adapter(tiny_model_dir, bad, out)
    assert not out.exists(), "a refused merge must not leave an output folder"
    assert not list(tmp_path.glob(".merged*")), "a refused merge must not leave a temp folder"
    assert weights.read_bytes() == damaged_bytes, "the damaged adapter must be left as it was"


def _truncate_model(folder: Path) -> str:
    _truncate_half(folder / "model.safetensors")
    return "SafetensorError"  # safetensors' own message ("incomplete metadata, file not fully covered")


def _garble_config(folder: Path) -> str:
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    return "JSONDecodeError"


@pytest.mark.parametrize(
    "damage", [_truncate_model, _garble_config], ids=["truncated-model-safetensors", "garbled-config-json"]
)
def test_server_on_corrupted_model_exits_nonzero_with_a_clear_message(
    damage: Callable[[Path], str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, model)
    needle = damage(model)

    srv = start_server(
        ["--model-path", str(model), "--threads", "1", "--poll-interval", "0"],
        log_path=tmp_path / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp_path / "data")},
        wait=False,
    )
    try:
        t0 = time.monotonic()
        try:
            rc = srv.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"server on a corrupted model still running after {EXIT_WAIT_S:g} s:\n{srv.log_text()[-3000:]}"
            )
        took = time.monotonic() - t0
        log = srv.log_text()
        assert rc != 0, f"exit code {rc} for a corrupted model:\n{log[-3000:]}"
        assert rc == 1, f"expected exit 1 (a worker could not load the model), got {rc}:\n{log[-3000:]}"
        assert "a worker could not load the model" in log, log[-3000:]
        assert needle in log, f"the log does not say what is wrong ({needle}):\n{log[-3000:]}"
        assert str(model.resolve()) in log, "the log does not name the model folder"
        # The server cleaned up after itself: no HTTP process or worker is left (before our own kill).
        deadline = time.monotonic() + 15
        while srv.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not srv.group_alive(), "processes of the failed server are still running"
        print(f"\ncorrupted model ({needle}): exit {rc} after {took:.1f} s")
    finally:
        srv.stop()
    assert not srv.group_alive()
