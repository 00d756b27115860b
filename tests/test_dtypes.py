"""The core's one dtype table (pumpl_assets/core/dtypes.py): every spelling, one error message."""

from __future__ import annotations

import pytest

from pumpl_assets.core.dtypes import DTYPES, canonical_dtype, torch_dtype


@pytest.mark.unit
def test_one_table_for_every_spelling() -> None:
    import torch

    assert canonical_dtype("bf16") == canonical_dtype("BFloat16") == "bfloat16"
    assert torch_dtype("fp32") is torch.float32 and torch_dtype("float16") is torch.float16
    assert set(DTYPES.values()) == {"float32", "bfloat16", "float16"}
    with pytest.raises(ValueError, match=r"unknown dtype 'int3'; use one of float32, fp32"):
        canonical_dtype("int3")


@pytest.mark.unit
def test_generation_merge_and_quantize_use_the_table() -> None:
    import torch

    from pumpl_assets.core.generation import _resolve_dtype
    from pumpl_assets.core.merge import _torch_dtype

    assert _resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert _torch_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; use auto"):
        _resolve_dtype("fp8", "cpu")
