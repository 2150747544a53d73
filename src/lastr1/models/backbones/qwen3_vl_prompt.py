"""The observation prompt of the Qwen3-VL backbone: images through its vision tower, the instruction
through its embedding table, an optional proprio token.

Two arrangements, one per ``PolicyConfig.qwen3_vl_layout`` (docs/backbones.md):

* ``ours`` (milestone 2): per view ``<|vision_start|> <|image_pad|> * n <|vision_end|>``, the
  instruction right-padded to ``instruction_max_len``, the proprio token. Padding is masked as keys;
  M-RoPE ids come from one template, so every sample has the same positions.
* ``reference``: the same tokens LEFT-padded to a fixed prompt length (the reference's 95), so the
  tail (``<latent_start>``, latents, actions) sits at fixed sequence indices. The encoder moves the
  padding to the front of each row and reports the permutation; the backbone then takes the batch's
  M-RoPE ids from ``get_rope_index`` with the padding mask, as transformers does for a left-padded
  batch: real tokens are numbered from 0 whatever the padding, so the hidden states are those of the
  unpadded prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lastr1.models.backbones.run_settings import compute_scope


def vision_features(model: nn.Module, pixels: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Merged image tokens ``(N, D)`` and the DeepStack features (a list of ``(N, D)``)."""
    out = model.model.visual(pixels.to(model.model.visual.dtype), grid_thw=grid)
    if isinstance(out, tuple):  # transformers 4.57
        return out[0], list(out[1])
    return out.pooler_output, list(out.deepstack_features)


class Qwen3VLObservationEncoder(nn.Module):
    """Observation -> prefix embeddings for the Qwen3-VL backbone.

    Prefix template, per view ``<|vision_start|> <|image_pad|> * n <|vision_end|>``, then the
    instruction's Qwen3 tokens (``max_len`` slots, padding masked as keys), then one proprio token (a
    linear projection of the normalised state). ``prompt_len > 0`` (the reference layout) sizes the
    instruction slots so the prompt has exactly ``prompt_len`` tokens and moves the padding to the
    front (left padding). Images go through the model's image processor (resize to multiples of
    32 px, patchify) and vision tower; text through the model's input embedding table. The HF model
    belongs to the backbone and is only referenced here, so its weights appear once in the policy's
    state dict. ``tail_id`` is the template id of the ``<latent_start>`` position that follows.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        image_size: int,
        num_views: int,
        max_len: int,
        proprio_dim: int,
        mixed: bool = False,
        prompt_len: int = 0,
        tail_id: int | None = None,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not registered: the backbone owns it
        self.mixed = mixed
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_views = num_views
        self.left_pad = prompt_len > 0
        cfg = model.config
        d = int(cfg.text_config.hidden_size)
        self.proprio_proj = nn.Linear(proprio_dim, d) if proprio_dim else None
        probe = np.zeros((image_size, image_size, 3), np.uint8)
        grid = torch.as_tensor(image_processor(images=[probe], return_tensors="pt")["image_grid_thw"])
        merge = int(cfg.vision_config.spatial_merge_size)
        self.tokens_per_view = int(grid[0].prod()) // merge**2
        if self.left_pad:
            fixed = num_views * (self.tokens_per_view + 2) + int(proprio_dim > 0)
            max_len = prompt_len - fixed
            if max_len < 1:
                raise ValueError(
                    f"policy.qwen3_vl_prompt_len={prompt_len} leaves no room for the instruction: the "
                    f"images take {num_views * (self.tokens_per_view + 2)} tokens and proprio "
                    f"{int(proprio_dim > 0)}; raise it to at least {fixed + 1} (reference: 95)"
                )
        self.max_len = max_len
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else cfg.text_config.bos_token_id
        self.pad_id = int(pad if pad is not None else 151643)
        ids: list[int] = []
        types: list[int] = []
        for _ in range(num_views):
            ids += [
                cfg.vision_start_token_id,
                *[cfg.image_token_id] * self.tokens_per_view,
                cfg.vision_end_token_id,
            ]
            types += [0, *[1] * self.tokens_per_view, 0]
        n_tail = max_len + int(proprio_dim > 0)  # instruction, proprio
        ids += [self.pad_id] * n_tail + [self.pad_id if tail_id is None else int(tail_id)]
        types += [0] * (n_tail + 1)
        # the template includes <latent_start>; the policy appends that token's embedding itself
        self.register_buffer("template_ids", torch.tensor(ids), persistent=False)
        self.register_buffer("template_types", torch.tensor(types), persistent=False)
        self.register_buffer("grid_thw", grid.repeat(num_views, 1).long(), persistent=False)
        self._text_cache: dict[str, list[int]] = {}

    @property
    def num_tokens(self) -> int:
        """Observation tokens before ``<latent_start>``."""
        return int(self.template_ids.numel()) - 1

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions -> ``(ids (B, max_len), mask (B, max_len))``, right-padded, truncated (the
        reference layout moves the padding to the front when it builds the prompt)."""
        ids = torch.full((len(texts), self.max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), self.max_len, dtype=torch.bool)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"instruction[{i}] must be a string, got {type(text).__name__}")
            row = self._text_cache.get(text)
            if row is None:
                row = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])[: self.max_len]
                if len(self._text_cache) < 100_000:
                    self._text_cache[text] = row
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, V, H, W, 3)`` -> the processor's flattened patches for all ``B * V`` images."""
        flat = images.detach().cpu().numpy().reshape(-1, *images.shape[2:])
        out = self.image_processor(images=list(flat), return_tensors="pt")
        return torch.as_tensor(out["pixel_values"]).to(images.device)

    def forward(
        self,
        images: torch.Tensor,
        instruction_ids: torch.Tensor,
        instruction_mask: torch.Tensor,
        proprio: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """``(embeds (B, num_tokens, D), key validity (B, num_tokens), DeepStack [(B, n_img, D)], order)``.

        ``order`` ``(B, num_tokens)`` is None for right padding; with left padding, row ``b`` of the
        prompt is the template's tokens taken in the order ``order[b]`` (padding first)."""
        model = self._model
        b, v = images.shape[:2]
        grid = self.grid_thw.repeat(b, 1)
        with compute_scope(images.device, self.mixed):
            tokens, deep = vision_features(model, self.pixels(images), grid)
        n = self.tokens_per_view
        tokens = tokens.float().view(b, v, n, -1)

        def table(ids: torch.Tensor) -> torch.Tensor:
            return model.get_input_embeddings()(ids).float()

        cfg = model.config
        marks = table(
            torch.tensor([cfg.vision_start_token_id, cfg.vision_end_token_id], device=images.device)
        )
        parts: list[torch.Tensor] = []
        for view in range(v):
            parts += [marks[:1].expand(b, 1, -1), tokens[:, view], marks[1:].expand(b, 1, -1)]
        parts.append(table(instruction_ids))
        valid = [torch.ones(b, v * (n + 2), dtype=torch.bool, device=images.device), instruction_mask]
        if self.proprio_proj is not None and proprio is not None:
            parts.append(self.proprio_proj(proprio)[:, None])
            valid.append(valid[0][:, :1])
        deepstack = [f.view(b, v * n, -1) for f in deep]
        embeds, keys = torch.cat(parts, dim=1), torch.cat(valid, dim=1)
        if not self.left_pad:
            return embeds, keys, deepstack, None
        # a stable sort on validity puts the padding first and keeps every other token's order
        order = torch.argsort(keys.int(), dim=1, stable=True)
        embeds = embeds.gather(1, order[..., None].expand_as(embeds))
        return embeds, keys.gather(1, order), deepstack, order
