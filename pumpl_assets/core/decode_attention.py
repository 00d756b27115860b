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

With continuous batching (``HFEngine.generate(..., max_batch=k)``) a row that joins late is
left-padded to the width of the oldest row, and a masked column costs the kernel as much as a real
one; so a batch whose rows start at very different columns attends in runs of :data:`ROW_CHUNK`
consecutive rows, each from the first column one of its rows sees (:func:`row_chunks`; exact).

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
ROW_CHUNK = 8  # rows per attention call when the batch's rows start at different cache columns


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
    chunks = row_chunks(attention_mask, batch, key.shape[2])
    if chunks is None:
        out = F.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    else:
        out = folded.new_empty(folded.shape)
        for first, end, col in chunks:
            out[first:end] = F.scaled_dot_product_attention(
                folded[first:end],
                key[first:end, :, col:],
                value[first:end, :, col:],
                attn_mask=attention_mask[first:end, :, :, col:],
                scale=scaling,
            )
    return out.reshape(batch, 1, heads, head_dim), None


def row_chunks(attention_mask: Any, batch: int, kv_len: int) -> list[tuple[int, int, int]] | None:
    """Runs of :data:`ROW_CHUNK` consecutive rows, each with the first cache column any of its rows
    attends to — ``(first row, end row, first column)`` — or None when one call over every column is
    as good (no boolean padding mask, a small batch, or less than a quarter of the work saved).

    Continuous batching left-pads a newcomer's cache rows to the width of the oldest row in the batch,
    and a masked column costs the SDPA kernel as much as a real one; rows join in order, so consecutive
    rows start at similar columns and each run can skip the columns none of its rows sees (exact: those
    columns are masked for every row of the run). Views, no copies."""
    import torch

    if attention_mask is None or attention_mask.dtype != torch.bool or batch <= ROW_CHUNK:
        return None
    first_seen = attention_mask[:, 0, 0, :].to(torch.uint8).argmax(-1).tolist()  # left padding: a suffix
    chunks = []
    for b in range(0, batch, ROW_CHUNK):
        end = min(b + ROW_CHUNK, batch)
        chunks.append((b, end, min(first_seen[b:end])))
    saved = sum((end - b) * col for b, end, col in chunks)
    return chunks if saved * 4 >= batch * kv_len else None


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


def _set_layer_states(layer: Any, keys: Any, values: Any) -> None:
    if hasattr(layer, "replace_states"):
        layer.replace_states(keys, values)
    else:  # a stock DynamicLayer holds plain tensors
        layer.keys, layer.values = keys, values


def _left_pad(states: Any, width: int) -> Any:
    import torch.nn.functional as F

    return F.pad(states, (0, 0, width - states.shape[-2], 0)) if states.shape[-2] < width else states


def concat_cache_rows(cache: Any, new: Any) -> int:
    """Append the rows of ``new`` after those of ``cache``, layer by layer, in place of ``cache``.

    The two hold different numbers of columns (tokens); each is right-aligned to the wider one, the
    narrower getting zero keys/values on the left — left padding, which the caller's attention mask
    hides, exactly like the left padding of a batched prefill. Returns the number of columns that were
    added on the left of ``cache``'s rows (the caller pads their attention mask by as much).
    Works for the stock ``DynamicCache`` and :class:`GrowingKVCache` alike (continuous batching in
    :meth:`~pumpl_assets.core.generation.HFEngine.generate`)."""
    import torch

    if len(cache.layers) != len(new.layers):
        raise ValueError(f"caches of {len(cache.layers)} and {len(new.layers)} layers cannot be merged")
    grown = 0
    for old_layer, new_layer in zip(cache.layers, new.layers, strict=True):
        width = max(old_layer.keys.shape[-2], new_layer.keys.shape[-2])
        grown = width - old_layer.keys.shape[-2]
        keys = torch.cat([_left_pad(old_layer.keys, width), _left_pad(new_layer.keys, width)], dim=0)
        values = torch.cat([_left_pad(old_layer.values, width), _left_pad(new_layer.values, width)], dim=0)
        _set_layer_states(old_layer, keys, values)
    return grown


def drop_leading_columns(cache: Any, count: int) -> None:
    """Drop the first ``count`` columns of every layer — columns that are padding for every row left,
    so attention no longer spends time on them (positions are explicit, so nothing else moves)."""
    if count <= 0:
        return
    for layer in cache.layers:
        _set_layer_states(layer, layer.keys[..., count:, :], layer.values[..., count:, :])


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

        def replace_states(self, keys: Any, values: Any) -> None:
            """Hold exactly ``keys``/``values`` (rows merged or columns dropped), with head-room again."""
            b, h, t, d = keys.shape
            self._kbuf = keys.new_empty(b, h, t + KV_GROWTH, d)
            self._vbuf = values.new_empty(b, values.shape[1], t + KV_GROWTH, values.shape[-1])
            self._kbuf[..., :t, :] = keys
            self._vbuf[..., :t, :] = values
            self._len = t
            self._views()

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
