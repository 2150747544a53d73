"""LaST0 (``policy.family=last0``) on the tiny random Qwen3-VL (the ``qwen_dir`` fixture): the MoT
that wraps the HF decoder layers (:mod:`lastr1.models.last0.qwen3_vl_mot`) computes what the HF
language model computes, keeps reasoning blind to acting, agrees cached and uncached; the policy acts,
saves and loads, and trains through ``lastr1 sft``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_qwen3_vl

require_qwen3_vl()

from lastr1.envs.base import Observation  # noqa: E402
from lastr1.models import PolicyConfig, load_policy  # noqa: E402
from lastr1.models.last0.config import Last0Config  # noqa: E402
from lastr1.models.last0.layout import joint_mask  # noqa: E402
from lastr1.models.last0.policy import Last0Policy  # noqa: E402
from lastr1.models.last0.qwen3_vl_mot import Qwen3VLMoT  # noqa: E402
from lastr1.train.metrics import read_metrics  # noqa: E402

torch.set_num_threads(1)
SIZE = 64  # the qwen_dir image processor keeps 64 px: 4 merged image tokens per view
B, CHUNK = 2, 2


def _config(qwen_dir: Path, **last0) -> PolicyConfig:
    return PolicyConfig(
        family="last0",
        backbone="qwen3_vl",
        pretrained=str(qwen_dir),
        image_size=SIZE,
        proprio_dim=3,
        instruction_max_len=5,
        chunk=CHUNK,
        last0=Last0Config(**{"keyframes": 1, "euler_steps": 3, **last0}),
    )


def _obs(n: int = B, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    words = ["pick up the red block", "open the drawer", "push the button"]
    return Observation(
        images=rng.integers(0, 256, (n, 1, SIZE, SIZE, 3), dtype=np.uint8),
        proprio=rng.standard_normal((n, 3)).astype(np.float32),
        instruction=[words[(i + seed) % 3] for i in range(n)],
        privileged=np.zeros((n, 0), np.float32),
        task=np.zeros(n, np.int64),
    )


@pytest.fixture(scope="module")
def policy(qwen_dir) -> Last0Policy:
    """A LaST0 on the tiny Qwen3-VL whose velocity head is not zero (a fresh one predicts velocity 0)."""
    torch.manual_seed(0)
    pol = Last0Policy(_config(qwen_dir))
    torch.nn.init.normal_(pol.action_out[-1].weight, std=0.3)
    with torch.no_grad():  # make the acting expert differ from its reasoning copy, so routing matters
        for p in pol.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return pol.eval()


def _prefix(pol: Last0Policy, obs: Observation):
    inputs = pol.encode_obs(obs)
    slow, _ = pol._encode(inputs, fast=False)
    embeds, valid, _ = pol._reason_prefix(inputs, slow)
    pos = torch.arange(embeds.shape[1])
    return inputs, embeds, slow[2], pos, joint_mask(pol.layout, pos, valid)


def test_reasoning_only_equals_the_hf_language_model(policy) -> None:
    """One reasoning run through the wrapper = transformers' own language model (routing, M-RoPE,
    QK norms, GQA, DeepStack, final norm; the padded instruction masked) within 1e-5, cache included."""
    _, embeds, deepstack, pos, mask = _prefix(policy, _obs())
    mot: Qwen3VLMoT = policy.transformer
    assert mask.logical_not().any()  # the instruction padding is really masked
    with torch.no_grad():
        ours, our_kv = mot(embeds, ((0, embeds.shape[1]),), pos, mask, deepstack=deepstack)
        theirs, their_kv = policy.backbone(embeds, pos, mask, deepstack=deepstack)
        plain, _ = mot(embeds, ((0, embeds.shape[1]),), pos, mask)
    err = (ours - theirs).abs().max().item()
    assert err < 1e-5, err
    for (k1, v1), (k2, v2) in zip(our_kv, their_kv, strict=True):
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=0)
        torch.testing.assert_close(v1, v2, atol=1e-5, rtol=0)
    assert (plain - ours).abs().max() > 1e-3  # DeepStack is really applied (and checked above)


def test_acting_inputs_never_change_the_reasoning_hidden_states(policy) -> None:
    inputs, other = policy.encode_obs(_obs()), policy.encode_obs(_obs(seed=1))
    lay = policy.layout
    latents = torch.randn(B, lay.n_latents, policy.config.d_model, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(B, CHUNK, 7, generator=g), torch.randn(B, CHUNK, 7, generator=g)
    t1, t2 = torch.full((B,), 0.9), torch.full((B,), 0.2)
    with torch.no_grad():
        h1 = policy.forward_joint(inputs, latents, inputs, x1, t1)
        h2 = policy.forward_joint(inputs, latents, other, x2, t2)  # other acting frame, state, noise, time
        h3 = policy.forward_joint(other, latents, inputs, x1, t1)  # other reasoning observation
    assert torch.equal(h1[:, : lay.n_reason], h2[:, : lay.n_reason])  # bit-identical
    assert not torch.allclose(h1[:, lay.n_reason :], h2[:, lay.n_reason :])
    assert not torch.allclose(h1[:, lay.n_reason :], h3[:, lay.n_reason :])  # acting does read reasoning


def test_cached_prefix_then_acting_equals_one_joint_call(policy) -> None:
    inputs = policy.encode_obs(_obs())
    with torch.no_grad():
        slow, fast = policy._encode(inputs)
        state = policy._reason(inputs, slow)
        x, t = torch.randn(B, CHUNK, 7, generator=torch.Generator().manual_seed(0)), torch.full((B,), 0.5)
        cached = policy._velocity_fn(*policy._act_context(inputs, fast), state)(x, t)
        hidden = policy.forward_joint(inputs, state.latents, inputs, x, t)
    lay = policy.layout
    torch.testing.assert_close(cached, policy.action_out(hidden[:, -lay.chunk :]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        state.latents, hidden[:, lay.n_prefix - 1 : lay.n_reason - 1], atol=1e-5, rtol=1e-5
    )
    # the fast image tokens read from the prefix equal the vision tower run alone on the frame
    torch.testing.assert_close(fast, policy._encode(inputs, slow=False)[1], atol=1e-6, rtol=0)


def test_act_and_save_load_round_trip(policy, tmp_path) -> None:
    obs = _obs()
    noise = torch.randn(B, CHUNK, 7, generator=torch.Generator().manual_seed(3))
    out = policy.act(obs, noise=noise)
    assert out.actions.shape == (B, CHUNK, 7) and torch.isfinite(out.actions).all()
    assert out.latents.shape == (B, policy.layout.n_latents, policy.config.d_model)
    path = policy.save_pretrained(tmp_path / "ckpt")
    assert (path / "backbone" / "config.json").is_file()  # the reasoning expert, HF layout
    saved = json.loads((path / "config.json").read_text())
    assert saved["family"] == "last0" and saved["backbone"] == "qwen3_vl"
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("transformer.acting.") for k in keys)  # the acting copy
    assert not any(k.startswith("backbone.") for k in keys)
    loaded = load_policy(path).eval()
    assert isinstance(loaded, Last0Policy)
    assert torch.equal(loaded.act(obs, noise=noise).actions, policy.act(obs, noise=noise).actions)
    # κ-kept reasoning per slot: the second call acts on the kept KV cache (the tower alone for the
    # fast tokens) and gives the same actions on the same observation
    slotted = dataclasses.replace(obs, slot=np.arange(B))
    loaded.reset()
    first, second = loaded.act(slotted, noise=noise), loaded.act(slotted, noise=noise)
    assert first.reasoned.all() and not second.reasoned.any()
    torch.testing.assert_close(second.actions, first.actions, atol=1e-5, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients(policy) -> None:
    inputs = policy.encode_obs(_obs())
    x, t = torch.randn(B, CHUNK, 7, generator=torch.Generator().manual_seed(0)), torch.full((B,), 0.3)
    grads = []
    policy.train()
    try:
        for flag in (False, True):
            policy.transformer.gradient_checkpointing = flag
            policy.zero_grad(set_to_none=True)
            policy.sft_outputs(inputs, inputs, x, t).velocity.square().mean().backward()
            grads.append([p.grad.clone() for p in policy.transformer.parameters()])
    finally:
        policy.transformer.gradient_checkpointing = False
        policy.zero_grad(set_to_none=True)
        policy.eval()
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_unsupported_settings_are_one_line_errors(qwen_dir) -> None:
    with pytest.raises(ValueError, match="reasoning=false"):
        Last0Policy(_config(qwen_dir, reasoning=False))
    with pytest.raises(ValueError, match="LoRA is not implemented"):
        Last0Policy(dataclasses.replace(_config(qwen_dir), lora_rank=2))


def test_sft_command_trains_a_qwen3_vl_last0(toy_demos, qwen_dir, tmp_path) -> None:
    """``lastr1 sft policy.family=last0 policy.backbone=qwen3_vl backbone_run.*`` runs, lowers the
    flow loss and writes a loadable checkpoint with its run settings."""
    from lastr1.cli import main

    out = tmp_path / "sft"
    args = [
        "sft",
        f"data={toy_demos}",
        f"out={out}",
        "policy.family=last0",
        "policy.backbone=qwen3_vl",
        f"policy.pretrained={qwen_dir}",
        "policy.use_proprio=false",
        "policy.last0.keyframes=1",
        "policy.last0.vision_latents=false",  # the state latent only: no vision teacher to run
        "policy.last0.state_latent=true",
        "backbone_run.freeze_vision=true",
        "backbone_run.gradient_checkpointing=true",
        "teacher.name=proprio",
        "steps=20",
        "batch_size=4",
        "lr=3e-3",
        "warmup_steps=2",
        "checkpoint_every=20",
        "progress=false",
    ]
    assert main(args) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["flow_mse"] < rows[0]["flow_mse"], rows
    final = out / "final"
    assert json.loads((final / "backbone_run.json").read_text())["freeze_vision"] is True
    policy = load_policy(final)
    assert policy.backbone_run.gradient_checkpointing and policy.config.last0.target_dims == (2,)
    assert all(not p.requires_grad for p in policy.backbone.model.model.visual.parameters())
    # both experts trained, separately: the acting copy no longer equals the reasoning layer
    reason = policy.backbone.model.model.language_model.layers[0].mlp.up_proj.weight
    assert not torch.equal(policy.transformer.acting[0][0].mlp.up_proj.weight, reason)
    # the checkpoint evaluates through `lastr1 eval` like any other
    ev = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                f"checkpoint={final}",
                "env.backend=toy",
                "env.num_envs=2",
                "episodes_per_task=1",
                "videos_per_task=0",
                "progress=false",
                f"out={ev}",
            ]
        )
        == 0
    )
    result = json.loads((ev / "eval.json").read_text())
    assert result["episodes"] == len(result["per_task"]) >= 1
    assert result["protocol"]["actions"].startswith("greedy flow")
