"""The in-place KV cache (core/kv_cache.py): same tokens as transformers' DynamicCache, no per-step copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pumpl_assets.core import kv_cache
from pumpl_assets.core.generation import GenerationParams, load_engine
from pumpl_assets.core.kv_cache import PreallocatedLayer, preallocated_cache

pytestmark = pytest.mark.unit


def _kv(b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g)


def test_layer_appends_like_concatenation_and_grows_past_its_capacity() -> None:
    layer: Any = PreallocatedLayer(capacity=4)  # smaller than what is written: it must grow
    ref_k, ref_v = [], []
    for step, t in enumerate((3, 1, 1, 5)):
        k, v = _kv(3, t, step)
        got_k, got_v = layer.update(k, v)
        ref_k.append(k)
        ref_v.append(v)
        assert torch.equal(got_k, torch.cat(ref_k, dim=-2))
        assert torch.equal(got_v, torch.cat(ref_v, dim=-2))
    assert layer.get_seq_length() == 10
    assert layer._kbuf.shape[-2] >= 10


def test_layer_writes_in_place_while_it_fits() -> None:
    layer: Any = PreallocatedLayer(capacity=16)
    layer.update(*_kv(2, 5, 0))
    buf = layer._kbuf
    for step in range(1, 6):
        layer.update(*_kv(2, 1, step))
    assert layer._kbuf is buf  # no reallocation, no copy of the earlier tokens
    assert layer.keys.data_ptr() == buf.data_ptr()


def test_dropping_rows_keeps_the_others_and_crop_shortens() -> None:
    layer: Any = PreallocatedLayer(capacity=8)
    k, v = _kv(3, 4, 0)
    layer.update(k, v)
    layer.batch_select_indices(torch.tensor([0, 2]))
    assert torch.equal(layer.keys, k[[0, 2]])
    k2, v2 = _kv(2, 1, 1)
    layer.update(k2, v2)
    assert torch.equal(layer.values, torch.cat([v[[0, 2]], v2], dim=-2))
    layer.crop(-2)
    assert layer.get_seq_length() == 3 and torch.equal(layer.keys, k[[0, 2], :, :3])


def test_models_with_sliding_window_layers_keep_their_own_cache() -> None:
    from transformers import LlamaConfig, MistralConfig

    class _M:
        def __init__(self, config: object) -> None:
            self.config = config

    llama = LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    cache = preallocated_cache(_M(llama), 64)
    assert cache is not None and len(cache.layers) == 3
    assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    windowed = MistralConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, sliding_window=16
    )
    assert preallocated_cache(_M(windowed), 64) is None


def test_engine_decodes_the_same_tokens_as_with_dynamic_cache(
    smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left-padded prompts of different lengths, rows finishing at different steps (rows dropped).

    The real SmolLM2 (a random tiny model writes nearly the same tokens whatever its context)."""
    engine = load_engine("transformers", smollm2_dir, dtype="float32")
    prompts = ["Plan a workout", "A much longer prompt about a strength session for a beginner", "Hi"]
    params = [GenerationParams(max_new_tokens=n, temperature=0.0) for n in (40, 7, 23)]
    used: list[object] = []
    real = kv_cache.preallocated_cache

    def spy(model: object, capacity: int) -> object:
        cache = real(model, capacity)
        used.append(cache)
        return cache

    monkeypatch.setattr(kv_cache, "preallocated_cache", spy)
    fast = engine.generate(prompts, params)
    assert used and used[0] is not None  # the in-place cache was the one decoded with
    monkeypatch.setattr(kv_cache, "preallocated_cache", lambda model, capacity: None)
    stock = engine.generate(prompts, params)
    assert [g.token_ids for g in fast] == [g.token_ids for g in stock]
    assert [len(g.token_ids) for g in fast] == [40, 7, 23]


def test_dropping_rows_moves_only_the_filled_prefix_in_place() -> None:
    """Finished rows leave without reallocating: the buffer's unwritten capacity is never copied."""
    layer: Any = PreallocatedLayer(capacity=64)
    k, v = _kv(4, 3, 0)
    layer.update(k, v)
    base_ptr = layer._kbuf.data_ptr()
    layer.batch_select_indices(torch.tensor([1, 3]))
    assert layer._kbuf.data_ptr() == base_ptr and layer._kbuf.shape[0] == 2
    assert torch.equal(layer.keys, k[[1, 3]]) and torch.equal(layer.values, v[[1, 3]])
    k2, v2 = _kv(2, 1, 1)
    layer.update(k2, v2)  # appending after a drop still writes in place
    assert layer._kbuf.data_ptr() == base_ptr
    assert torch.equal(layer.keys, torch.cat([k[[1, 3]], k2], dim=-2))
