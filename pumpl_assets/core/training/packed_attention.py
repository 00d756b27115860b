"""Packed-row attention: SDPA run per packed example instead of over the whole row.

Why: the plain recipe packs ~3 examples into one ``seq_len`` row. transformers' ``sdpa`` path then
builds a block-diagonal mask and runs ONE attention over the whole row, so the CPU flash kernel
computes (and back-propagates) every masked-out cross-example block: on this 2-core box that was
~40% of a training step (profiled: 2.0 s of 5.3 s). Attention is linear in the number of
segments, so running causal SDPA on each example's own slice gives the same result (gradients
equal to ~1e-6, see tests/test_packed_attention.py) at a fraction of the cost. This is what
flash-attention's varlen kernels do on CUDA; torch has no varlen SDPA on CPU, hence this function.

Registered with transformers' ``AttentionInterface`` under :data:`PACKED_SDPA`, together with the
stock ``sdpa`` mask function, so every call that is NOT a training-mode packed row (eval mode, no
``position_ids``, a cache) falls through to the stock ``sdpa_attention_forward`` unchanged. The
collator's packed rows carry no padding mask: padding is its own trailing segment (see
:func:`pumpl_assets.core.training.data.collate`).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

PACKED_SDPA = "pumpl_packed_sdpa"


def _segment_bounds(positions: list[int]) -> list[int]:
    """Start of every example in one packed row (where the position restarts at 0), plus the end."""
    starts = [i for i, p in enumerate(positions) if p == 0]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [*starts, len(positions)]


def packed_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """``AttentionInterface`` function: causal SDPA per packed segment; stock SDPA otherwise.

    ``query`` is ``[batch, heads, q_len, head_dim]``, ``key``/``value`` ``[batch, kv_heads, kv_len,
    head_dim]``; returns ``([batch, q_len, heads, head_dim], None)`` like the stock function.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.shape[2]
    packed = (
        module.training  # the recipe's packed rows; inference (padding masks, caches) stays stock
        and position_ids is not None
        and key.shape[2] == q_len  # no KV cache: keys are exactly this row's tokens
        and position_ids.shape[-1] == q_len
        and (attention_mask is None or attention_mask.dim() == 4)  # only masks transformers derived
    )
    if not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads = query.shape[0], query.shape[1]
    gqa = key.shape[1] != heads
    positions = position_ids.expand(batch, -1).tolist()
    rows = []
    for b in range(batch):
        bounds = _segment_bounds(positions[b])
        segments = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            for s, e in pairwise(bounds)
            if e > s
        ]
        rows.append(torch.cat(segments, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :data:`PACKED_SDPA` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA


def use_packed_attention(model: Any) -> bool:
    """Switch ``model`` (a PEFT-wrapped or plain transformers model) to :data:`PACKED_SDPA`.

    Only from the stock ``sdpa`` implementation (an unsloth or flash-attention model keeps its
    own); returns whether it switched.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    base.set_attn_implementation(register())
    return True
