"""CPU decode steps for the Hugging Face engines: grouped-query attention and a growing KV cache.

Two parts, both profiled on SmolLM2-135M, batch 16, bf16, 2 cores (aten op self time per step).

**Attention** (:func:`grouped_decode_sdpa_attention`).

Why: at a decode step (one new token per row) transformers' ``sdpa`` path first copies every cached
key and value ``heads / kv_heads`` times (``repeat_kv``; torch's ``enable_gqa`` is not used when a
padding mask is present) and then runs the CPU flash kernel with a query length of 1 per head,
which it parallelises badly. Profiled on SmolLM2-135M (9 query heads, 3 key/value heads), batch 16,
800 cached tokens, bf16, 2 cores: 368 ms per step, 78% of it in that attention and its copies
(``aten::_scaled_dot_product_flash_attention_for_cpu`` 64%, ``aten::copy_`` 14%). The query heads
that share a key/value head are independent queries against the same keys, so folding them into the
query-length axis — ``[batch, kv_heads, group, head_dim]`` — gives the same result with no copy and
one kernel call per key/value head (same values to ~1e-5 in bf16; tests/test_decode_attention.py).

Registered with transformers' ``AttentionInterface`` (its extension point for attention kernels)
under :data:`GROUPED_DECODE_SDPA`, with the stock ``sdpa`` mask function; every call that is not a
single-token decode step (prefill, the loss pass, training) falls through to the stock
``sdpa_attention_forward`` unchanged.

**KV cache** (:class:`GrowingKVCache`). With the attention fixed, ``aten::cat`` was 32% of a step:
transformers' ``DynamicLayer`` concatenates every new key and value onto the whole cache, so each
step copies the full cache of every layer (quadratic in the plan's length). This cache keeps a
buffer per layer with room for :data:`KV_GROWTH` more tokens, writes each step into it in place and
hands attention a view of the filled part; the buffer is re-allocated once per ``KV_GROWTH``
tokens. Same keys and values, so the same results (tests/test_decode_attention.py).
"""

from __future__ import annotations

import functools
from typing import Any

GROUPED_DECODE_SDPA = "pumpl_grouped_decode_sdpa"
KV_GROWTH = 256  # tokens of head-room per re-allocation


def grouped_decode_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """``AttentionInterface`` function. ``query`` is ``[batch, heads, q_len, head_dim]``,
    ``key``/``value`` ``[batch, kv_heads, kv_len, head_dim]``; returns ``([batch, q_len, heads,
    head_dim], None)`` like the stock function."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    decode_step = (
        q_len == 1
        and kv_heads < heads
        and heads % kv_heads == 0
        and not module.training
        and kwargs.get("position_bias") is None
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[2] == 1))
    )
    if not decode_step:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    group = heads // kv_heads
    # Query head h reads key/value head h // group (repeat_kv's order), so heads fold row-major.
    folded = query.reshape(batch, kv_heads, group, head_dim)
    # A [batch, 1, 1, kv_len] padding mask broadcasts over the folded axis; no causal mask is
    # needed for the one new token, which may see every cached position.
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, 1, heads, head_dim), None


def register() -> str:
    """Register :data:`GROUPED_DECODE_SDPA` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(GROUPED_DECODE_SDPA, grouped_decode_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_DECODE_SDPA, sdpa_mask)
    return GROUPED_DECODE_SDPA


def use_grouped_decode_attention(model: Any) -> bool:
    """Switch ``model`` (plain transformers, before any PEFT wrapping) to :data:`GROUPED_DECODE_SDPA`.

    Only from the stock ``sdpa`` implementation and only for grouped-query models; returns whether
    it switched.
    """
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or not heads or kv_heads >= heads:
        return False
    model.set_attn_implementation(register())
    return True


def growing_kv_cache() -> Any:
    """A fresh :class:`GrowingKVCache`."""
    return _growing_kv_cache_class()()


@functools.cache
def _growing_kv_cache_class() -> Any:
    """The cache classes, defined once on first use (transformers is imported lazily, like the engines)."""
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class GrowingKVLayer(DynamicLayer):  # type: ignore[misc]
        """A ``DynamicLayer`` whose keys/values are views into a buffer with head-room."""

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self._kbuf: Any = None
            self._vbuf: Any = None
            self._len = 0

        def _views(self) -> None:
            self.keys = self._kbuf[..., : self._len, :]
            self.values = self._vbuf[..., : self._len, :]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._len + key_states.shape[-2]
            if self._kbuf is None or need > self._kbuf.shape[-2]:
                b, h, _, d = key_states.shape
                kbuf = key_states.new_empty(b, h, need + KV_GROWTH, d)
                vbuf = value_states.new_empty(
                    b, value_states.shape[1], need + KV_GROWTH, value_states.shape[-1]
                )
                if self._len:
                    kbuf[..., : self._len, :] = self._kbuf[..., : self._len, :]
                    vbuf[..., : self._len, :] = self._vbuf[..., : self._len, :]
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[..., self._len : need, :] = key_states
            self._vbuf[..., self._len : need, :] = value_states
            self._len = need
            self._views()
            return self.keys, self.values

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)  # slices the views; the buffer keeps its prefix
            if self.is_initialized and self._kbuf is not None and self.keys is not None:
                self._len = int(self.keys.shape[-2])

        def batch_select_indices(self, indices: Any) -> None:
            if self.is_initialized and self._kbuf is not None:
                self._kbuf = self._kbuf.index_select(0, indices)
                self._vbuf = self._vbuf.index_select(0, indices)
                self._views()

        def reorder_cache(self, beam_idx: Any) -> None:
            self.batch_select_indices(beam_idx)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self._kbuf is not None:
                self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
                self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
                self._views()

    class GrowingKVCache(DynamicCache):  # type: ignore[misc]
        """``DynamicCache`` made of :class:`GrowingKVLayer` (one per decoder layer, created on use)."""

        def __init__(self) -> None:
            Cache.__init__(self, layer_class_to_replicate=GrowingKVLayer)

    return GrowingKVCache
