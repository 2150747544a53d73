"""One-shot SFT on toy demos: learns, is deterministic under a seed, resumes after a kill."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_POLICY, tiny_sft_config
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.train.metrics import read_metrics
from lastr1.train.sft import action_chunks, train_sft

_cfg = tiny_sft_config


def test_action_chunks_pad_with_last_action():
    import numpy as np

    a = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    c = action_chunks(a, 4)
    assert c.shape == (3, 4, 7)
    np.testing.assert_array_equal(c[1, :2], a[1:3])
    np.testing.assert_array_equal(c[2, 3], a[2])


def test_sft_learns_and_saves(toy_demos, tmp_path):
    final = train_sft(_cfg(toy_demos, tmp_path / "run", steps=60))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first, last = rows[0], rows[-1]
    assert last["action_ce"] < first["action_ce"] * 0.7, (first, last)
    assert "latent_align" in last and "stop_ce" in last
    policy = LastR1Policy.from_pretrained(final)
    assert policy.config.image_size == 32 and policy.config.proprio_dim == 2
    assert policy.config.target_dim > 0  # latent targets were wired in


def test_sft_deterministic_under_seed(toy_demos, tmp_path):
    train_sft(_cfg(toy_demos, tmp_path / "a", steps=10))
    train_sft(_cfg(toy_demos, tmp_path / "b", steps=10))
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


class _Killed(Exception):
    pass


def test_sft_resume_after_kill_matches_uninterrupted(toy_demos, tmp_path, monkeypatch):
    import lastr1.train.sft as sft

    train_sft(_cfg(toy_demos, tmp_path / "full", steps=20))
    real_save = sft.save_state

    def save_then_die(mgr, policy, opt, gen, step):
        real_save(mgr, policy, opt, gen, step)
        (mgr.root / "step-00000020.tmp").mkdir()  # a torn write of the next checkpoint
        raise _Killed

    monkeypatch.setattr(sft, "save_state", save_then_die)
    with pytest.raises(_Killed):
        train_sft(_cfg(toy_demos, tmp_path / "killed", steps=20))
    monkeypatch.setattr(sft, "save_state", real_save)
    train_sft(_cfg(toy_demos, tmp_path / "killed", steps=20))
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert resumed[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-5)
    state = json.loads(
        (tmp_path / "killed" / "checkpoints" / "step-00000020" / "trainer_state.json").read_text()
    )
    assert state["step"] == 20
    assert not (tmp_path / "killed" / "checkpoints" / "step-00000020.tmp").exists()


def test_sft_without_latents_and_without_alignment(toy_demos, tmp_path):
    no_latents = _cfg(toy_demos, tmp_path / "k0", steps=5, policy=PolicyConfig(**{**TINY_POLICY, "k_max": 0}))
    LastR1Policy.from_pretrained(train_sft(no_latents))
    rows = read_metrics(tmp_path / "k0" / "metrics.jsonl")
    assert "stop_ce" not in rows[-1] and "latent_align" not in rows[-1]
    train_sft(_cfg(toy_demos, tmp_path / "l0", steps=5, latent_weight=0.0))
    assert "latent_align" not in read_metrics(tmp_path / "l0" / "metrics.jsonl")[-1]


def test_sft_bad_inputs(toy_demos, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset directory not found"):
        train_sft(_cfg(tmp_path / "nowhere", tmp_path / "x"))
    with pytest.raises(ValueError, match="task 'reach-green' is not in the dataset"):
        train_sft(_cfg(toy_demos, tmp_path / "y", stop_target="per_task", target_lengths=["reach-green=2"]))
    with pytest.raises(ValueError, match="must be one of"):
        train_sft(_cfg(toy_demos, tmp_path / "z", stop_target="per_task", target_lengths=["reach-red=3"]))
    assert torch.get_num_threads() >= 1
