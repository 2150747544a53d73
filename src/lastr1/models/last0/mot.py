"""Mixture-of-Transformers: one sequence, one joint attention, a separate weight set per expert.

Every layer holds, for each expert, its own pre-norms, QKV and output projections and MLP; the
transformer holds one final norm per expert. A call routes its tokens to the experts by
``segments``: consecutive runs ``(expert, length)`` in sequence order (the reference routes by index
lists; in LaST0's layout each expert's tokens are contiguous, so runs are enough and need no
scatter). Within a layer each run is projected by its expert, the queries, keys and values of all
runs are concatenated and attend jointly (with any cached keys) under the caller's mask, then each
run goes through its expert's output projection and MLP.

Why: the reasoning and acting systems keep their own weights (their jobs and token statistics
differ) yet act as one model -- the acting tokens read the reasoning tokens' keys and values
directly, so the acting expert can reuse the reasoning expert's KV cache across many Euler steps
and control steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lastr1.models.backbones.tiny import MLP, KVCache, TinyConfig, make_norm

Segments = tuple[tuple[int, int], ...]  # (expert index, number of tokens), in sequence order


def check_mot_inputs(
    embeds: torch.Tensor, segments: Segments, attn_mask: torch.Tensor, past: KVCache | None, n_experts: int
) -> None:
    """The routing and mask a MoT call needs: ``segments`` cover the ``L`` tokens with known experts,
    the mask is ``(B, L, L_past + L)`` (shared by the tiny and the Qwen3-VL MoT)."""
    b, n, _ = embeds.shape
    past_len = past[0][0].shape[2] if past else 0
    if sum(m for _, m in segments) != n or any(not 0 <= e < n_experts for e, _ in segments):
        raise ValueError(
            f"segments {segments} must cover the {n} input tokens with experts in [0, {n_experts})"
        )
    if attn_mask.shape != (b, n, past_len + n):
        raise ValueError(
            f"attn_mask must have shape (B, L, L_past + L) = {(b, n, past_len + n)}, got {tuple(attn_mask.shape)}"
        )


class ExpertBlock(nn.Module):
    """One expert's weights in one layer (the tiny LaST-R1 block's shapes)."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.norm2 = make_norm(cfg.norm, cfg.d_model)
        self.mlp = MLP(cfg)


class MoTLayer(nn.Module):
    """A pre-norm transformer layer whose weights depend on each token's expert."""

    def __init__(self, cfg: TinyConfig, n_experts: int) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.dropout = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)
        self.experts = nn.ModuleList(ExpertBlock(cfg) for _ in range(n_experts))

    def _per_run(
        self, x: torch.Tensor, segments: Segments, fn: Callable[[ExpertBlock, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        runs = torch.split(x, [n for _, n in segments], dim=1)
        return torch.cat(
            [fn(self.experts[e], run) for (e, _), run in zip(segments, runs, strict=True)], dim=1
        )

    def forward(
        self,
        x: torch.Tensor,
        segments: Segments,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, n, d = x.shape
        qkv = self._per_run(x, segments, lambda ex, run: ex.qkv(ex.norm1(run)))
        q, k, v = qkv.view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(b, n, d)
        runs = torch.split(y, [m for _, m in segments], dim=1)
        parts = torch.split(x, [m for _, m in segments], dim=1)
        out = []
        for (e, _), run, part in zip(segments, runs, parts, strict=True):
            ex = self.experts[e]
            h = part + self.drop(ex.out(run))
            out.append(h + self.drop(ex.mlp(ex.norm2(h))))
        return torch.cat(out, dim=1), (k, v)


class MoTTransformer(nn.Module):
    """Learned absolute positions, ``n_layers`` MoT layers, one final norm per expert.

    ``forward(embeds (B, L, D), segments, position_ids (L,), attn_mask (B, L, L_past + L), past)``
    returns the final-normed hidden states ``(B, L, D)`` (each token through its expert's norm) and
    the cache extended by these ``L`` tokens -- the same contract as the tiny LaST-R1 backbone plus
    the routing.
    """

    def __init__(self, cfg: TinyConfig, n_experts: int) -> None:
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts={n_experts} must be >= 1")
        self.cfg = cfg
        self.n_experts = n_experts
        self.d_model = cfg.d_model
        self.pos = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.layers = nn.ModuleList(MoTLayer(cfg, n_experts) for _ in range(cfg.n_layers))
        self.norms = nn.ModuleList(make_norm(cfg.norm, cfg.d_model) for _ in range(n_experts))
        self.drop = nn.Dropout(cfg.dropout)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for layer in self.layers:  # GPT-2 style: shrink residual writes with depth
            for ex in layer.experts:
                nn.init.normal_(ex.out.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)
                nn.init.normal_(ex.mlp.down.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    def copy_expert(self, source: int, target: int) -> None:
        """Give expert ``target`` a copy of expert ``source``'s weights (every layer and its final norm)."""
        with torch.no_grad():
            for layer in self.layers:
                layer.experts[target].load_state_dict(layer.experts[source].state_dict())
            self.norms[target].load_state_dict(self.norms[source].state_dict())

    def forward(
        self,
        embeds: torch.Tensor,
        segments: Segments,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        check_mot_inputs(embeds, segments, attn_mask, past, self.n_experts)
        x = self.drop(embeds + self.pos(position_ids))
        cache: KVCache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, segments, attn_mask, past[i] if past else None)
            cache.append(kv)
        runs = torch.split(x, [m for _, m in segments], dim=1)
        return torch.cat([self.norms[e](run) for (e, _), run in zip(segments, runs, strict=True)], 1), cache
