"""Teacher from a local `transformers` vision checkpoint (DINOv2 / DINOv3 / SigLIP / CLIP class).

For users who have real foundation-model weights on disk (e.g. the paper's DINOv3, or SigLIP as in
VLA backbones). Only ever loads from the given folder (``local_files_only=True``): nothing is
downloaded. Preprocessing reads ``image_mean``/``image_std`` from ``preprocessor_config.json`` when
present (ImageNet otherwise) and resizes with torch, so no torchvision-backed image processor is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lastr1.models.teachers.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TeacherConfig,
    preprocess_images,
    select_views,
)

# model_type values whose sequence starts with a CLS token (the rest of the tokens are patches,
# possibly after register tokens, which the mean over "patches" then includes — harmless).
_CLS_MODELS = ("dinov2", "dinov2_with_registers", "dinov3_vit", "vit", "clip_vision_model")


class HFVisionTeacher:
    """Per-frame pooled feature of a frozen local transformers vision encoder."""

    name = "hf"

    def __init__(self, cfg: TeacherConfig):
        try:
            import torch
            from transformers import AutoConfig, AutoModel
        except ImportError as err:
            raise ValueError("the hf teacher needs transformers: run `pip install transformers`") from err
        if not cfg.model_path:
            raise ValueError("teacher name='hf' needs model_path (a local transformers checkpoint folder)")
        folder = Path(cfg.model_path)
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"teacher model_path={str(folder)!r} has no config.json; give a local checkpoint folder"
            )
        self.cfg = cfg
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        vision_config = getattr(config, "vision_config", None)
        if vision_config is not None:  # a dual-tower checkpoint (SigLIP/CLIP): keep the image tower
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            self.model = model.vision_model
            self.model_type = vision_config.model_type
            hidden = vision_config.hidden_size
            self.patch_size = vision_config.patch_size
        else:
            self.model = AutoModel.from_pretrained(folder, local_files_only=True)
            self.model_type = config.model_type
            hidden = config.hidden_size
            self.patch_size = getattr(config, "patch_size", 14)
        if cfg.image_size % self.patch_size:
            raise ValueError(
                f"teacher image_size={cfg.image_size} must be a multiple of the model's patch size {self.patch_size}"
            )
        self.model.eval().requires_grad_(False)
        self.hidden = int(hidden)
        self.mean, self.std = _read_norm(folder)
        self._torch = torch

    @property
    def dim(self) -> int:
        return self.hidden * (2 if self.cfg.pooling == "cls_mean" else 1) * len(self.cfg.views)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        out = []
        for start in range(0, len(images), self.cfg.batch_size):
            pixels = preprocess_images(
                np.asarray(images[start : start + self.cfg.batch_size]),
                self.cfg.image_size,
                self.mean,
                self.std,
            )
            with torch.inference_mode():
                kwargs = {}
                if "siglip" in self.model_type or "clip" in self.model_type:
                    kwargs["interpolate_pos_encoding"] = True
                result = self.model(pixel_values=torch.from_numpy(pixels), **kwargs)
            tokens = result.last_hidden_state
            if self.model_type in _CLS_MODELS:
                pooled, patches = tokens[:, 0], tokens[:, 1:]
            else:  # SigLIP: no CLS token; its pooler is an attention-pooling head
                pooler = getattr(result, "pooler_output", None)
                pooled = pooler if pooler is not None else tokens.mean(1)
                patches = tokens
            feats = pooled
            if self.cfg.pooling == "cls_mean":
                feats = torch.cat([pooled, patches.mean(1)], dim=1)
            out.append(feats.float().numpy())
        if not out:
            return np.zeros((0, self.dim // len(self.cfg.views)), np.float32)
        return np.concatenate(out, axis=0).astype(np.float32)

    def encode_frames(
        self, images: np.ndarray | None, proprio: np.ndarray | None, privileged: np.ndarray | None
    ) -> np.ndarray:
        del proprio, privileged
        if images is None:
            raise ValueError("the hf teacher needs the episode's images (T, [V,] H, W, 3) uint8; got None")
        return np.concatenate([self.encode_images(v) for v in select_views(images, self.cfg.views)], axis=1)


def _read_norm(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if path.is_file():
        data = json.loads(path.read_text())
        mean, std = data.get("image_mean"), data.get("image_std")
        if mean and std:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return IMAGENET_MEAN, IMAGENET_STD
