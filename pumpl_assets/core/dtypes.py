"""The one dtype table of the core: names (and short aliases) → canonical names → torch dtypes.

Used by training (recipe ``dtype``), generation engines, merge and quantization, so every place
accepts the same spellings and says the same thing about an unknown one. Importing this module
does not import torch.
"""

from __future__ import annotations

from typing import Any

# alias → canonical torch attribute name
DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def canonical_dtype(name: str) -> str:
    """``"bf16"`` → ``"bfloat16"``; ``ValueError`` naming the accepted spellings otherwise."""
    try:
        return DTYPES[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` for ``name`` (any spelling in :data:`DTYPES`)."""
    import torch

    return getattr(torch, canonical_dtype(name))
