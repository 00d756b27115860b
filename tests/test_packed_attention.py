"""Packed-row attention (core/training/packed_attention.py) equals transformers' block-diagonal SDPA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pumpl_assets.core.training.packed_attention import (
    PACKED_SDPA,
    _segment_bounds,
    use_packed_attention,
)

pytestmark = pytest.mark.unit


def test_segments_start_where_positions_restart() -> None:
    assert _segment_bounds([0, 1, 2, 0, 1, 0]) == [0, 3, 5, 6]
    assert _segment_bounds([5, 6, 0, 1]) == [0, 2, 4]  # a row that starts mid-example
    assert _segment_bounds([0, 1, 2]) == [0, 3]


def _lora_model(path: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B, so LoRA gradients flow through attention too
            torch.nn.init.normal_(p, std=0.05)
    return model


def _loss_and_grads(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[float, list[torch.Tensor]]:
    model.train()
    model.zero_grad()
    out = model(**batch, use_cache=False)
    out.loss.backward()
    return float(out.loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_packed_rows_give_the_loss_and_gradients_of_the_block_diagonal_mask(tiny_model_dir: Path) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (2, 30), generator=g)
    # row 0: examples of 12, 11 and 7 tokens; row 1: 20 tokens then 10 of padding (its own segment)
    positions = torch.tensor(
        [list(range(12)) + list(range(11)) + list(range(7)), list(range(20)) + list(range(10))]
    )
    labels = ids.clone()
    labels[1, 20:] = -100
    batch = {"input_ids": ids, "position_ids": positions, "labels": labels}

    stock = _lora_model(tiny_model_dir)
    stock_loss, stock_grads = _loss_and_grads(stock, batch)
    packed = _lora_model(tiny_model_dir)
    assert use_packed_attention(packed)
    assert packed.get_base_model().config._attn_implementation == PACKED_SDPA
    packed_loss, packed_grads = _loss_and_grads(packed, batch)

    assert packed_loss == pytest.approx(stock_loss, rel=1e-5)
    for a, b in zip(stock_grads, packed_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the examples really are separated: joining them into one changes the loss
    joined = dict(batch, position_ids=torch.arange(30).expand(2, -1))
    assert _loss_and_grads(packed, joined)[0] != pytest.approx(packed_loss, rel=1e-5)


def test_inference_and_padding_masks_take_the_stock_path(tiny_model_dir: Path) -> None:
    model = _lora_model(tiny_model_dir)
    ids = torch.randint(10, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: only a mask can express it
    with torch.no_grad():
        model.eval()
        before = model(input_ids=ids, attention_mask=mask).logits
        use_packed_attention(model)
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(before, after)


def test_a_model_on_another_attention_is_left_alone(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_packed_attention(model)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("packed", [True, False])
def test_the_recipe_flag_chooses_the_attention_path(
    tiny_model_dir: Path, tmp_path: Path, packed: bool
) -> None:
    from pumpl_assets.core.schemas import TrainingConfig
    from pumpl_assets.core.training import run
    from tests.test_training import _example

    cfg = TrainingConfig(
        backend="peft", rank=4, alpha=8, max_steps=2, warmup_steps=0, seq_len=1024, packed_attention=packed
    )
    assert TrainingConfig().packed_attention is False  # the stock path stays the default (schemas.py)
    result = run.train_lora(tiny_model_dir, cfg, [_example(i) for i in range(4)], [], tmp_path, device="cpu")
    assert result.extra["attention"] == ("packed_sdpa" if packed else "stock")
    assert result.steps == 2
