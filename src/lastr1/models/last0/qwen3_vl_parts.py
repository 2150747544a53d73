"""What a LaST0 policy on Qwen3-VL has instead of the tiny path's encoders and MoT.

Why a module of its own: the tiny path of :class:`~.policy.Last0Policy` must stay as it is (its
construction order fixes the seeded weights of every existing run), and everything here is Qwen's:
the backbone and observation encoder come from LaST-R1's factory (:func:`build_backbone`, the
``ours`` prompt: right-padded instruction, a learned ``<latent_start>``), the MoT wraps the loaded
decoder layers (:class:`~.qwen3_vl_mot.Qwen3VLMoT`), and the acting expert's fast image tokens are
the vision tower's merged tokens of the current frame average-pooled to ``fast_image_grid`` x
``fast_image_grid`` per camera -- when the reasoning expert runs on the same frame they are read
from its prefix, so the tower runs once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lastr1.models.backbones.run_settings import BackboneRunConfig, compute_scope
from lastr1.models.last0.qwen3_vl_mot import Qwen3VLMoT
from lastr1.models.policy_io import PolicyInputs

# the prefix handed from the observation encoder to the reasoning expert: embeddings (B, n_obs, D),
# key validity (B, n_obs), DeepStack features [(B, n_image_tokens, D)]
QwenPrefix = tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]


def check_supported(cfg: Any) -> None:
    """Refuse, in one line each, what LaST0 on Qwen3-VL does not implement."""
    if not cfg.last0.reasoning:
        raise ValueError(
            "policy.last0.reasoning=false (the acting expert alone) runs on policy.backbone=tiny only; "
            "with qwen3_vl the acting expert is a copy of the language model and needs its reasoning prefix"
        )
    if cfg.lora_rank:
        raise ValueError(
            f"policy.lora_rank={cfg.lora_rank}: LoRA is not implemented for policy.family=last0 (both experts "
            "train in full); set policy.lora_rank=0 (docs/last0.md)"
        )


def build_parts(cfg: Any, run: BackboneRunConfig) -> tuple[nn.Module, nn.Module, Qwen3VLMoT]:
    """``(backbone, observation encoder, MoT)`` for a LaST0 policy on Qwen3-VL. Activation
    checkpointing is the MoT's own (the decoder layers' ``forward`` is never called), so the backbone
    is built without transformers' and the MoT is told instead."""
    from lastr1.models.backbones.factory import build_backbone

    check_supported(cfg)
    backbone, encoder = build_backbone(cfg, dataclasses.replace(run, gradient_checkpointing=False))
    mot = Qwen3VLMoT(backbone, n_experts=2)
    mot.gradient_checkpointing = run.gradient_checkpointing
    return backbone, encoder, mot


def _pool(tokens: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """Merged image tokens ``(B, V, h*w, D)`` (row-major over the merged grid) -> ``(B, V*size², D)``."""
    b, v, _, d = tokens.shape
    h, w = grid
    maps = tokens.reshape(b * v, h, w, d).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(maps, size)
    return pooled.flatten(2).transpose(1, 2).reshape(b, v * size * size, d)


class QwenLast0Inputs:
    """The two readouts of one observation: the reasoning prefix (through the encoder) and the acting
    expert's fast image tokens. Holds references only; the policy owns the modules."""

    def __init__(self, encoder: nn.Module, fast_grid: int) -> None:
        self.encoder = encoder
        self.fast_grid = fast_grid
        model = encoder._model
        merge = int(model.config.vision_config.spatial_merge_size)
        _, h, w = (int(x) for x in encoder.grid_thw[0])
        self.merged_grid = (h // merge, w // merge)

    def _fast_from_prefix(self, embeds: torch.Tensor) -> torch.Tensor:
        """The merged image tokens inside a prefix: per view ``[<vision_start>, n tokens, <vision_end>]``."""
        n, v = self.encoder.tokens_per_view, self.encoder.num_views
        views = embeds[:, : v * (n + 2)].reshape(embeds.shape[0], v, n + 2, -1)
        return views[:, :, 1 : n + 1]

    def _fast_from_tower(self, images: torch.Tensor) -> torch.Tensor:
        """The merged image tokens ``(B, V, n, D)`` of the vision tower alone (no prefix needed)."""
        from lastr1.models.backbones.qwen3_vl_prompt import vision_features

        enc = self.encoder
        b, v = images.shape[:2]
        with compute_scope(images.device, enc.mixed):
            tokens, _ = vision_features(enc._model, enc.pixels(images), enc.grid_thw.repeat(b, 1))
        return tokens.float().view(b, v, enc.tokens_per_view, -1)

    def __call__(
        self, inputs: PolicyInputs, proprio: torch.Tensor | None, slow: bool = True, fast: bool = True
    ) -> tuple[QwenPrefix | None, torch.Tensor | None]:
        """``(prefix or None, fast image tokens (B, V*f², D) or None)`` -- the tiny
        :class:`~.encoders.TwoRateImageEncoder`'s ``(slow, fast)``, with the whole prefix as ``slow``."""
        fast = fast and self.fast_grid > 0
        prefix, merged = None, None
        if slow:
            embeds, valid, deepstack, _ = self.encoder(
                inputs.images, inputs.instruction_ids, inputs.instruction_mask, proprio
            )
            prefix = (embeds, valid, deepstack)
            merged = self._fast_from_prefix(embeds) if fast else None
        elif fast:
            merged = self._fast_from_tower(inputs.images)
        pooled = _pool(merged, self.merged_grid, self.fast_grid) if merged is not None else None
        return prefix, pooled
