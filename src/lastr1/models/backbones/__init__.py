"""Sequence backbones the LaST-R1 policy can run on.

Every backbone takes input *embeddings*, explicit position ids, an explicit boolean attention mask
``(B, L, L_past + L)`` and an optional per-layer KV cache, and returns final-normed hidden states plus
the extended cache (see :class:`Backbone`). The policy never touches token ids of the backbone.

Implementations: :mod:`.tiny` (from scratch, the default) and :mod:`.qwen3_vl` (Qwen3-VL through
transformers, built by :mod:`.factory`; imported only when chosen, so transformers stays optional;
docs/backbones.md).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from lastr1.models.backbones.tiny import (
    HashWordTokenizer,
    ImageEncoder,
    KVCache,
    ProprioEncoder,
    TinyConfig,
    TinyTransformer,
)


@runtime_checkable
class Backbone(Protocol):
    """What the policy needs from a transformer."""

    d_model: int

    def __call__(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]: ...


__all__ = [
    "Backbone",
    "HashWordTokenizer",
    "ImageEncoder",
    "KVCache",
    "ProprioEncoder",
    "TinyConfig",
    "TinyTransformer",
]
