"""LastR1Policy: shapes, KV cache, re-scoring equality, masks, stop rule, SFT outputs, save/load, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lastr1.envs.base import Observation
from lastr1.models import LastR1Policy, PolicyBatch, PolicyConfig
from lastr1.models.decode import DECODE_KEYS, DecodeConfig
from lastr1.models.latent import choose_stop, sample_tokens

B = 3


def _config(**kw) -> PolicyConfig:
    base = dict(
        image_size=16,
        image_grid=2,
        proprio_dim=3,
        instruction_vocab=64,
        instruction_max_len=6,
        d_model=32,
        n_layers=2,
        n_heads=2,
        k_max=4,
        latent_group=2,
        chunk=2,
        value_hidden=(16,),
    )
    base.update(kw)
    return PolicyConfig(**base)


def _policy(seed: int = 0, **kw) -> LastR1Policy:
    """A small policy; decoding keys (``force_latent_len=2``) go to its default DecodeConfig."""
    decode = DecodeConfig(**{k: kw.pop(k) for k in list(kw) if k in DECODE_KEYS})
    torch.manual_seed(seed)
    return LastR1Policy(_config(**kw), decode=decode).eval()


def _obs(n: int = B, size: int = 16, proprio: int = 3, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    words = ["pick up the red block", "open the drawer", "push the button now please"]
    return Observation(
        images=rng.integers(0, 256, (n, 1, size, size, 3), dtype=np.uint8),
        proprio=rng.standard_normal((n, proprio)).astype(np.float32),
        instruction=[words[i % 3] for i in range(n)],
        privileged=np.zeros((n, 2), np.float32),
        task=np.zeros(n, np.int64),
    )


def test_act_shapes_and_ranges() -> None:
    policy = _policy()
    for mode in ("sample", "greedy"):
        out = policy.act(_obs(), mode=mode, generator=torch.Generator().manual_seed(1))
        assert out.actions.shape == (B, 2, 7) and out.action_tokens.shape == (B, 14)
        assert out.latents.shape == (B, 4, 32) and out.latent_mask.shape == (B, 4)
        assert out.stop_logits.shape == (B, 2)
        for t in (out.latent_len, out.stop_index, out.logp_action, out.logp_stop, out.value):
            assert t.shape == (B,)
        assert set(out.latent_len.tolist()) <= {2, 4}
        assert torch.equal(out.latent_len, (out.stop_index + 1) * 2)
        assert torch.equal(out.latent_mask.sum(1), out.latent_len)
        assert out.actions.abs().max() <= 1.0 and torch.all(out.logp_tokens <= 0)
        assert torch.allclose(out.logp_action, out.logp_tokens.double().sum(1))
        expected_temp = DecodeConfig().action_temperature if mode == "sample" else 1.0
        assert torch.all(out.action_temperature == expected_temp)


def test_kv_cache_matches_full_recompute() -> None:
    policy = _policy()
    obs = _obs()
    cached = policy.act(obs, mode="greedy", use_cache=True)
    full = policy.act(obs, mode="greedy", use_cache=False)
    torch.testing.assert_close(cached.latents, full.latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.stop_logits, full.stop_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.value, full.value, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.logp_tokens, full.logp_tokens, atol=1e-5, rtol=0)
    assert torch.equal(cached.action_tokens, full.action_tokens)
    again = policy.act(cached.inputs, mode="greedy")  # already-encoded inputs are accepted too
    assert torch.equal(again.action_tokens, cached.action_tokens)


def test_candidate_values_are_the_value_at_each_reasoning_length() -> None:
    """``candidate_values[:, j]`` is the value ``act`` reports when it stops at candidate j."""
    policy = _policy()
    out = policy.act(_obs(), generator=torch.Generator().manual_seed(4))
    assert out.candidate_values.shape == (B, 2)
    chosen = out.candidate_values.gather(1, out.stop_index[:, None]).squeeze(1)
    torch.testing.assert_close(chosen, out.value)
    for j, length in enumerate(policy.layout.candidate_lengths()):
        forced = policy.act(_obs(), mode="greedy", decode=DecodeConfig(force_latent_len=length))
        torch.testing.assert_close(forced.value, out.candidate_values[:, j], atol=1e-5, rtol=0)
    assert not torch.allclose(out.candidate_values[:, 0], out.candidate_values[:, 1])


@pytest.mark.parametrize("decoding", ["parallel", "autoregressive"])
@pytest.mark.parametrize("mode", ["sample", "greedy"])
def test_log_probs_match_act(decoding: str, mode: str) -> None:
    policy = _policy(decoding=decoding)
    out = policy.act(_obs(), mode=mode, generator=torch.Generator().manual_seed(2))
    lp = policy.log_probs(PolicyBatch.from_act(out))
    assert (lp.logp_action - out.logp_action).abs().max() <= 1e-5
    assert (lp.logp_tokens - out.logp_tokens).abs().max() <= 1e-5
    assert (lp.logp_stop - out.logp_stop).abs().max() <= 1e-5
    assert (lp.mu - out.latents).abs().max() <= 1e-5
    assert (lp.value - out.value).abs().max() <= 1e-5
    assert torch.equal(lp.latent_mask, out.latent_mask)
    assert lp.entropy.shape == (B,) and torch.all(lp.entropy > 0)


def test_log_probs_are_differentiable_and_batchable() -> None:
    policy = _policy()
    outs = [policy.act(_obs(seed=s), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    batch = PolicyBatch.cat([PolicyBatch.from_act(o) for o in outs]).index([0, 2, 4])
    lp = policy.log_probs(batch)
    (lp.logp_action.sum() + lp.logp_stop.sum() + lp.value.sum() + lp.mu.sum()).backward()
    assert policy.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert policy.stop_head.weight.grad.abs().sum() > 0
    assert torch.allclose(
        lp.logp_action.detach(), torch.cat([o.logp_action for o in outs])[[0, 2, 4]], atol=1e-5
    )


def test_latent_noise_keeps_rescoring_exact() -> None:
    policy = _policy(latent_noise_std=0.5)
    out = policy.act(_obs(), mode="sample", generator=torch.Generator().manual_seed(3))
    lp = policy.log_probs(PolicyBatch.from_act(out))
    assert (lp.mu - out.latents).abs().max() > 0.1  # the latents are noisy samples around mu
    assert (lp.logp_action - out.logp_action).abs().max() <= 1e-5
    assert (lp.logp_stop - out.logp_stop).abs().max() <= 1e-5


def test_latents_after_chosen_length_are_masked_from_actions() -> None:
    policy = _policy()
    inputs = policy.encode_obs(_obs())
    lat = torch.randn(B, 4, 32)
    length = torch.full((B,), 2)
    base = policy.sft_outputs(inputs, latent_len=length, latent_inputs=lat).action_logits
    after = lat.clone()
    after[:, 2:] += 5.0  # slots 3 and 4 lie after the chosen length 2
    torch.testing.assert_close(policy.sft_outputs(inputs, length, latent_inputs=after).action_logits, base)
    before = lat.clone()
    before[:, 1] += 5.0  # slot 2 is inside the chosen length
    assert (policy.sft_outputs(inputs, length, latent_inputs=before).action_logits - base).abs().max() > 1e-4
    longer = policy.sft_outputs(inputs, torch.full((B,), 4), latent_inputs=after).action_logits
    assert (longer - base).abs().max() > 1e-4  # with length 4 the same change is visible


def test_sft_outputs_coconut_loop_matches_act_and_has_gradients() -> None:
    policy = _policy(target_dim=5)
    obs = _obs()
    out = policy.act(obs, mode="greedy")
    sft = policy.sft_outputs(policy.encode_obs(obs), latent_len=out.latent_len)
    torch.testing.assert_close(sft.latents.detach(), out.latents, atol=1e-5, rtol=0)
    assert sft.action_logits.shape == (B, 14, 256) and sft.latent_pred.shape == (B, 4, 5)
    assert sft.stop_logits.shape == (B, 2) and sft.value.shape == (B,)
    torch.testing.assert_close(sft.action_logits.detach().argmax(-1), out.action_tokens)
    # the last latent depends on the image only through the sequential loop: gradients must reach it
    sft.latents[:, -1].pow(2).sum().backward()
    assert policy.image_encoder.proj.weight.grad.abs().sum() > 0
    assert torch.equal(policy.stop_target(torch.tensor([2, 4])), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not among the candidates"):
        policy.sft_outputs(policy.encode_obs(obs), latent_len=torch.full((B,), 3))


def test_k_max_zero_has_no_latents_and_no_stop() -> None:
    policy = _policy(k_max=0)
    out = policy.act(_obs(), generator=torch.Generator().manual_seed(0))
    assert out.latents.shape == (B, 0, 32) and out.stop_logits.shape == (B, 0)
    assert out.candidate_values.shape == (B, 0)
    assert torch.all(out.latent_len == 0) and torch.all(out.logp_stop == 0)
    assert policy.stop_head is None
    lp = policy.log_probs(PolicyBatch.from_act(out))
    assert (lp.logp_action - out.logp_action).abs().max() <= 1e-5
    assert (lp.value - out.value).abs().max() <= 1e-5
    sft = policy.sft_outputs(policy.encode_obs(_obs()))
    assert sft.latents.shape == (B, 0, 32) and sft.action_logits.shape == (B, 14, 256)


def test_greedy_stop_mean_rule() -> None:
    # near-tie between the shortest and the longest candidate: the argmax jumps across the range on a
    # tiny change, the mean rule moves at most one candidate
    a = torch.tensor([[0.51, 0.0, 0.0, 0.49], [0.49, 0.0, 0.0, 0.51]]).clamp_min(1e-6).log()
    argmax = choose_stop(a, "greedy", 1.0, 1.01)[0].tolist()
    mean = choose_stop(a, "greedy", 1.0, 1.01, greedy_rule="mean")[0].tolist()
    assert argmax == [0, 3] and mean == [1, 2]
    # a peaked distribution decodes to its peak; the log-prob is the chosen candidate's
    b = torch.tensor([[0.01, 0.01, 0.97, 0.01]]).log()
    index, logp = choose_stop(b, "greedy", 1.0, 0.99, greedy_rule="mean")
    assert index.tolist() == [2]
    torch.testing.assert_close(logp, torch.log_softmax(b, -1)[:, 2])
    # and through the policy's decode config
    policy = _policy()
    out = policy.act(_obs(), mode="greedy", decode=DecodeConfig(greedy_stop="mean"))
    probs = torch.softmax(out.stop_logits, -1)
    expected = (probs @ torch.arange(probs.shape[-1], dtype=probs.dtype)).round().long()
    lengths = torch.tensor(policy.layout.candidate_lengths())
    assert torch.equal(out.latent_len, lengths[expected])


def test_greedy_stop_hazard_rule() -> None:
    probs = torch.tensor([[0.5, 0.497, 0.002, 0.001], [0.2, 0.3, 0.4, 0.1], [0.995, 0.003, 0.001, 0.001]])
    logits = probs.log()
    index, logp = choose_stop(logits, "greedy", 1.0, 0.99)
    # row 0: hazard 0.5 at the first candidate, 0.497 / 0.5 = 0.994 at the second -> second, although
    # the first is the argmax; row 1: no hazard reaches 0.99 (the last one does not count) -> argmax;
    # row 2: the first candidate's own probability is 0.995 -> first
    assert index.tolist() == [1, 2, 0]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[torch.arange(3), index])
    # a common shift of the logits (which the softmax, and so RL, cannot see) changes nothing
    assert torch.equal(choose_stop(logits + 7.0, "greedy", 1.0, 0.99)[0], index)
    assert choose_stop(logits, "greedy", 1.0, 1.01)[0].tolist() == [0, 2, 0]  # threshold > 1: argmax
    # and through the policy: shifting the stop head's bias leaves the greedy length unchanged
    policy = _policy()
    before = policy.act(_obs(), mode="greedy").latent_len
    with torch.no_grad():
        policy.stop_head.bias.add_(10.0)
    assert torch.equal(policy.act(_obs(), mode="greedy").latent_len, before)


def test_forced_reasoning_length_overrides_the_stop_in_both_modes() -> None:
    free = _policy()
    forced = _policy(force_latent_len=2)
    obs = _obs()
    for mode in ("sample", "greedy"):
        out = forced.act(obs, mode=mode, generator=torch.Generator().manual_seed(0))
        assert out.latent_len.tolist() == [2] * B and torch.equal(
            out.stop_index, torch.zeros(B, dtype=torch.long)
        )
        assert not out.stop_chosen.any()  # a forced length is not a choice of the stop
        # the log-prob is the stop categorical's at the forced candidate, so re-scoring stays exact
        temp = 1.6 if mode == "sample" else 1.0
        expected = torch.log_softmax(out.stop_logits / temp, -1)[:, 0]
        torch.testing.assert_close(out.logp_stop, expected)
    # same weights, so the latents (computed before the stop) match the free policy's
    torch.testing.assert_close(forced.act(obs, mode="greedy").latents, free.act(obs, mode="greedy").latents)
    for bad in (1, 6):  # checked against the architecture, at load and per call
        with pytest.raises(
            ValueError, match=f"force_latent_len={bad} must be 0 .* multiple of latent_group=2"
        ):
            _policy(force_latent_len=bad)
        with pytest.raises(ValueError, match=f"force_latent_len={bad} must be 0"):
            free.act(obs, decode=DecodeConfig(force_latent_len=bad))
    with pytest.raises(ValueError, match="decode.force_latent_len=-2 must be >= 0"):
        DecodeConfig(force_latent_len=-2)


def test_bin_mean_decode_takes_the_bin_nearest_the_mean() -> None:
    # two distant near-tied peaks: the argmax jumps to one end, the mean lies between them
    probs = torch.full((1, 1, 8), 1e-6)
    probs[0, 0, 1], probs[0, 0, 6] = 0.6, 0.399  # mean index 2.99
    tokens, logp = sample_tokens(probs.log(), "mean", 1.0)
    expected = round(float((probs / probs.sum() * torch.arange(8)).sum()))
    assert tokens.item() == expected == 3 and sample_tokens(probs.log(), "greedy", 1.0)[0].item() == 1
    torch.testing.assert_close(logp, torch.log_softmax(probs.log(), -1)[0, 0, 3].view(1, 1))
    # through the policy: bin_mean only changes the greedy decode, never sampling
    policy = _policy(greedy_actions="bin_mean")
    obs = _obs()
    out = policy.act(obs, mode="greedy")
    argmax = _policy().act(obs, mode="greedy")
    # an untrained head is near-uniform over the 256 bins: its mean bins sit mid-range, its argmaxes anywhere
    assert (out.action_tokens.float() - 127.5).abs().max() < 20
    assert (argmax.action_tokens.float() - 127.5).abs().max() > 60
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(
        policy.act(obs, mode="sample", generator=gen()).action_tokens,
        _policy().act(obs, mode="sample", generator=gen()).action_tokens,
    )
    with pytest.raises(ValueError, match="greedy_actions='median' must be 'argmax' or 'bin_mean'"):
        DecodeConfig(greedy_actions="median")


def test_stop_sampling_follows_tempered_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, 4)
    index, logp = choose_stop(logits, "sample", 1.6, 0.99, torch.Generator().manual_seed(0))
    freq = torch.bincount(index, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 1.6, -1), atol=0.015, rtol=0)
    torch.testing.assert_close(logp, torch.log_softmax(logits / 1.6, -1).gather(1, index[:, None])[:, 0])


def test_save_load_round_trip(tmp_path) -> None:
    stats = {"action": {k: [-0.5 + 0.1 * i for i in range(7)] for k in ("mean", "std", "min", "q01")}}
    stats["action"].update({k: [0.5 + 0.1 * i for i in range(7)] for k in ("max", "q99")})
    stats["proprio"] = {"mean": np.array([0.1, 0.2, 0.3]), "std": [1.0, 2.0, 3.0]}  # numpy is accepted
    torch.manual_seed(0)
    policy = LastR1Policy(_config(target_dim=4), stats).eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = LastR1Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == policy.config and loaded.stats == policy.stats
    obs = _obs()
    a = policy.act(obs, generator=torch.Generator().manual_seed(5))
    b = loaded.act(obs, generator=torch.Generator().manual_seed(5))
    for f in dataclasses.fields(a):
        if isinstance(getattr(a, f.name), torch.Tensor):
            assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name
    with pytest.raises(ValueError, match="does not exist"):
        LastR1Policy.from_pretrained(tmp_path / "nope")
    other = LastR1Policy(_config(d_model=16, n_heads=2))
    other.save_pretrained(tmp_path / "small")
    (tmp_path / "small" / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    with pytest.raises(ValueError, match="does not match config.json"):
        LastR1Policy.from_pretrained(tmp_path / "small")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        LastR1Policy.from_pretrained(tmp_path / "ckpt")


def test_bad_inputs_raise_clear_errors() -> None:
    policy = _policy()
    with pytest.raises(ValueError, match="image_size=16"):
        policy.act(_obs(size=32))
    with pytest.raises(ValueError, match="proprio_dim"):
        policy.act(_obs(proprio=5))
    bad = _obs()
    bad.images = bad.images.astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        policy.act(bad)
    with pytest.raises(ValueError, match="mode"):
        policy.act(_obs(), mode="beam")
    with pytest.raises(ValueError, match="multiple of latent_group"):
        _config(k_max=3)
    no_proprio = _policy(use_proprio=False)
    assert no_proprio.act(_obs(proprio=5)).actions.shape == (B, 2, 7)  # proprio ignored when unused


def test_detached_value_head_does_not_train_the_backbone() -> None:
    """``log_probs(detach_value=True)`` (RLConfig.value_trains_backbone=false): the value loss reaches
    only the value head; attached (the reference), it reaches the shared backbone too."""
    policy = _policy()
    out = policy.act(_obs(), mode="sample", generator=torch.Generator().manual_seed(0))
    for detached in (False, True):
        policy.zero_grad(set_to_none=True)
        policy.log_probs(PolicyBatch.from_act(out), detach_value=detached).value.square().sum().backward()
        head = [p.grad for p in policy.value_head.parameters()]
        backbone = [p.grad for n, p in policy.named_parameters() if n.startswith("backbone.")]
        assert all(g is not None and g.abs().sum() > 0 for g in head)
        touched = any(g is not None and g.abs().sum() > 0 for g in backbone)
        assert touched != detached


def _with_stop_context(policy: LastR1Policy, path) -> LastR1Policy:
    """The policy reloaded with the stop's context readout added, as RL's algo.stop.context does."""
    return LastR1Policy.from_pretrained(policy.save_pretrained(path), stop_context=True).eval()


def test_stop_context_starts_as_a_no_op_and_round_trips(tmp_path):
    policy = _policy()
    obs = _obs()
    before = policy.act(obs, mode="greedy").stop_logits
    policy = _with_stop_context(policy, tmp_path / "plain")  # zero-initialised: the same distribution
    assert policy.config.stop_context
    assert torch.equal(policy.act(obs, mode="greedy").stop_logits, before)
    with torch.no_grad():
        policy.stop_context_head.weight.normal_()
    changed = policy.act(obs, mode="greedy").stop_logits
    assert not torch.allclose(changed, before)
    loaded = LastR1Policy.from_pretrained(policy.save_pretrained(tmp_path / "ctx")).eval()
    assert torch.allclose(loaded.act(obs, mode="greedy").stop_logits, changed)
    with pytest.raises(ValueError, match="stop_context needs k_max > 0"):
        _policy(k_max=0, stop_context=True)


def test_stop_context_centre_is_fitted_once_while_the_readout_is_zero(tmp_path):
    """fit_stop_context_center: the mean <latent_start> state of the inputs, set only while the
    readout is zero (acting does not change), kept through save/load; the readout then reads the
    state minus the centre, and a checkpoint saved before the centre existed loads uncentred."""
    from safetensors.torch import load_file, save_file

    policy = _policy()
    obs = _obs()
    inputs = policy.encode_obs(obs)
    before = policy.act(inputs, mode="greedy").stop_logits
    policy = _with_stop_context(policy, tmp_path / "plain")
    assert not policy.stop_context_center.any()
    assert policy.fit_stop_context_center(inputs)
    assert torch.equal(policy.act(inputs, mode="greedy").stop_logits, before)  # zero readout: no change
    chain: list[torch.Tensor] = []
    real = policy._stop_logits
    policy._stop_logits = lambda c: chain.append(c) or real(c)  # type: ignore[method-assign]
    policy.act(inputs, mode="greedy")
    del policy._stop_logits
    torch.testing.assert_close(policy.stop_context_center, chain[0][:, 0].mean(0))
    centre = policy.stop_context_center.clone()
    assert not policy.fit_stop_context_center(policy.encode_obs(_obs(seed=1)))  # fitted once
    with torch.no_grad():
        policy.stop_context_head.weight.normal_()
    logits = policy.act(inputs, mode="greedy").stop_logits
    by_hand = policy.stop_head(chain[0][:, [2, 4]]).squeeze(-1)
    by_hand = by_hand + (chain[0][:, 0] - centre) @ policy.stop_context_head.weight.T
    torch.testing.assert_close(logits, by_hand)
    path = policy.save_pretrained(tmp_path / "centred")
    loaded = LastR1Policy.from_pretrained(path).eval()
    assert torch.equal(loaded.stop_context_center, centre)
    assert not loaded.fit_stop_context_center(inputs)  # a trained readout keeps its centre
    weights = load_file(str(path / "model.safetensors"))
    del weights["stop_context_center"]  # as saved before the centre existed
    save_file(weights, str(path / "model.safetensors"))
    old = LastR1Policy.from_pretrained(path).eval()
    assert not old.stop_context_center.any()
    uncentred = (
        policy.stop_head(chain[0][:, [2, 4]]).squeeze(-1) + chain[0][:, 0] @ old.stop_context_head.weight.T
    )
    torch.testing.assert_close(old.act(inputs, mode="greedy").stop_logits, uncentred)


def test_architecture_config_is_frozen_and_decoding_lives_outside_it(tmp_path) -> None:
    """The weights' config cannot be edited after construction; the decode is saved beside it
    (decode.json), replaced at load, and a checkpoint written before decode.json existed (decoding
    keys inside config.json) loads with those keys as its default decode."""
    import json

    policy = _policy(action_temperature=0.5, stop_scope="episode")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.config.d_model = 8  # type: ignore[misc]
    path = policy.save_pretrained(tmp_path / "p")
    assert json.loads((path / "decode.json").read_text())["stop_scope"] == "episode"
    assert not set(json.loads((path / "config.json").read_text())) & DECODE_KEYS
    assert LastR1Policy.from_pretrained(path).decode == policy.decode
    greedy = DecodeConfig(greedy_actions="bin_mean")
    assert LastR1Policy.from_pretrained(path, decode=greedy).decode == greedy
    legacy = {
        **json.loads((path / "config.json").read_text()),
        "action_temperature": 1.0,
        "stop_scope": "episode",
    }
    (path / "config.json").write_text(json.dumps(legacy))
    (path / "decode.json").unlink()
    old = LastR1Policy.from_pretrained(path)
    assert old.decode == DecodeConfig(action_temperature=1.0, stop_scope="episode")
    assert old.config == policy.config


def test_parameter_groups_cover_every_trainable_parameter_once() -> None:
    policy = _policy()
    groups = policy.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert sorted(ids) == sorted(id(p) for p in policy.parameters() if p.requires_grad)
    assert {id(p) for p in groups["stop"]} == {id(p) for p in policy.stop_head.parameters()}
    assert {id(p) for p in groups["value"]} == {id(p) for p in policy.value_head.parameters()}


def test_the_qwen3_vl_layout_switch_leaves_the_tiny_backbone_unchanged() -> None:
    """policy.qwen3_vl_layout only concerns Qwen3-VL: a tiny policy is built and decides bit for bit
    the same under either value."""
    ours, ref = _policy(qwen3_vl_layout="ours"), _policy(qwen3_vl_layout="reference")
    assert not ref.layout.latent_end and ref.layout_tokens is None
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.state_dict().items())
    a = ours.act(_obs(), generator=torch.Generator().manual_seed(0))
    b = ref.act(_obs(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.action_tokens, b.action_tokens) and torch.equal(a.stop_logits, b.stop_logits)
