"""Build a pretrained backbone and its observation encoder from a ``PolicyConfig``, and save/load the
backbone's weights beside the policy's own.

Why here: :class:`~lastr1.models.policy.LastR1Policy` stays backbone-agnostic. The tiny backbone is
still built inline by the policy (its construction order fixes the seeded weights of every existing
run); every other backbone comes from :func:`build_backbone`, and :data:`EXTERNAL` says which
backbones keep their weights in their own folder of a saved policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

BACKBONE_DIR = "backbone"  # subfolder of a saved policy holding an externally saved backbone
EXTERNAL = {"qwen3_vl"}  # backbones saved in their own (HF) layout, not in model.safetensors
STATE_PREFIX = "backbone."  # their weights' keys in the policy's state dict


ADAPTER_MARK = "lora_"  # LoRA adapter weights: saved with the policy's own, not in the backbone folder


def build_backbone(cfg: Any, run: Any = None) -> tuple[nn.Module, nn.Module]:
    """``(backbone, observation encoder)`` for ``cfg.backbone`` (not ``tiny``), with the LoRA adapters of
    ``cfg`` and the run settings ``run`` (a :class:`~.run_settings.BackboneRunConfig`; None = defaults)."""
    if cfg.backbone == "qwen3_vl":
        from lastr1.models.backbones.qwen3_vl import build_qwen3_vl

        return build_qwen3_vl(
            cfg.pretrained,
            cfg.qwen3_vl_size,
            cfg.image_size,
            cfg.num_views,
            cfg.instruction_max_len,
            cfg.proprio_dim if cfg.use_proprio else 0,
            cfg.d_model,
            run,
            (cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets)),
            (cfg.qwen3_vl_prompt_len, cfg.num_bins) if cfg.reference_layout else (0, 0),
        )
    raise ValueError(f"backbone={cfg.backbone!r} has no factory; use 'tiny' or 'qwen3_vl'")


def build_layout_tokens(cfg: Any, backbone: nn.Module, encoder: nn.Module) -> nn.Module:
    """The reference layout's token rows and ``lm_head`` readouts
    (:class:`~.qwen3_vl_layout.LayoutTokens`) of a backbone built by :func:`build_backbone`."""
    from lastr1.models.backbones.qwen3_vl_layout import LayoutTokens

    return LayoutTokens(backbone.model, encoder.tokenizer, cfg.num_bins)


def check_saved_layout_tokens(cfg: Any, directory: Path) -> None:
    """A saved reference-layout policy must find its special tokens in ``backbone/`` (tokenizer and
    embedding rows): its trained rows live there. One-line ValueError naming the fix otherwise."""
    if not cfg.reference_layout:
        return
    from lastr1.models.backbones.qwen3_vl_files import missing_layout_tokens
    from lastr1.models.backbones.qwen3_vl_layout import layout_token_names

    problem = missing_layout_tokens(directory / BACKBONE_DIR, layout_token_names(cfg.num_bins))
    if problem:
        raise ValueError(
            f"{directory / BACKBONE_DIR} has {problem}, but this policy (qwen3_vl_layout=reference) keeps "
            "its trained <latent_start>/<latent_end>/<action_i> rows there: save it with "
            "LastR1Policy.save_pretrained (which writes them to the tokenizer and embedding), or start "
            "from a base model with policy.pretrained=DIR (the tokens are then added)"
        )


def save_external(policy: nn.Module, directory: Path) -> bool:
    """Write an external backbone to ``directory / BACKBONE_DIR`` in its own layout; False for tiny."""
    if policy.config.backbone not in EXTERNAL:
        return False
    from lastr1.models.backbones.qwen3_vl import save_qwen3_vl

    enc = policy.obs_encoder
    tokens = getattr(policy, "layout_tokens", None)  # its trained rows go into the saved embedding
    rows = tokens.writes() if tokens is not None else []
    save_qwen3_vl(policy.backbone.model, enc.tokenizer, enc.image_processor, directory / BACKBONE_DIR, rows)
    return True


def is_external_key(key: str) -> bool:
    """Whether a policy state-dict key is saved in the external backbone folder (not its adapters)."""
    return key.startswith(STATE_PREFIX) and ADAPTER_MARK not in key


def own_state(policy: nn.Module) -> dict[str, Any]:
    """The policy's state dict without an external backbone's weights (those are saved separately);
    LoRA adapters on the backbone stay in it."""
    state = policy.state_dict()
    if policy.config.backbone in EXTERNAL:
        state = {k: v for k, v in state.items() if not is_external_key(k)}
    return state
