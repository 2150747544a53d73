"""The reference's token layout on Qwen3-VL (``PolicyConfig.qwen3_vl_layout="reference"``), CPU and offline.

On the tiny random Qwen3-VL of conftest.py's ``qwen_dir``: the special tokens (added, counted,
saved, refused when missing), the left-padded prompt against transformers' own left-padded forward,
the ``[z z <latent_end>] x G`` tail, the ``lm_head`` stop and action readouts of the saved checkpoint,
act() vs log_probs(), the KV cache, masked groups, and which parameters SFT and RL move.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import needs_peft, require_qwen3_vl

transformers = require_qwen3_vl()

from lastr1.envs.base import Observation  # noqa: E402
from lastr1.models import LastR1Policy, PolicyBatch, PolicyConfig  # noqa: E402
from lastr1.models.backbones import qwen3_vl_layout  # noqa: E402
from lastr1.models.backbones.qwen3_vl_files import bundled_config  # noqa: E402
from lastr1.models.backbones.qwen3_vl_layout import layout_token_names  # noqa: E402
from lastr1.models.latent import attention_mask  # noqa: E402

torch.set_num_threads(1)
B = 3
SIZE = 64  # conftest.QWEN3_VL_IMAGE_SIZE: 4 image tokens per view
PROMPT = 24  # prompt length of these tests (the reference's 95 is the default)
# instructions of different token counts, so every row of a batch has its own amount of padding
WORDS = ["pick up the red block", "open the drawer", "push the button now please and then stop"]


def _config(qwen_dir: Path, **kw) -> PolicyConfig:
    base = dict(
        backbone="qwen3_vl",
        qwen3_vl_layout="reference",
        qwen3_vl_prompt_len=PROMPT,
        pretrained=str(qwen_dir),
        image_size=SIZE,
        proprio_dim=3,
        k_max=8,
        latent_group=2,
        chunk=2,
        value_hidden=(16,),
    )
    base.update(kw)
    return PolicyConfig(**base)


def _policy(qwen_dir: Path, seed: int = 0, **kw) -> LastR1Policy:
    torch.manual_seed(seed)
    return LastR1Policy(_config(qwen_dir, **kw)).eval()


def _obs(n: int = B, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        images=rng.integers(0, 256, (n, 1, SIZE, SIZE, 3), dtype=np.uint8),
        proprio=rng.standard_normal((n, 3)).astype(np.float32),
        instruction=[WORDS[i % 3] for i in range(n)],
        privileged=np.zeros((n, 2), np.float32),
        task=np.zeros(n, np.int64),
    )


@pytest.fixture(scope="module")
def policy(qwen_dir) -> LastR1Policy:
    return _policy(qwen_dir)


def _ids(pol: LastR1Policy, names: list[str]) -> list[int]:
    return [int(pol.obs_encoder.tokenizer.convert_tokens_to_ids(n)) for n in names]


# ----------------------------------------------------------------------------- special tokens


def test_special_tokens_are_added_and_reported_once(qwen_dir, capsys, monkeypatch) -> None:
    monkeypatch.setattr(qwen3_vl_layout, "_REPORTED", set())
    pol = _policy(qwen_dir)
    names = layout_token_names(256)
    ids = _ids(pol, names)
    assert len(names) == 259 and len(set(ids)) == 259 and min(ids) >= 151669  # after Qwen3's own tokens
    rows = pol.backbone.model.get_input_embeddings().weight.shape[0]
    assert rows == 151936  # they fit in Qwen3-VL's spare embedding rows: none added
    out = capsys.readouterr().out
    assert out.count("added 259 special tokens") == 1 and "0 rows to the embedding" in out
    _policy(qwen_dir)  # the same source again: not reported twice
    assert "special tokens" not in capsys.readouterr().out


def test_an_embedding_without_spare_rows_is_resized_and_the_count_reported(tmp_path, capsys) -> None:
    """A model whose embedding has exactly the tokenizer's rows gets one new row per added token; with
    untied embeddings both matrices grow, the policy keeps input and lm_head rows apart, and saving
    writes each into its own matrix."""
    from lastr1.models.backbones.qwen3_vl_files import offline_tokenizer_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(offline_tokenizer_dir()), local_files_only=True
    )
    hf = bundled_config("tiny")
    hf["text_config"]["vocab_size"] = len(tokenizer)
    hf["tie_word_embeddings"] = hf["text_config"]["tie_word_embeddings"] = False
    folder = tmp_path / "exact"
    torch.manual_seed(0)
    transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig.from_dict(hf)).save_pretrained(
        str(folder)
    )
    tokenizer.save_pretrained(str(folder))
    from lastr1.models.backbones.qwen3_vl import image_processor_class
    from lastr1.models.backbones.qwen3_vl_files import bundled_preprocessor

    pre = bundled_preprocessor()
    pre["size"] = {"shortest_edge": SIZE * SIZE, "longest_edge": SIZE * SIZE}
    image_processor_class()(**pre).save_pretrained(str(folder))
    pol = _policy(folder, k_max=2, chunk=1)
    assert pol.backbone.model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 259
    assert pol.backbone.model.get_output_embeddings().weight.shape[0] == len(tokenizer) + 259
    note = capsys.readouterr().out
    assert (
        "added 259 special tokens" in note
        and f"259 rows to the embedding (now {len(tokenizer) + 259}" in note
    )
    assert pol.layout_tokens.rows_out is not None  # untied: separate lm_head rows
    out = pol.act(_obs(2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.logp_tokens).all()
    with torch.no_grad():
        pol.layout_tokens.rows.add_(1.0)  # stand-ins for trained rows
        pol.layout_tokens.rows_out.sub_(1.0)
    saved = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        str(pol.save_pretrained(tmp_path / "policy") / "backbone"), local_files_only=True, dtype=torch.float32
    )
    ids = pol.layout_tokens.ids
    torch.testing.assert_close(
        saved.get_input_embeddings().weight[ids], pol.layout_tokens.rows, atol=0, rtol=0
    )
    torch.testing.assert_close(saved.lm_head.weight[ids], pol.layout_tokens.rows_out, atol=0, rtol=0)


# ----------------------------------------------------------------------------- the prompt


def test_prompt_is_left_padded_and_equals_transformers_left_padded_forward(qwen_dir) -> None:
    """Padding first, then image, instruction; the real tokens' hidden states are those of
    Qwen3VLModel.forward on the same left-padded batch with its attention mask (positions from
    get_rope_index with the mask, DeepStack on the shifted image tokens)."""
    pol = _policy(qwen_dir, use_proprio=False)
    inputs = pol.encode_obs(_obs())
    enc, lay = pol.obs_encoder, pol.layout
    assert lay.n_prefix == PROMPT + 1 and enc.max_len == PROMPT - (4 + 2)
    with torch.no_grad():
        _, valid_obs, _, order = enc(inputs.images, inputs.instruction_ids, inputs.instruction_mask, None)
        n_pad = (~inputs.instruction_mask).sum(1)
        assert len(set(n_pad.tolist())) == B  # three different amounts of padding
        for i in range(B):  # padding first, then every real token
            assert valid_obs[i].tolist() == [False] * int(n_pad[i]) + [True] * (PROMPT - int(n_pad[i]))
        prefix, valid, runner = pol._prefix(inputs)
        pos = torch.arange(lay.n_prefix)
        mask = attention_mask(lay, pos, lay.n_prefix, valid, torch.full((B,), lay.k_max), False)
        hidden = runner(prefix, pos, mask)[0][:, :-1]  # without <latent_start>
        ids = enc.template_ids[:-1].expand(B, -1).clone()
        ids[:, 6:] = inputs.instruction_ids
        ids = ids.gather(1, order)
        types = enc.template_types[:-1][order].int()
        forward = pol.backbone.model.model
        kwargs = {"mm_token_type_ids": types} if _accepts(forward.forward, "mm_token_type_ids") else {}
        ref = forward(
            input_ids=ids,
            attention_mask=valid_obs.long(),
            pixel_values=enc.pixels(inputs.images),
            image_grid_thw=enc.grid_thw.repeat(B, 1),
            **kwargs,
        ).last_hidden_state
    torch.testing.assert_close(hidden[valid_obs], ref[valid_obs], atol=2e-5, rtol=1e-4)


def test_the_amount_of_padding_changes_nothing(qwen_dir) -> None:
    """Positions count real tokens only, so a longer prompt (more padding) decides the same."""
    short = _policy(qwen_dir, qwen3_vl_prompt_len=PROMPT)
    long = _policy(qwen_dir, qwen3_vl_prompt_len=PROMPT + 9)
    assert long.layout.n_prefix == short.layout.n_prefix + 9
    a = short.act(_obs(), mode="greedy")
    b = long.act(_obs(), mode="greedy")
    assert torch.equal(a.action_tokens, b.action_tokens) and torch.equal(a.stop_index, b.stop_index)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.stop_logits, b.stop_logits, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- the tail


def test_tail_has_a_latent_end_after_every_group_and_zero_action_inputs(policy) -> None:
    lay = policy.layout
    assert lay.latent_end and lay.candidate_lengths() == [2, 4, 6, 8]
    assert lay.n_reasoning == 12 and lay.action_begin == lay.n_prefix + 12
    assert lay.stop_rows() == [2, 5, 8, 11]  # each group's last latent (chain index)
    assert lay.value_rows() == [3, 6, 9, 12]  # each group's <latent_end>
    assert lay.mu_rows() == [0, 1, 3, 4, 6, 7, 9, 10]  # the position before every latent
    end = policy.layout_tokens.end(1)[0, 0]
    latents = torch.randn(1, 8, policy.config.d_model)
    seq = policy._reasoning_inputs(latents)[0]
    for i in (2, 5, 8, 11):
        assert torch.equal(seq[i], end)
    assert torch.equal(seq[[0, 1, 3, 4, 6, 7, 9, 10]], latents[0])
    assert not policy._action_inputs(2, None).any()  # the reference's zero input embeddings
    assert policy.stop_head is None and policy.action_head is None and policy.latent_start is None
    # <latent_start>'s embedding closes the prefix
    inputs = policy.encode_obs(_obs(1))
    prefix, _, _ = policy._prefix(inputs)
    assert torch.equal(prefix[0, -1], policy.layout_tokens.start(1)[0, 0])


@pytest.mark.parametrize("length", [2, 4, 6, 8])
def test_each_candidate_length_can_be_chosen(policy, length: int) -> None:
    forced = dataclasses.replace(policy.decode, force_latent_len=length)
    out = policy.act(_obs(), mode="greedy", decode=forced)
    assert out.latent_len.tolist() == [length] * B
    assert torch.equal(out.latent_mask.sum(1), out.latent_len)
    # the value is read at the chosen group's <latent_end>: the matching candidate value
    torch.testing.assert_close(out.value, out.candidate_values[:, length // 2 - 1])
    lp = policy.log_probs(PolicyBatch.from_act(out))
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=2e-5, rtol=1e-5)


def test_sampled_lengths_cover_the_candidates(policy) -> None:
    out = policy.act(_obs(24), generator=torch.Generator().manual_seed(0))
    assert set(out.latent_len.tolist()) <= {2, 4, 6, 8} and len(set(out.latent_len.tolist())) >= 2


@pytest.mark.parametrize("mode", ["sample", "greedy"])
def test_log_probs_match_act(policy, mode: str) -> None:
    out = policy.act(_obs(), mode=mode, generator=torch.Generator().manual_seed(1))
    lp = policy.log_probs(PolicyBatch.from_act(out))
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.logp_action, out.logp_action, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(lp.logp_stop, out.logp_stop, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.stop_logits, out.stop_logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.value, out.value, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp.mu, out.latents, atol=2e-5, rtol=1e-5)  # Coconut: mu_k fed back as z_k


def test_kv_cache_matches_full_recompute(policy) -> None:
    a = policy.act(_obs(), generator=torch.Generator().manual_seed(3), use_cache=True)
    b = policy.act(_obs(), generator=torch.Generator().manual_seed(3), use_cache=False)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.stop_logits, b.stop_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.candidate_values, b.candidate_values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logp_tokens, b.logp_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.action_tokens, b.action_tokens)


def test_unchosen_groups_are_invisible_to_the_action_slots(policy) -> None:
    out = policy.act(_obs(), decode=dataclasses.replace(policy.decode, force_latent_len=4))
    batch = PolicyBatch.from_act(out)
    base = policy.log_probs(batch).logp_tokens
    late = dataclasses.replace(batch, latents=batch.latents.clone())
    late.latents[:, 4:] += 5.0  # groups 3 and 4: not chosen
    torch.testing.assert_close(policy.log_probs(late).logp_tokens, base, atol=1e-6, rtol=1e-6)
    early = dataclasses.replace(batch, latents=batch.latents.clone())
    early.latents[:, 2:4] += 5.0  # group 2: chosen
    assert (policy.log_probs(early).logp_tokens - base).abs().max() > 1e-4
    # the mask: action queries see the chosen groups' latents and <latent_end>s, nothing of the others
    lay = policy.layout
    q = torch.tensor([lay.action_begin])
    valid = torch.ones(1, lay.n_prefix, dtype=torch.bool)
    row = attention_mask(lay, q, lay.total, valid, torch.tensor([4]), False)[0, 0]
    seen = row[lay.n_prefix : lay.action_begin].tolist()
    assert seen == [True] * 6 + [False] * 6  # z1 z2 E1 z3 z4 E2 | z5 z6 E3 z7 z8 E4
    assert row[lay.action_begin :].all()  # bidirectional among the action slots


# ----------------------------------------------------------------------------- readouts and persistence


def _sft_step(pol: LastR1Policy, lr: float = 1e-2) -> None:
    from lastr1.train.sft import SFTConfig, SFTData, sft_loss

    g = torch.Generator().manual_seed(11)
    obs = _obs(4)
    data = SFTData(
        images=torch.from_numpy(obs.images),
        proprio=torch.from_numpy(obs.proprio),
        instructions=list(obs.instruction),
        tokens=pol.tokenizer.encode(torch.rand(4, pol.config.chunk, 7, generator=g) * 2 - 1).long(),
        targets=torch.randn(4, pol.config.k_max, pol.config.d_model, generator=g),
        task=torch.zeros(4, dtype=torch.long),
        task_names=["t"],
    )
    pol.train()
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=lr)
    loss, metrics = sft_loss(pol, data, torch.arange(4), SFTConfig(augment_shift=0), torch.Generator())
    assert torch.isfinite(loss) and {"action_ce", "stop_ce", "latent_align"} <= set(metrics)
    opt.zero_grad()
    loss.backward()
    opt.step()
    pol.eval()


def _token_rows(pol: LastR1Policy) -> dict[str, torch.Tensor]:
    rows = pol.layout_tokens.rows.detach()
    return {"start": rows[0].clone(), "end": rows[1].clone(), "actions": rows[2:].clone()}


def test_saved_checkpoint_has_the_tokens_and_its_lm_head_gives_our_stop_and_action_logits(
    qwen_dir, tmp_path, capsys
) -> None:
    """After an SFT step the trained token rows are saved into backbone/'s embedding: transformers
    alone then reads the same <latent_start> embedding, stop logits (lm_head at <latent_end>) and
    action logits (lm_head at <action_i>); the policy reloads to the same decisions."""
    pol = _policy(qwen_dir, seed=4)
    before = _token_rows(pol)
    _sft_step(pol)
    after = _token_rows(pol)
    for name in before:  # every row the layout reads was trained
        assert not torch.equal(before[name], after[name]), name
    out_dir = pol.save_pretrained(tmp_path / "policy")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir / "backbone"), local_files_only=True)
    names = layout_token_names(256)
    assert [tokenizer.convert_tokens_to_ids(n) for n in names] == _ids(pol, names)
    hf = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        str(out_dir / "backbone"), local_files_only=True, dtype=torch.float32
    )
    start, end = _ids(pol, ["<latent_start>", "<latent_end>"])
    actions = _ids(pol, [f"<action_{i}>" for i in range(256)])
    torch.testing.assert_close(hf.get_input_embeddings().weight[start], after["start"], atol=0, rtol=0)
    torch.testing.assert_close(hf.get_input_embeddings().weight[end], after["end"], atol=0, rtol=0)
    out = pol.act(_obs(), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        chain, act_hidden = pol._teacher_forced(out.inputs, out.latents, out.latent_len, out.action_tokens)
        stop = hf.lm_head(chain[:, pol.layout.stop_rows()])[..., end]
        logits = hf.lm_head(act_hidden)[..., actions]
    torch.testing.assert_close(stop, out.stop_logits, atol=1e-5, rtol=1e-5)
    logp = torch.log_softmax(logits / out.action_temperature[:, None, None], -1)
    torch.testing.assert_close(
        logp.gather(-1, out.action_tokens[..., None]).squeeze(-1), out.logp_tokens, atol=2e-5, rtol=1e-5
    )
    capsys.readouterr()
    loaded = LastR1Policy.from_pretrained(out_dir).eval()
    assert "special tokens" not in capsys.readouterr().out  # nothing to add: backbone/ has them
    assert loaded.config == dataclasses.replace(pol.config, pretrained=str(out_dir / "backbone"))
    b = loaded.act(_obs(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(out.action_tokens, b.action_tokens) and torch.equal(out.stop_index, b.stop_index)
    torch.testing.assert_close(out.latents, b.latents, atol=0, rtol=0)
    torch.testing.assert_close(out.value, b.value, atol=0, rtol=0)


def test_a_saved_policy_whose_backbone_lacks_the_tokens_is_refused(qwen_dir, tmp_path) -> None:
    out_dir = _policy(qwen_dir, k_max=2, chunk=1).save_pretrained(tmp_path / "policy")
    backbone = out_dir / "backbone"
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the base model's tokenizer: no tokens
        (backbone / name).write_bytes((qwen_dir / name).read_bytes())
    with pytest.raises(
        ValueError, match=r"tokenizer without <latent_start>, <latent_end>, <latent_pad> and 256 more"
    ) as err:
        LastR1Policy.from_pretrained(out_dir)
    assert "\n" not in str(err.value) and "save_pretrained" in str(err.value)
    assert "policy.pretrained=DIR" in str(err.value)
    out_dir = _policy(qwen_dir, k_max=2, chunk=1).save_pretrained(tmp_path / "policy2")
    config = json.loads((out_dir / "backbone" / "config.json").read_text())
    config["text_config"]["vocab_size"] = 151669  # rows for Qwen3's own tokens only
    (out_dir / "backbone" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"an embedding of 151669 rows for token ids up to 151927") as err:
        LastR1Policy.from_pretrained(out_dir)
    assert "\n" not in str(err.value)


def test_bad_layout_settings_are_one_line_errors(qwen_dir) -> None:
    with pytest.raises(ValueError, match=r"qwen3_vl_prompt_len=7 leaves no room.*at least 8") as err:
        _policy(qwen_dir, qwen3_vl_prompt_len=7, k_max=2, chunk=1)  # 6 image tokens, 1 proprio
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="qwen3_vl_layout=reference decodes the action tokens in parallel"):
        _config(qwen_dir, decoding="autoregressive")
    with pytest.raises(ValueError, match="qwen3_vl_layout='mine' must be reference|ours"):
        _config(qwen_dir, qwen3_vl_layout="mine")


def test_a_checkpoint_saved_before_the_switch_loads_as_ours(qwen_dir, tmp_path) -> None:
    """Milestone-2 checkpoints have no qwen3_vl_layout in config.json: they ran (and load as) ours."""
    pol = _policy(qwen_dir, qwen3_vl_layout="ours", k_max=2, chunk=1)
    out_dir = pol.save_pretrained(tmp_path / "old")
    config = json.loads((out_dir / "config.json").read_text())
    del config["qwen3_vl_layout"], config["qwen3_vl_prompt_len"]
    (out_dir / "config.json").write_text(json.dumps(config))
    loaded = LastR1Policy.from_pretrained(out_dir).eval()
    assert loaded.config.qwen3_vl_layout == "ours" and loaded.layout_tokens is None
    a = pol.act(_obs(), mode="greedy")
    b = loaded.act(_obs(), mode="greedy")
    assert torch.equal(a.action_tokens, b.action_tokens)


# ----------------------------------------------------------------------------- what trains what


def _roles(pol: LastR1Policy) -> dict[str, list[torch.Tensor]]:
    """backbone (Qwen3-VL's own weights), tokens (our <latent_start>/<latent_end>/<action_i> rows),
    value (the critic), ours (everything else: the proprio projection)."""
    out: dict[str, list[torch.Tensor]] = {"backbone": [], "tokens": [], "value": [], "ours": []}
    for name, p in pol.named_parameters():
        role = (
            "backbone"
            if name.startswith("backbone.")
            else "tokens"
            if name.startswith("layout_tokens.")
            else "value"
            if name.startswith("value_head.")
            else "ours"
        )
        out[role].append(p)
    return out


def _moved(before: dict[str, list[torch.Tensor]], pol: LastR1Policy) -> set[str]:
    after = _roles(pol)
    return {r for r in before if any(not torch.equal(a, b) for a, b in zip(before[r], after[r], strict=True))}


def test_parameter_groups_have_no_stop_head_in_this_layout(qwen_dir) -> None:
    pol = _policy(qwen_dir, k_max=2, chunk=1)
    groups = pol.parameter_groups()
    roles = _roles(pol)
    assert groups["stop"] == []  # the stop reads the <latent_end> row, which is also an input: policy
    assert {id(p) for p in groups["value"]} == {id(p) for p in roles["value"]}
    assert {id(p) for p in groups["policy"]} == {
        id(p) for r in ("backbone", "tokens", "ours") for p in roles[r]
    }
    ctx = _policy(qwen_dir, k_max=2, chunk=1, stop_context=True)
    assert [id(p) for p in ctx.parameter_groups()["stop"]] == [id(ctx.stop_context_head.weight)]
    out = ctx.act(_obs(), mode="greedy")
    assert torch.equal(out.stop_logits, pol.act(_obs(), mode="greedy").stop_logits)  # zero readout


def test_one_sft_step_trains_backbone_and_token_rows_but_not_the_value_head(qwen_dir) -> None:
    pol = _policy(qwen_dir, k_max=4)
    before = {k: [p.detach().clone() for p in v] for k, v in _roles(pol).items()}
    _sft_step(pol, lr=1e-3)
    assert _moved(before, pol) == {"backbone", "tokens", "ours"}  # SFT has no value loss


@pytest.mark.parametrize(
    "algo,moves",
    [
        ("lapo", {"backbone", "tokens", "ours", "value"}),
        ("grpo_action", {"backbone", "tokens", "ours"}),  # no critic
    ],
)
def test_one_rl_update_moves_the_parameters_its_algorithm_trains(qwen_dir, algo, moves) -> None:
    import lastr1.train.rl as rl
    from lastr1.algos import AlgoConfig, OldTerms
    from lastr1.envs import EnvConfig

    pol = _policy(qwen_dir, k_max=4)
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
    out = pol.act(_obs(4), generator=torch.Generator().manual_seed(2))
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = (reward - reward.mean()) / reward.std()
    old = OldTerms(adv, reward, out.value, out.logp_tokens, out.logp_stop, out.latents, out.latent_mask)
    before = {k: [p.detach().clone() for p in v] for k, v in _roles(pol).items()}
    stop_before = out.stop_logits
    metrics = rl.update_policy(pol, opt, cfg, old, out, 1)
    assert math.isfinite(metrics["loss"]), metrics
    assert _moved(before, pol) == moves
    after = pol.act(out.inputs, mode="greedy").stop_logits
    assert not torch.allclose(after, stop_before)  # the <latent_end> readout moved with the backbone


@needs_peft
def test_lora_trains_adapters_and_token_rows_and_saves_the_rows_into_the_backbone(qwen_dir, tmp_path) -> None:
    pol = _policy(qwen_dir, k_max=2, chunk=1, lora_rank=2, lora_targets=("q_proj", "v_proj"))
    model = pol.backbone.model
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    assert pol.layout_tokens.rows.requires_grad and pol.layout_tokens.rows.dtype == torch.float32
    embedding = model.get_input_embeddings().weight.detach().clone()
    before = _token_rows(pol)
    _sft_step(pol)
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # the frozen matrix
    after = _token_rows(pol)
    assert not torch.equal(before["actions"], after["actions"])
    out_dir = pol.save_pretrained(tmp_path / "policy")
    hf = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        str(out_dir / "backbone"), local_files_only=True, dtype=torch.float32
    )
    actions = _ids(pol, [f"<action_{i}>" for i in range(256)])
    torch.testing.assert_close(hf.lm_head.weight[actions], after["actions"], atol=0, rtol=0)
    loaded = LastR1Policy.from_pretrained(out_dir).eval()
    a = pol.act(_obs(), generator=torch.Generator().manual_seed(5))
    b = loaded.act(_obs(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.action_tokens, b.action_tokens)
    torch.testing.assert_close(a.latents, b.latents, atol=0, rtol=0)


def test_bf16_true_keeps_the_token_rows_float32_and_saves_them_in_bf16(qwen_dir, tmp_path) -> None:
    from lastr1.models.backbones.run_settings import BackboneRunConfig

    torch.manual_seed(0)
    run = BackboneRunConfig(precision="bf16-true")
    pol = LastR1Policy(_config(qwen_dir, k_max=4), backbone_run=run).eval()
    assert pol.backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert pol.layout_tokens.rows.dtype == torch.float32
    out = pol.act(_obs(), generator=torch.Generator().manual_seed(0))
    lp = pol.log_probs(PolicyBatch.from_act(out))  # one full forward vs cached steps: bf16 rounding only
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=0.1, rtol=0.05)
    torch.testing.assert_close(lp.stop_logits, out.stop_logits, atol=0.1, rtol=0.05)
    out_dir = pol.save_pretrained(tmp_path / "policy")
    loaded = LastR1Policy.from_pretrained(out_dir)
    assert loaded.backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16
    torch.testing.assert_close(loaded.layout_tokens.rows, pol.layout_tokens.rows, atol=0, rtol=0)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters
