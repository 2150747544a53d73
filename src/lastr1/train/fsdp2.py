"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for a Qwen3-VL policy: ``distributed=fsdp2``.

Why: with ``ddp`` every rank holds the whole backbone, its gradients and AdamW's two moments; a 4B
backbone trained in full needs ~64 GB for those alone. FSDP2 shards them over the ranks and gathers a
decoder layer's weights only while that layer runs.

Layout: one FSDP unit per decoder layer and per vision block (the recipe of the FSDP2 docs: the
unit is what is gathered at once), then the policy itself as the root, which holds the rest
(embeddings, ``lm_head``, the vision patch embedding and mergers, our heads). The policy is run
through methods, not ``forward``, so those methods are registered as FSDP forward methods and their
output dataclasses as pytrees (FSDP2 finds the tensors to hook for backward through them).

* ``backbone_run.precision=bf16-mixed``: the units gather bf16 weights and reduce float32 gradients
  (``MixedPrecisionPolicy``), the sharded master weights stay float32; the root stays float32
  (our heads) and the backbone's autocast is kept.
* ``bf16-true``: the weights are already bf16; FSDP2 needs one dtype among a unit's *trainable*
  weights, so bf16 backbone weights cannot train beside our float32 heads in the root: use LoRA
  (the bf16 base is frozen) or bf16-mixed. Refused with that fix before anything is sharded.
* ``gradient_checkpointing``: kept as the run settings enable it (transformers' non-reentrant
  checkpointing inside each layer; the recompute gathers the layer again).

Checkpoints keep the one-process layout (full weights, the optimizer state keyed by position), so
a run can be resumed with or without FSDP2: rank 0 keeps an unsharded copy of the policy, made
before sharding, and loads the gathered full state into it to write it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lastr1.train.distributed import DistContext

# the policy's methods that run the network (FSDP2 gathers the root's weights around each call)
FORWARD_METHODS = ("act", "log_probs", "sft_outputs", "fit_stop_context_center")
_PYTREES_REGISTERED = False


def _register_outputs() -> None:
    """Let FSDP2 see the tensors inside the policy's output dataclasses (once per process)."""
    global _PYTREES_REGISTERED
    if _PYTREES_REGISTERED:
        return
    from torch.utils import _pytree

    from lastr1.models.policy_io import ActionOutput, LogProbs, SFTOutputs

    for cls in (SFTOutputs, LogProbs, ActionOutput):
        _pytree.register_dataclass(cls)
    _PYTREES_REGISTERED = True


def _units(policy: nn.Module) -> list[nn.Module]:
    """The modules sharded as units of their own: Qwen3-VL's decoder layers and vision blocks."""
    model = policy.backbone.model  # Qwen3VLForConditionalGeneration
    return [*model.model.language_model.layers, *model.model.visual.blocks]


def _check_trainable_dtypes(policy: nn.Module, units: list[nn.Module]) -> None:
    """FSDP2 gathers and reduces a unit's trainable weights in one dtype: refuse a mix up front."""
    in_units = {id(p) for u in units for p in u.parameters()}
    groups = [
        (
            "the root (embeddings, lm_head, our heads)",
            [p for p in policy.parameters() if id(p) not in in_units],
        )
    ]
    groups += [("a decoder layer or vision block", list(u.parameters())) for u in units]
    for where, params in groups:
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.requires_grad})
        if len(dtypes) > 1:
            raise ValueError(
                f"distributed=fsdp2: {where} would train weights of dtypes {dtypes} together, and FSDP2 "
                "needs one; with backbone_run.precision=bf16-true train the backbone through LoRA "
                "(policy.lora_rank > 0), or use backbone_run.precision=bf16-mixed"
            )


def shard_policy(ctx: DistContext, policy: nn.Module) -> nn.Module:
    """Shard ``policy`` in place (see the module doc); rank 0 keeps an unsharded copy to save from."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    backbone = getattr(getattr(policy, "config", None), "backbone", None)
    if backbone != "qwen3_vl":
        raise ValueError(
            f"distributed=fsdp2 shards the Qwen3-VL backbone (policy.backbone=qwen3_vl); this policy's "
            f"backbone is {backbone!r}: use distributed=ddp"
        )
    units = _units(policy)
    _check_trainable_dtypes(policy, units)
    precision = policy.backbone_run.precision
    if precision == "bf16-mixed":
        unit_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif precision == "bf16-true":
        unit_mp = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    else:
        unit_mp = MixedPrecisionPolicy()
    if ctx.is_main:
        ctx.saver = copy.deepcopy(policy).cpu()
    _register_outputs()
    # our methods return views of one forward's tensors and never change them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for unit in units:
        fully_shard(unit, mp_policy=unit_mp)
    fully_shard(policy)
    for name in FORWARD_METHODS:
        register_fsdp_forward_method(policy, name)
    return policy


def _fsdp_modules(policy: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in policy.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(policy: nn.Module) -> Iterator[None]:
    """Every unit's full weights on every rank for the block (one all-gather each, on entry), kept
    between calls: a rank may then run the policy alone or a data-dependent number of times."""
    modules = _fsdp_modules(policy)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            if m is not policy:  # the root keeps FSDP2's own choice (not resharded after forward)
                m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def full_copy(ctx: DistContext, policy: nn.Module) -> nn.Module:
    """Rank 0: its unsharded copy holding the current full weights (a collective: all ranks call);
    other ranks: the sharded policy (they write nothing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ctx.is_main:
        return policy
    ctx.saver.load_state_dict(full)
    return ctx.saver


def _positions(policy: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The parameter name at each position of the optimizer's one-process state dict."""
    names = {id(p): n for n, p in policy.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


class FullOptimizer:
    """The full optimizer state in the one-process layout (positions, not names), gathered when
    built (a collective: all ranks build it); ``state_dict()`` is what ``optimizer.pt`` holds."""

    def __init__(self, policy: nn.Module, opt: torch.optim.Optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(
            policy, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        self._state: dict[str, Any] = {}
        if not full:  # ranks other than 0 receive nothing (cpu_offload gathers to rank 0)
            return
        index = {name: i for i, name in enumerate(_positions(policy, opt))}
        self._state = {
            "state": {index[name]: value for name, value in full["state"].items()},
            "param_groups": [
                {**g, "params": [index[name] for name in g["params"]]} for g in full["param_groups"]
            ],
        }

    def state_dict(self) -> dict[str, Any]:
        return self._state


def load_optimizer(policy: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a one-process optimizer state dict into the sharded optimizer (each rank keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _positions(policy, opt)
    if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ValueError(
            "the checkpoint's optimizer state has a different number of parameters than this policy; "
            "resume with the settings the run was started with"
        )
    by_name = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    # torch fills an empty optimizer's state with one zero-lr step first, which it skips while any
    # gradient is set: a resumed optimizer has none anyway
    opt.zero_grad(set_to_none=True)
    # strict=False: a parameter that never got a gradient (the value head in SFT) has no state, as in
    # the one-process optimizer
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(policy, opt, by_name, options=options)
