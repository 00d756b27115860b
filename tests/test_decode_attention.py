"""Grouped decode-step attention: the same attention as transformers' stock sdpa, one call per KV head."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pumpl_assets.core.decode_attention import (
    GROUPED_DECODE_SDPA,
    grouped_decode_sdpa_attention,
    use_grouped_decode_attention,
)


def _qkv(batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, seed: int = 0):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, 16, generator=g)
    k = torch.randn(batch, kv_heads, kv_len, 16, generator=g)
    v = torch.randn(batch, kv_heads, kv_len, 16, generator=g)
    return q, k, v


@pytest.mark.unit
@pytest.mark.parametrize("padded", [False, True])
def test_decode_step_equals_stock_sdpa(padded: bool) -> None:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=3, training=False, is_causal=True)
    q, k, v = _qkv(4, 9, 3, 1, 37)
    mask = None
    if padded:  # left padding, as the engine's batches have it: row 1 ignores its first 10 keys
        mask = torch.ones(4, 1, 1, 37, dtype=torch.bool)
        mask[1, :, :, :10] = False
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)  # type: ignore[arg-type]
    got, _ = grouped_decode_sdpa_attention(module, q, k, v, mask, scaling=0.25)
    assert got.shape == want.shape == (4, 1, 9, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if padded:  # the mask is honoured: unmasking the padding changes row 1 only
        free, _ = grouped_decode_sdpa_attention(module, q, k, v, None, scaling=0.25)
        assert not torch.allclose(free[1], got[1]) and torch.allclose(free[0], got[0], atol=1e-6)


@pytest.mark.unit
def test_rows_starting_at_different_columns_attend_in_runs_exactly() -> None:
    """Continuous batching's batches: later rows left-padded to the oldest row's width. Runs of rows skip
    the columns none of their rows sees, and the result equals stock sdpa over every column."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pumpl_assets.core.decode_attention import ROW_CHUNK, row_chunks

    module = SimpleNamespace(num_key_value_groups=3, training=False, is_causal=True)
    batch, kv_len = 2 * ROW_CHUNK + 3, 120
    q, k, v = _qkv(batch, 9, 3, 1, kv_len, seed=3)
    mask = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
    for row in range(batch):  # joined in order: each later row starts further right
        mask[row, :, :, : 6 * row] = False
    chunks = row_chunks(mask, batch, kv_len)
    assert chunks is not None and [c[2] for c in chunks] == [0, 6 * ROW_CHUNK, 12 * ROW_CHUNK]
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)  # type: ignore[arg-type]
    got, _ = grouped_decode_sdpa_attention(module, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # One call when slicing would save little: every row starts at column 0 or 1.
    assert row_chunks(torch.ones(batch, 1, 1, kv_len, dtype=torch.bool), batch, kv_len) is None
    assert row_chunks(mask[:ROW_CHUNK], ROW_CHUNK, kv_len) is None  # a batch of one run


@pytest.mark.unit
def test_prefill_and_training_fall_through_to_stock() -> None:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv(2, 4, 2, 5, 5)
    for training in (False, True):
        module = SimpleNamespace(num_key_value_groups=2, training=training, is_causal=True)
        want, _ = sdpa_attention_forward(module, q, k, v, None)  # type: ignore[arg-type]
        got, _ = grouped_decode_sdpa_attention(module, q, k, v, None)
        assert torch.equal(got, want)  # the same call: bit-identical


@pytest.mark.unit
def test_switch_only_grouped_query_sdpa_models(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # 4 heads, 2 KV heads
    assert model.config._attn_implementation == "sdpa"
    assert use_grouped_decode_attention(model) is True
    assert model.config._attn_implementation == GROUPED_DECODE_SDPA
    mha_config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    mha = LlamaForCausalLM(mha_config)
    assert use_grouped_decode_attention(mha) is False  # no key/value sharing: nothing to fold
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert use_grouped_decode_attention(eager) is False and eager.config._attn_implementation == "eager"


@pytest.mark.integration
def test_engine_generates_the_same_plans_with_either_attention(tiny_model_dir: Path) -> None:
    """fp32, a padded batch of different prompt lengths, greedy: identical text and tokens."""
    from pumpl_assets.core.generation import GenerationParams, load_engine

    prompts = ["Goal: strength. Time: 30 min.", "hi", "Create a 45-minute mobility session for my back"]
    params = GenerationParams(max_new_tokens=24, temperature=0.0)
    outs = {}
    for att in ("stock", "grouped"):
        eng = load_engine("transformers", tiny_model_dir, device="cpu", dtype="float32", decode_attention=att)  # type: ignore[arg-type]
        try:
            assert eng.attention == ("sdpa" if att == "stock" else GROUPED_DECODE_SDPA)  # type: ignore[attr-defined]
            outs[att] = [(g.text, g.completion_tokens) for g in eng.generate(prompts, params)]
        finally:
            eng.close()
    assert outs["grouped"] == outs["stock"]
    assert all(n > 1 for _, n in outs["grouped"])


@pytest.mark.unit
def test_unknown_decode_attention_is_a_clear_error(tiny_model_dir: Path) -> None:
    from pumpl_assets.core.generation import load_engine

    with pytest.raises(ValueError, match="unknown decode_attention 'flash'; supported: grouped, stock"):
        load_engine("transformers", tiny_model_dir, decode_attention="flash")  # type: ignore[arg-type]


@pytest.mark.unit
def test_growing_cache_holds_what_dynamic_cache_holds() -> None:
    """Prefill, 300 single-token steps (past a re-allocation), a row dropped, a crop: same tensors."""
    import torch
    from transformers.cache_utils import DynamicCache

    from pumpl_assets.core.decode_attention import KV_GROWTH, growing_kv_cache

    g = torch.Generator().manual_seed(0)
    grow, ref = growing_kv_cache(), DynamicCache()
    for cache in (grow, ref):
        assert cache.get_seq_length() == 0
    k, v = torch.randn(3, 2, 40, 8, generator=g), torch.randn(3, 2, 40, 8, generator=g)
    for cache in (grow, ref):
        cache.update(k, v, 0)
    buffer = grow.layers[0]._kbuf
    for step in range(KV_GROWTH + 44):
        if step == 100:
            for cache in (grow, ref):
                cache.batch_select_indices(torch.tensor([0, 2]))
        b = 3 if step < 100 else 2
        k1, v1 = torch.randn(b, 2, 1, 8, generator=g), torch.randn(b, 2, 1, 8, generator=g)
        gk, gv = grow.update(k1, v1, 0)
        rk, rv = ref.update(k1, v1, 0)
        assert torch.equal(gk, rk) and torch.equal(gv, rv)
    assert grow.get_seq_length() == ref.get_seq_length() == 40 + KV_GROWTH + 44
    assert grow.layers[0]._kbuf is not buffer  # it re-allocated on the way
    for cache in (grow, ref):
        cache.crop(-5)
    k1, v1 = torch.randn(2, 2, 1, 8, generator=g), torch.randn(2, 2, 1, 8, generator=g)
    gk, _ = grow.update(k1, v1, 0)
    rk, _ = ref.update(k1, v1, 0)
    assert torch.equal(gk, rk) and grow.get_seq_length() == 40 + KV_GROWTH + 40
