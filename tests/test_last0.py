"""LaST0 (``policy.family=last0``): flow matching, the MoT mask, κ-cached reasoning, save/load, SFT,
the loaders and commands, and ``lastr1 demo preset=quick policy.family=last0`` end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from lastr1.cli import main
from lastr1.envs.base import Observation
from lastr1.models import LastR1Policy, PolicyConfig, load_policy, saved_family
from lastr1.models.last0.config import Last0Config
from lastr1.models.last0.flow import flow_loss, noisy_actions, sample_time
from lastr1.models.last0.policy import Last0Policy
from lastr1.train.metrics import read_metrics

SIZE = 16


def _config(**last0) -> PolicyConfig:
    return PolicyConfig(
        family="last0",
        d_model=32,
        n_layers=2,
        n_heads=2,
        image_grid=2,
        image_size=SIZE,
        proprio_dim=8,
        instruction_max_len=8,
        chunk=4,
        last0=Last0Config(**{"keyframes": 2, **last0}),
    )


def _policy(seed: int = 0, **last0) -> Last0Policy:
    """A random tiny LaST0 whose velocity head is not zero (a fresh one predicts velocity 0, so its
    actions would just be the noise and many checks would pass for nothing)."""
    torch.manual_seed(seed)
    policy = Last0Policy(_config(**last0))
    torch.nn.init.normal_(policy.action_out[-1].weight, std=0.3)
    return policy.eval()


def _obs(n: int = 3, seed: int = 0, slots: bool = True) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        images=rng.integers(0, 256, (n, 1, SIZE, SIZE, 3), dtype=np.uint8),
        proprio=rng.standard_normal((n, 8)).astype(np.float32),
        instruction=["reach the red cube", "open the drawer", "press the button"][:n],
        privileged=np.zeros((n, 0), np.float32),
        task=np.zeros(n, np.int64),
        slot=np.arange(n) if slots else None,
    )


def test_flow_loss_drives_a_fixed_chunk_to_near_zero_error():
    torch.manual_seed(0)
    # one layer, no latents: the acting expert does the job (its zero-initialised output as built)
    policy = Last0Policy(dataclasses.replace(_config(keyframes=0), n_layers=1))
    obs = _obs(1, slots=False)
    batch = policy.encode_obs(obs).index([0] * 16)
    target = torch.linspace(-0.8, 0.8, 4 * 7).view(1, 4, 7)
    before = (policy.act(obs, mode="greedy").actions_normalized - target).abs().max().item()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    policy.train()
    losses = []
    for _ in range(200):
        a = target.expand(16, -1, -1)
        noise, t = torch.randn(a.shape, generator=gen), sample_time(16, gen)
        loss = flow_loss(policy.sft_outputs(batch, batch, noisy_actions(a, noise, t), t).velocity, a, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    policy.eval()
    err = (policy.act(obs, mode="greedy").actions_normalized - target).abs()
    assert before > 0.75  # zero noise and zero velocity: the untrained sample is all zeros
    assert np.mean(losses[-20:]) < 0.1 * np.mean(losses[:5]), losses[::20]
    print(f"flow toy: mean |err| {err.mean():.4f}, max {err.max():.4f}")
    assert err.mean().item() < 0.05 and err.max().item() < 0.15, err


def test_flow_time_and_interpolation_follow_the_reference():
    t = sample_time(20000, torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.999 * 0.6 + 0.001, abs=0.01)  # Beta(1.5, 1) has mean 0.6
    a, noise = torch.zeros(2, 1, 1), torch.ones(2, 1, 1)
    x = noisy_actions(a, noise, torch.tensor([1.0, 0.25]))
    assert x.flatten().tolist() == [1.0, 0.25]  # t = 1 is pure noise


def test_sampling_with_fixed_noise_is_deterministic():
    policy, obs = _policy(), _obs(slots=False)
    first = policy.act(obs, mode="sample", generator=torch.Generator().manual_seed(3))
    again = policy.act(obs, mode="sample", generator=torch.Generator().manual_seed(3))
    other = policy.act(obs, mode="sample", generator=torch.Generator().manual_seed(4))
    given = policy.act(obs, noise=first.noise)
    assert torch.equal(first.actions, again.actions) and torch.equal(first.actions, given.actions)
    assert not torch.allclose(first.actions, other.actions)
    assert not torch.allclose(first.actions_normalized, first.noise.clamp(-1, 1))  # the flow moved it
    greedy = [policy.act(obs, mode="greedy").actions for _ in range(2)]
    assert torch.equal(*greedy)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_acting_tokens_never_change_the_reasoning_hidden_states(attention):
    policy = _policy(acting_attention=attention)
    inputs = policy.encode_obs(_obs())
    other = policy.encode_obs(_obs(seed=1))
    lay = policy.layout
    latents = policy._reason(inputs, policy.images(inputs.images, fast=False)[0]).latents
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(3, 4, 7, generator=g), torch.randn(3, 4, 7, generator=g)
    t1, t2 = torch.full((3,), 0.9), torch.full((3,), 0.2)
    with torch.no_grad():
        h1 = policy.forward_joint(inputs, latents, inputs, x1, t1)
        h2 = policy.forward_joint(inputs, latents, other, x2, t2)  # other acting frame, state, noise, time
        h3 = policy.forward_joint(other, latents, inputs, x1, t1)  # other reasoning observation
    assert torch.equal(h1[:, : lay.n_reason], h2[:, : lay.n_reason])  # bit-identical
    assert not torch.allclose(h1[:, lay.n_reason :], h2[:, lay.n_reason :])
    assert not torch.allclose(h1[:, lay.n_reason :], h3[:, lay.n_reason :])  # acting does read reasoning


def test_cached_paths_equal_one_joint_forward():
    """The KV-cached reasoning loop and acting step compute what one uncached forward does."""
    policy = _policy()
    inputs = policy.encode_obs(_obs())
    slow, fast = policy.images(inputs.images)
    state = policy._reason(inputs, slow)
    x, t = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(0)), torch.full((3,), 0.5)
    with torch.no_grad():
        cached = policy._velocity_fn(*policy._act_context(inputs, fast), state)(x, t)
        hidden = policy.forward_joint(inputs, state.latents, inputs, x, t)
    lay = policy.layout
    torch.testing.assert_close(cached, policy.action_out(hidden[:, -lay.chunk :]), atol=1e-5, rtol=1e-5)
    # each latent is the joint pass's hidden state one position earlier
    torch.testing.assert_close(
        state.latents, hidden[:, lay.n_prefix - 1 : lay.n_reason - 1], atol=1e-5, rtol=1e-5
    )


def test_kappa_cached_reasoning_matches_recomputing_it():
    slow, every = _policy(reason_every=4), _policy(reason_every=1)
    obs = _obs()
    flags, actions = [], []
    for _ in range(5):
        out = slow.act(obs, mode="greedy")
        flags.append(out.reasoned.tolist())
        actions.append(out.actions)
    assert [f[0] for f in flags] == [True, False, False, False, True] and all(len(set(f)) == 1 for f in flags)
    recomputed = every.act(obs, mode="greedy")
    assert recomputed.reasoned.all()
    for a in actions:
        torch.testing.assert_close(a, recomputed.actions, atol=1e-6, rtol=0)
    # reasoning is kept per env slot: a sub-batch of slots reuses exactly its rows
    slow.reset()
    full = slow.act(obs, mode="greedy")
    part = slow.act(obs.select([0, 2]), mode="greedy")
    assert not part.reasoned.any()
    torch.testing.assert_close(part.actions, full.actions[[0, 2]], atol=1e-5, rtol=0)
    # a changed observation acts on the stale reasoning until κ calls have passed; reset forgets it
    slow.reset()
    slow.act(obs, mode="greedy")
    moved = _obs(seed=5)
    stale = slow.act(moved, mode="greedy")
    fresh = every.act(moved, mode="greedy")
    assert not stale.reasoned.any() and not torch.allclose(stale.actions, fresh.actions)
    torch.testing.assert_close(stale.latents, full.latents)
    slow.reset()
    torch.testing.assert_close(slow.act(moved, mode="greedy").actions, fresh.actions, atol=1e-6, rtol=0)


def test_collector_restarts_the_reasoning_schedule_every_episode():
    from lastr1.envs import EnvConfig, make_env
    from lastr1.envs.base import EpisodeSpec
    from lastr1.rollout.collector import collect

    torch.manual_seed(0)
    policy = Last0Policy(dataclasses.replace(_config(reason_every=3), proprio_dim=2)).eval()
    with make_env(EnvConfig(backend="toy", image_size=SIZE, num_envs=2)) as env:
        for _ in range(2):  # the second batch must not inherit the first one's reasoning ages
            roll = collect(env, policy, [EpisodeSpec(0, "eval", 0), EpisodeSpec(1, "eval", 0)], mode="greedy")
            for i in range(2):
                rows = roll.index[i][roll.mask[i]]
                flags = roll.out.reasoned[rows].tolist()
                assert len(flags) >= 4 and flags == [j % 3 == 0 for j in range(len(flags))], flags


def test_save_load_round_trip_and_loader_dispatch(tmp_path):
    policy = _policy(init_acting_from_reasoning=True)
    path = policy.save_pretrained(tmp_path / "ckpt")
    assert json.loads((path / "config.json").read_text())["family"] == "last0"
    assert saved_family(path) == "last0"
    loaded = load_policy(path).eval()
    assert isinstance(loaded, Last0Policy) and loaded.config == policy.config
    obs = _obs(slots=False)
    assert torch.equal(loaded.act(obs, mode="greedy").actions, policy.act(obs, mode="greedy").actions)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(loaded.act(obs, generator=gen()).actions, policy.act(obs, generator=gen()).actions)
    with pytest.raises(ValueError, match="LaST0 policy"):
        LastR1Policy.from_pretrained(path)
    torch.manual_seed(0)
    lastr1 = LastR1Policy(PolicyConfig(d_model=32, n_layers=1, n_heads=2, image_grid=2, k_max=2))
    assert type(load_policy(lastr1.save_pretrained(tmp_path / "r1"))) is LastR1Policy
    assert saved_family(tmp_path / "r1") == "lastr1"
    # family options: κ for a LaST0 folder (one checkpoint evaluated at several κ), refused for LaST-R1
    assert load_policy(path, reason_every=1).config.last0.reason_every == 1
    with pytest.raises(ValueError, match=r"options \['reason_every'\] do not apply"):
        load_policy(tmp_path / "r1", reason_every=1)


def test_init_acting_from_reasoning_copies_the_expert():
    policy = _policy(init_acting_from_reasoning=True)
    for layer in policy.transformer.layers:
        assert torch.equal(layer.experts[0].qkv.weight, layer.experts[1].qkv.weight)
    plain = _policy()
    assert not torch.equal(
        plain.transformer.layers[0].experts[0].qkv.weight, plain.transformer.layers[0].experts[1].qkv.weight
    )
    alone = _policy(reasoning=False)
    assert alone.transformer.n_experts == 1 and alone.layout.n_reason == 0
    assert alone.act(_obs(), mode="greedy").latents.shape == (3, 0, 32)


def _last0_sft(toy_demos, out, steps: int = 40, **last0):
    """A tiny LaST0 SFT config on the toy demos (the shared tiny recipe, LaST0's own fields)."""
    from conftest import tiny_sft_config

    policy = dataclasses.replace(_config(**last0), image_size=32, proprio_dim=2, chunk=8)
    return tiny_sft_config(toy_demos, out, policy=policy, steps=steps)


def test_sft_last0_learns_saves_and_refuses_rl(toy_demos, tmp_path, capsys):
    from lastr1.train.sft import train_sft

    final = train_sft(_last0_sft(toy_demos, tmp_path / "sft"))
    rows = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert rows[-1]["flow_mse"] < 0.7 * rows[0]["flow_mse"], (rows[0], rows[-1])
    assert rows[-1]["latent_cos"] < rows[0]["latent_cos"]
    assert np.mean([r["staleness"] for r in rows]) > 0.5  # mixed κ in {2, 4, 8}: often an older frame
    policy = load_policy(final)
    assert isinstance(policy, Last0Policy)
    assert policy.config.last0.target_dims == (384, 2)  # DINOv2 of the one camera, then the state
    # with κ fixed to 1 the reasoning always reads the acting frame
    train_sft(_last0_sft(toy_demos, tmp_path / "k1", steps=10, train_reason_every=(1,)))
    assert all(r["staleness"] == 0 for r in read_metrics(tmp_path / "k1" / "metrics.jsonl"))
    # `lastr1 eval` loads it; `lastr1 rl` refuses it, pointing to the plan
    assert (
        main(["eval", f"checkpoint={final}", "env.backend=toy", "episodes_per_task=1", "progress=false"]) == 0
    )
    assert "reach-red" in capsys.readouterr().out
    protocol = json.loads((final / "eval" / "eval.json").read_text())["protocol"]
    assert protocol["actions"].startswith("greedy flow (from zero noise, 10 Euler steps)")
    assert main(["rl", f"checkpoint={final}", "env.backend=toy", f"out={tmp_path / 'rl'}"]) == 2
    err = capsys.readouterr().err
    assert "not implemented" in err and "docs/last0.md" in err


def test_serve_runs_a_last0_checkpoint(tmp_path):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from lastr1.commands import serve as serve_command
    from lastr1.serve.server import running_server
    from lastr1.serve.validate import IMAGE_KEY, PROMPT_KEY, STATE_KEY

    policy = _policy()
    path = policy.save_pretrained(tmp_path / "ckpt")
    server = serve_command.build_server(serve_command.Config(checkpoint=str(path), port=0))
    assert isinstance(server.policy, Last0Policy)
    obs = _obs(1, slots=False)
    request = {IMAGE_KEY: obs.images[0, 0], STATE_KEY: obs.proprio[0], PROMPT_KEY: obs.instruction[0]}
    with running_server(server) as port:
        client = WebsocketClientPolicy(f"ws://127.0.0.1:{port}")
        assert client.get_server_metadata()["action_horizon"] == 4
        reply = client.infer(request)
    expected = policy.act(obs, mode="greedy").actions[0].double().numpy()
    np.testing.assert_allclose(reply["actions"], expected, atol=1e-5)


@pytest.mark.slow
def test_demo_quick_last0_skips_rl_and_reports_the_sft_policy(tmp_path):
    env = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lastr1.cli", "demo", "preset=quick", "policy.family=last0"]
    proc = subprocess.run(
        [*cmd, f"runs_dir={tmp_path}", "progress=false"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "RL skipped for policy.family=last0: RL for LaST0's flow-matching acting expert is not implemented"
        in proc.stdout
    )
    run = tmp_path / "quick"
    assert not (run / "rl").exists()
    assert isinstance(load_policy(run / "sft" / "final"), Last0Policy)
    result = json.loads((run / "eval_sft.json").read_text())
    assert result["episodes"] == 4 and set(result["per_task"]) == {"reach-v3", "drawer-close-v3"}
    report = (run / "report.md").read_text()
    assert "RL was skipped" in report and "Policy: LaST0 (policy.family=last0)" in report
    for task in ("reach-v3", "drawer-close-v3", "**overall**"):
        assert re.search(rf"^\| {re.escape(task)} \| \d+% \[\d+%, \d+%\] \| 8.00 \| \d+ \|$", report, re.M), (
            task
        )
    for link in re.findall(r"\]\(([^)]+\.mp4)\)", report):
        assert (run / link).stat().st_size > 0
