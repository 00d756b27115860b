"""A KV cache that appends in place: the decode loop's cache for the transformers engines.

Why not transformers' ``DynamicCache``: its layers append with ``torch.cat``, which copies the
whole cache on every decode step. Profiled on the 2-core box (SmolLM2-135M, bf16, batch 16, a
plan's ~800-token context) that copy was 42% of a decode step — more than the matmuls. This cache
keeps each layer's keys/values in a buffer sized for the whole generation (prompt + budget) and
hands attention a view of the filled prefix, so a step writes one token's K/V instead of
re-copying all of them; greedy outputs are token-for-token identical (tests/test_kv_cache.py).
``StaticCache`` also preallocates, but attends over its full length on every step and does not
support dropping finished rows (``batch_select_indices``), which the decode loop relies on.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """``DynamicLayer`` whose ``keys``/``values`` are views of a buffer that grows by doubling."""

    def __init__(self, capacity: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self._len = 0
        self._kbuf: Any = None
        self._vbuf: Any = None

    def _refresh_views(self) -> None:
        self.keys = self._kbuf[:, :, : self._len]
        self.values = self._vbuf[:, :, : self._len]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self._len + key_states.shape[-2]
        if self._kbuf is None or need > self._kbuf.shape[-2]:
            old = 0 if self._kbuf is None else self._kbuf.shape[-2]
            cap = max(need, self.capacity, 2 * old)
            b, _, _, _ = key_states.shape
            kbuf = key_states.new_empty((b, key_states.shape[1], cap, key_states.shape[-1]))
            vbuf = value_states.new_empty((b, value_states.shape[1], cap, value_states.shape[-1]))
            if self._len:
                kbuf[:, :, : self._len] = self._kbuf[:, :, : self._len]
                vbuf[:, :, : self._len] = self._vbuf[:, :, : self._len]
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[:, :, self._len : need] = key_states
        self._vbuf[:, :, self._len : need] = value_states
        self._len = need
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len

    def batch_select_indices(self, indices: Any) -> None:
        """Keep rows ``indices``: only their filled prefix moves, to the front of the same buffer
        (gathering whole buffers would copy the unwritten capacity too: ~0.8 GB per finished row at
        batch 16 with a plan's budget, which made evaluation slower than ``DynamicCache``)."""
        if self._kbuf is None:
            return
        keep, n = int(indices.numel()), self._len
        if n:
            self._kbuf[:keep, :, :n] = self._kbuf[indices, :, :n]  # the gather copies first: no aliasing
            self._vbuf[:keep, :, :n] = self._vbuf[indices, :, :n]
        self._kbuf, self._vbuf = self._kbuf[:keep], self._vbuf[:keep]
        self._refresh_views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self._kbuf is not None:
            self._len = max(0, self._len + tokens_to_remove)
            self._refresh_views()
        elif tokens_to_remove != 0:
            raise NotImplementedError("PreallocatedLayer.crop takes a negative token count")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._kbuf is not None:
            self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
            self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
            self._refresh_views()

    def reset(self) -> None:
        super().reset()
        self._len = 0
        self._kbuf = self._vbuf = None


def preallocated_cache(model: Any, capacity: int) -> Cache | None:
    """A cache of :class:`PreallocatedLayer` sized for ``capacity`` tokens per row, or ``None``
    (the model's own default cache) when the model has layers this cache does not model
    (sliding-window or linear-attention layers)."""
    config = model.config.get_text_config(decoder=True)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
    if n_layers == 0 or any(t != "full_attention" for t in layer_types):
        return None
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return None
    return Cache(layers=[PreallocatedLayer(capacity=capacity) for _ in range(len(layer_types))])
