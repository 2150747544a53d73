"""LaST0's Mixture-of-Transformers on a loaded Qwen3-VL: the reasoning expert IS its language model.

Why wrap and not subclass: the reasoning expert must stay the HF model (its folder still loads with
transformers alone, LaST-R1's saving applies unchanged), while the acting expert needs its own weights
in every decoder layer and one attention shared by both. So :class:`Qwen3VLMoT` keeps the language
model as it is and adds, per decoder layer, an acting copy of that layer (``input_layernorm``,
``self_attn.{q,k,v,o}_proj``, ``self_attn.{q,k}_norm``, ``post_attention_layernorm``,
``mlp.{gate,up,down}_proj``) plus a copy of the final ``norm``; the acting expert therefore starts
as the reasoning expert (the reference's ``init_acting_from_reasoning``).

The decoder layer is reimplemented here (``layer.forward`` is never called): per run of tokens its
expert's norms, projections and per-head QK norms, rotary embeddings from the language model's own
``rotary_emb``, the runs' queries, keys and values concatenated, GQA heads repeated, ONE
``scaled_dot_product_attention`` under the caller's boolean mask (with cached keys and values), then
per run its expert's output projection, residual, post-attention norm and MLP. DeepStack features are
added after the first layers to the reasoning runs' image tokens, the positions transformers adds
them to (:meth:`~lastr1.models.backbones.qwen3_vl.Qwen3VLBackbone.deepstack_inputs`).

Contract: :class:`~.mot.MoTTransformer`'s. ``position_ids`` are layout indices ``(L,)`` / ``(B, L)``
(mapped to M-RoPE ids by the backbone's :meth:`mrope_positions`: the prefix from ``get_rope_index``,
everything after it text-like) or ready M-RoPE ids ``(3, B, L)`` (then no DeepStack: the image
tokens cannot be located). The cache is our list of per-layer ``(k, v)`` after RoPE, with the KV
heads not repeated (``(B, kv_heads, L, head_dim)``). Hidden states come back float32; the cache keeps
the backbone's dtype.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lastr1.models.backbones.run_settings import compute_scope
from lastr1.models.backbones.tiny import KVCache
from lastr1.models.last0.mot import Segments, check_mot_inputs

if TYPE_CHECKING:
    from lastr1.models.backbones.qwen3_vl import Qwen3VLBackbone

REASON = 0  # the reasoning expert: the language model's own layers


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``(B, heads, L, head_dim)`` by ``cos``/``sin`` ``(B, L, head_dim)``."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, kv_heads, L, d)`` -> ``(B, kv_heads * n_rep, L, d)``: each KV head serves ``n_rep`` query heads."""
    if n_rep == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)


