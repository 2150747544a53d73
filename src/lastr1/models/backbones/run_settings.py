"""How a pretrained backbone is run and trained: precision, activation checkpointing, a frozen vision
tower. Settings of a run, not of the weights.

Why not in :class:`~lastr1.models.policy.PolicyConfig`: that config is the architecture, frozen with
the weights it describes; none of these settings adds, removes or reshapes a weight (bf16 only changes
how the same weights are stored), so the same checkpoint may be trained in bf16 on a GPU and evaluated
in float32 on a CPU. LoRA does add weights (the adapters), so its rank and targets are PolicyConfig
fields. A policy keeps the settings it was built with and saves them as ``backbone_run.json`` beside
``decode.json``: a later stage that loads the checkpoint without giving its own (RL loads SFT's
checkpoint) runs the backbone the same way (docs/backbones.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

RUN_FILE = "backbone_run.json"
PRECISIONS = ("fp32", "bf16-mixed", "bf16-true")


@dataclass(frozen=True)
class BackboneRunConfig:
    """Run settings of a pretrained (``qwen3_vl``) backbone; the tiny backbone takes only the defaults."""

    # fp32: float32 weights and compute; bf16-mixed: float32 weights, the backbone computes under bf16
    # autocast; bf16-true: the backbone's weights are stored in bf16 (half the memory; our heads and LoRA
    # adapters stay float32; AdamW steps on bf16 weights round away updates below ~1/256 of a weight,
    # so train those only through LoRA or with a large lr)
    precision: Literal["fp32", "bf16-mixed", "bf16-true"] = "fp32"
    # recompute every decoder and vision layer in the backward pass instead of keeping its activations
    # (transformers' activation checkpointing; the KV cache of the latent steps is kept)
    gradient_checkpointing: bool = False
    # keep the vision tower and its DeepStack mergers fixed: no gradients, not in the optimizer
    freeze_vision: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"backbone_run.precision={self.precision!r} must be one of {list(PRECISIONS)}")

    @property
    def is_default(self) -> bool:
        return self == BackboneRunConfig()

    def check_for(self, backbone: str) -> None:
        """The tiny backbone has no pretrained parts: any non-default setting is a mistake there."""
        if backbone == "tiny" and not self.is_default:
            default = BackboneRunConfig()
            given = [
                f"backbone_run.{f.name}={getattr(self, f.name)}"
                for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)
            ]
            raise ValueError(
                f"{', '.join(given)} applies to policy.backbone=qwen3_vl; leave backbone_run at its "
                "defaults for the tiny backbone"
            )


@contextlib.contextmanager
def compute_scope(device: torch.device, mixed: bool) -> Iterator[None]:
    """bf16 autocast for ``precision=bf16-mixed``; nothing otherwise."""
    if mixed:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