class Qwen3VLMoT(nn.Module):
    """The reasoning expert (the backbone's language model, referenced, not registered: the policy owns
    the backbone and saves it in the HF layout) and ``n_experts - 1`` acting copies of its decoder
    layers and final norm (registered: they are this module's weights)."""

    def __init__(self, backbone: Qwen3VLBackbone, n_experts: int = 2) -> None:
        super().__init__()
        if n_experts not in (1, 2):
            raise ValueError(f"n_experts={n_experts} must be 1 (reasoning only) or 2 (reasoning and acting)")
        object.__setattr__(self, "_backbone", backbone)
        language = backbone.model.model.language_model
        self.n_experts = n_experts
        self.d_model = backbone.d_model
        self.gradient_checkpointing = False  # recompute each layer in backward (backbone_run)
        extra = range(n_experts - 1)
        self.acting = nn.ModuleList(copy.deepcopy(language.layers) for _ in extra)
        self.acting_norm = nn.ModuleList(copy.deepcopy(language.norm) for _ in extra)

    @property
    def backbone(self) -> Qwen3VLBackbone:
        return self._backbone  # type: ignore[no-any-return]

    @property
    def language(self) -> nn.Module:
        return self._backbone.model.model.language_model

    def _block(self, expert: int, layer: int) -> nn.Module:
        return self.language.layers[layer] if expert == REASON else self.acting[expert - 1][layer]

    def _norm(self, expert: int) -> nn.Module:
        return self.language.norm if expert == REASON else self.acting_norm[expert - 1]

    def _layer(
        self,
        i: int,
        x: torch.Tensor,
        segments: Segments,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder layer ``i`` on ``x`` ``(B, L, D)``: the new hidden states and this layer's (k, v)."""
        b, n, _ = x.shape
        sizes = [m for _, m in segments]
        qs, ks, vs = [], [], []
        for (e, _), run in zip(segments, torch.split(x, sizes, dim=1), strict=True):
            block = self._block(e, i)
            attn = block.self_attn
            h = block.input_layernorm(run)
            shape = (*run.shape[:-1], -1, attn.head_dim)
            qs.append(attn.q_norm(attn.q_proj(h).view(shape)))
            ks.append(attn.k_norm(attn.k_proj(h).view(shape)))
            vs.append(attn.v_proj(h).view(shape))
        q = _rope(torch.cat(qs, dim=1).transpose(1, 2), cos, sin)
        k = _rope(torch.cat(ks, dim=1).transpose(1, 2), cos, sin)
        v = torch.cat(vs, dim=1).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        attn0 = self._block(REASON, i).self_attn
        rep = int(attn0.num_key_value_groups)
        dropout = float(attn0.attention_dropout) if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q,
            _repeat_kv(k, rep),
            _repeat_kv(v, rep),
            attn_mask=mask[:, None],
            dropout_p=dropout,
            scale=float(attn0.scaling),
        )
        y = y.transpose(1, 2).reshape(b, n, -1)
        out = []
        parts = zip(segments, torch.split(y, sizes, dim=1), torch.split(x, sizes, dim=1), strict=True)
        for (e, _), attended, residual in parts:
            block = self._block(e, i)
            h = residual + block.self_attn.o_proj(attended.to(residual.dtype))
            out.append(h + block.mlp(block.post_attention_layernorm(h)))
        return torch.cat(out, dim=1), k, v

    def _deepstack(
        self, index: torch.Tensor | None, segments: Segments, deepstack: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """The image-token mask and per-level features for this call, on reasoning runs only."""
        if not deepstack or index is None:
            return None
        expert = torch.cat([torch.full((m,), e, device=index.device) for e, m in segments])
        index = torch.where(expert[None] == REASON, index, torch.iinfo(index.dtype).max)
        return self.backbone.deepstack_inputs(index, deepstack)

    def forward(
        self,
        embeds: torch.Tensor,
        segments: Segments,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
        deepstack: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """``(hidden (B, L, D) float32, each token through its expert's final norm; the cache of the
        ``L_past + L`` tokens)``. ``deepstack``: the batch's ``[(B, n_image_tokens, D)]`` (prefix calls)."""
        check_mot_inputs(embeds, segments, attn_mask, past, self.n_experts)
        b, n, _ = embeds.shape
        index = None
        if position_ids.ndim == 3:
            if position_ids.shape != (3, b, n):
                raise ValueError(
                    f"M-RoPE position ids must be (3, {b}, {n}), got {tuple(position_ids.shape)}"
                )
            rope = position_ids.long().to(embeds.device)
        else:
            index = position_ids.long().to(embeds.device).expand(b, n)
            rope = self.backbone.mrope_positions(index)
        x = embeds.to(self.backbone.model.get_input_embeddings().weight.dtype)
        mask = attn_mask.to(x.device)
        visual = self._deepstack(index, segments, deepstack)
        cache: KVCache = []
        with compute_scope(x.device, self.backbone.mixed):
            cos, sin = self.language.rotary_emb(x, rope)
            for i in range(len(self.language.layers)):
                layer_past = past[i] if past else None
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x, k, v = checkpoint(
                        self._layer, i, x, segments, cos, sin, mask, layer_past, use_reentrant=False
                    )
                else:
                    x, k, v = self._layer(i, x, segments, cos, sin, mask, layer_past)
                cache.append((k, v))
                if visual is not None and i < len(visual[1]):  # transformers' DeepStack rule
                    where, feats = visual
                    added = x[where] + feats[i].to(x.device, x.dtype)
                    x = x.clone()
                    x[where] = added
            sizes = [m for _, m in segments]
            runs = torch.split(x, sizes, dim=1)
            hidden = torch.cat([self._norm(e)(r) for (e, _), r in zip(segments, runs, strict=True)], dim=1)
        return hidden.float(), cache

    def bind(self, deepstack: list[torch.Tensor] | None) -> BoundQwen3VLMoT:
        """This MoT with one batch's DeepStack features attached (the :class:`~.mot.MoTTransformer` call
        signature, so the policy runs either the same way)."""
        return BoundQwen3VLMoT(self, deepstack)


class BoundQwen3VLMoT:
    """A :class:`Qwen3VLMoT` call carrying one batch's DeepStack features."""

    def __init__(self, mot: Qwen3VLMoT, deepstack: list[torch.Tensor] | None) -> None:
        self.mot = mot
        self.deepstack = deepstack

    def __call__(
        self,
        embeds: torch.Tensor,
        segments: Segments,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        return self.mot(embeds, segments, position_ids, attn_mask, past, self.deepstack)
