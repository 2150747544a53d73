"""The learner on torch.distributed (gloo on 127.0.0.1, 2 CPU processes): the distributed update is the
one-process update on the union batch, advantage whitening is global, and a torchrun RL run killed
after a checkpoint resumes and ends where an uninterrupted one does (docs/scaling.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import lastr1.train.rl as rl
from conftest import TINY_POLICY
from lastr1.algos import AlgoConfig
from lastr1.algos.advantages import whitening
from lastr1.envs import EnvConfig, make_env
from lastr1.rollout.collector import collect, merge_rollouts
from lastr1.train.checkpoint import CheckpointManager
from lastr1.train.distributed import SINGLE, DistContext, rank_seed, resolve_mode
from lastr1.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# 2% of one optimizer step: a step of lr 1e-3 moves a weight by up to ~1e-3 (AdamW's first steps are
# ~lr·sign(g)); the distributed sums differ from one process's by float32 rounding only, which AdamW's
# normalisation magnifies for gradient entries near zero (measured: up to 6e-6 after two steps)
PARAM_TOL = 2e-5
WHITEN_TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    # faulthandler: a worker that dies in C++ still shows where
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "PYTHONFAULTHANDLER": "1",
        **extra,
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


def _rl_cfg(ckpt, out, **kw) -> rl.RLConfig:
    base = dict(
        env=EnvConfig(backend="toy", image_size=32, num_envs=2),
        checkpoint=str(ckpt),
        out=str(out),
        iterations=1,
        rollouts_per_iter=4,
        group_size=1,
        minibatches=1,  # one global minibatch: the union of the ranks' pieces
        epochs=2,  # two optimizer steps
        lr=1e-3,
        value_lr=1e-3,
        progress=False,
    )
    base.update(kw)
    return rl.RLConfig(**base)


# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("requested", "env", "expected"),
    [
        ("auto", {}, "none"),
        ("auto", {"RANK": "0", "WORLD_SIZE": "1"}, "none"),
        ("auto", {"RANK": "1", "WORLD_SIZE": "2"}, "ddp"),
        ("ddp", {"RANK": "0", "WORLD_SIZE": "1"}, "ddp"),
        ("none", {}, "none"),
    ],
)
def test_mode_follows_the_launcher(requested, env, expected):
    assert resolve_mode(requested, env) == expected


@pytest.mark.parametrize(
    ("requested", "env", "needles"),
    [
        ("none", {"RANK": "0", "WORLD_SIZE": "2"}, ["distributed=none", "WORLD_SIZE=2", "distributed=auto"]),
        ("ddp", {}, ["distributed=ddp", "torchrun --nproc-per-node N -m lastr1"]),
        ("fsdp3", {}, ["distributed='fsdp3'", "'fsdp2'"]),
    ],
)
def test_a_mode_that_cannot_work_is_refused_naming_the_fix(requested, env, needles):
    with pytest.raises(ValueError) as err:
        resolve_mode(requested, env)
    for needle in needles:
        assert needle in str(err.value)


def test_a_global_count_that_does_not_split_is_refused_naming_field_and_fix():
    ctx = DistContext("ddp", rank=0, world_size=4)
    ctx.check_share("rollouts_per_iter", 16, 2, "env.num_envs")  # 4 ranks x 2 slots x 2 rounds: fine
    with pytest.raises(ValueError) as err:
        ctx.check_share("rollouts_per_iter", 12, 2, "env.num_envs")
    msg = str(err.value)
    assert "rollouts_per_iter=12" in msg and "WORLD_SIZE=4" in msg and "multiple of 8" in msg
    assert "[1, 2, 3, 6]" in msg  # the process counts that would work


def test_rank_seeds_keep_rank_0_and_differ_elsewhere():
    assert rank_seed(123, 0) == 123  # one process draws what it always drew
    seeds = {rank_seed(123, r) for r in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def test_shares_of_a_global_list_are_disjoint_and_cover_it():
    items = list(range(12))
    shares = [DistContext("ddp", rank=r, world_size=3).shard(items) for r in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert SINGLE.shard(items) == items


def test_python_m_lastr1_is_the_cli():
    res = subprocess.run(
        [sys.executable, "-m", "lastr1", "rl", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "distributed" in res.stdout and "rollouts_per_iter" in res.stdout


# ----------------------------------------------------------------------------- two spawned ranks


def _whitening_inputs(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two ranks' (x, mask, task) with different episode counts and lengths, and a task only one has."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for n, t, tasks in ((3, 5, (0, 1, 1)), (4, 7, (2, 0, 1, 2))):
        x = torch.randn(n, t, generator=g) * 3 + 1
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        mask = torch.arange(t)[None] < lengths[:, None]
        parts.append((x * mask, mask, torch.tensor(tasks)))
    return parts


def _union(parts):
    t = max(x.shape[1] for x, _, _ in parts)
    pad = torch.nn.functional.pad
    return (
        torch.cat([pad(x, (0, t - x.shape[1])) for x, _, _ in parts]),
        torch.cat([pad(m, (0, t - m.shape[1])) for _, m, _ in parts]),
        torch.cat([g for _, _, g in parts]),
    )


def _rank_main(rank: int, port: int, work: str) -> None:
    """One rank: global whitening of its share, then one distributed RL update of its rollouts."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_PORT=str(port))
    os.environ.update(MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    from lastr1.train.distributed import session

    work_dir = Path(work)
    setup = torch.load(work_dir / "setup.pt", weights_only=False)
    with session("ddp") as ctx:
        assert ctx.world_size == 2 and ctx.rank == rank and ctx.backend == "gloo"
        out: dict[str, object] = {}
        x, mask, task = _whitening_inputs(0)[rank]
        out["batch"] = ctx.whitening(x, mask)
        out["per_task"] = ctx.whitening(x, mask, task)
        cfg, roll = setup["cfg"], setup["rolls"][rank]
        policy = ctx.prepare(rl.load_policy(setup["ckpt"], cfg))
        opt = rl.make_optimizer(policy, cfg)
        adv, ret, stop_adv = rl._advantages(cfg, "gae", roll, ctx)
        old = rl.old_terms(roll, adv, ret, stop_adv)
        out["metrics"] = ctx.mean_metrics(rl.update_policy(policy, opt, cfg, old, roll.out, 1, None, ctx))
        out["params"] = {k: v.detach().clone() for k, v in policy.named_parameters()}
    torch.save(out, work_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(toy_sft_checkpoint, tmp_path_factory):
    """Rollouts of 4 toy episodes split 2 + 2 over two ranks, the one-process update on their union,
    and what each of two spawned gloo ranks computed from its share."""
    work = tmp_path_factory.mktemp("two_ranks")
    cfg = _rl_cfg(toy_sft_checkpoint, work / "unused")
    policy = rl.load_policy(toy_sft_checkpoint, cfg)
    env = make_env(cfg.env)
    try:
        specs, groups = rl._train_episodes(cfg, env, 1)
        # rank 1's episodes get a shorter budget: the ranks then hold different numbers of decisions
        specs = [dataclasses.replace(s, max_steps=10) if i >= 2 else s for i, s in enumerate(specs)]
        rolls = [
            collect(
                env,
                policy,
                specs[2 * r : 2 * r + 2],
                generator=torch.Generator().manual_seed(r),
                group=groups[2 * r : 2 * r + 2],
            )
            for r in range(2)
        ]
    finally:
        env.close()
    torch.save({"cfg": cfg, "ckpt": str(toy_sft_checkpoint), "rolls": rolls}, work / "setup.pt")

    union = merge_rollouts(rolls)
    single = rl.load_policy(toy_sft_checkpoint, cfg)
    adv, ret, stop_adv = rl._advantages(cfg, "gae", union)
    old = rl.old_terms(union, adv, ret, stop_adv)
    metrics = rl.update_policy(single, rl.make_optimizer(single, cfg), cfg, old, union.out, 1)
    # one rank alone (what a run without the gradient all-reduce would do): must differ
    alone = rl.load_policy(toy_sft_checkpoint, cfg)
    a_adv, a_ret, _ = rl._advantages(cfg, "gae", rolls[0])
    a_old = rl.old_terms(rolls[0], a_adv, a_ret)
    rl.update_policy(alone, rl.make_optimizer(alone, cfg), cfg, a_old, rolls[0].out, 1)

    mp.start_processes(_rank_main, args=(_free_port(), str(work)), nprocs=2, start_method="spawn", join=True)
    return {
        "rolls": rolls,
        "start": dict(rl.load_policy(toy_sft_checkpoint, cfg).named_parameters()),
        "single": dict(single.named_parameters()),
        "single_metrics": metrics,
        "alone": dict(alone.named_parameters()),
        "ranks": [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(2)],
    }


def test_two_rank_update_equals_one_process_on_the_union_batch(two_ranks):
    rolls, ranks = two_ranks["rolls"], two_ranks["ranks"]
    # the ranks hold different numbers of decisions: an unweighted gradient average would be wrong
    assert rolls[0].num_decisions != rolls[1].num_decisions
    start, single, alone = two_ranks["start"], two_ranks["single"], two_ranks["alone"]
    for name, p in single.items():
        for r in range(2):
            assert torch.equal(ranks[r]["params"][name], ranks[0]["params"][name]), (name, r)  # in sync
        diff = (ranks[0]["params"][name] - p).abs().max().item()
        assert diff <= PARAM_TOL, (name, diff)
    # the tolerance can fail: the update moved the weights far more, and one rank alone lands elsewhere
    moved = max((single[k] - start[k]).abs().max().item() for k in single)
    off = max((alone[k] - single[k]).abs().max().item() for k in single)
    assert moved > 50 * PARAM_TOL and off > 50 * PARAM_TOL, (moved, off)
    # rank 0 logs the metrics averaged over the ranks, close to the one-process ones
    dist_m, one_m = ranks[0]["metrics"], two_ranks["single_metrics"]
    assert dist_m.keys() == one_m.keys()
    assert dist_m["grad_norm"] == pytest.approx(one_m["grad_norm"], rel=1e-4)  # the global gradient


def test_global_whitening_equals_one_process_whitening_on_the_union(two_ranks):
    parts = _whitening_inputs(0)
    x, mask, task = _union(parts)
    for key, groups in (("batch", None), ("per_task", task)):
        mean, scale = whitening(x, mask, groups)
        start = 0
        for r, (xr, mr, _) in enumerate(parts):
            d_mean, d_scale = two_ranks["ranks"][r][key]
            assert torch.allclose(d_scale, scale, rtol=WHITEN_TOL), key
            rows = slice(start, start + len(xr))
            want = ((x - mean) * scale * mask)[rows, : xr.shape[1]]
            got = (xr - d_mean) * d_scale * mr
            assert torch.allclose(got, want, atol=WHITEN_TOL), key
            start += len(xr)
    # per-task centring really differs from the batch mean here (the test tells them apart)
    batch = two_ranks["ranks"][1]["batch"][0]
    assert (two_ranks["ranks"][1]["per_task"][0] - batch).abs().max() > 0.1


# ----------------------------------------------------------------------------- torchrun, kill and resume


RL_ARGS = [
    "env.backend=toy",
    "env.image_size=32",
    "env.num_envs=2",
    "iterations=3",
    "rollouts_per_iter=4",
    "group_size=1",
    "minibatches=2",
    "lr=1e-3",
    "value_lr=1e-3",
    "eval_every=0",
    "eval_at_start=false",
    "eval_episodes_per_task=2",
    "progress=false",
]

# rank 0 dies like `kill -9` right after writing the checkpoint of iteration 1
_DIE_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
import lastr1.train.rl as rl
from lastr1.cli import main

real_save = rl._save

def save_then_die(mgr, policy, opt, state):
    path = real_save(mgr, policy, opt, state)
    if state["iteration"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

rl._save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(args: list[str], tmp_path: Path, script: str | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    if script is None:
        cmd = [*launcher, "-m", "lastr1", *args]
    else:
        path = tmp_path / "die_after_checkpoint.py"
        path.write_text(textwrap.dedent(script))
        cmd = [*launcher, str(path), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_torchrun_rl_killed_after_a_checkpoint_resumes_and_finishes(toy_sft_checkpoint, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ["rl", *RL_ARGS, f"checkpoint={toy_sft_checkpoint}"]
    res = _torchrun([*args, f"out={full}"], tmp_path)
    assert res.returncode == 0, res.stderr[:6000]

    res = _torchrun([*args, f"out={killed}"], tmp_path, script=_DIE_AFTER_FIRST_CHECKPOINT)
    assert res.returncode != 0
    assert CheckpointManager(killed / "checkpoints").latest().name == "step-00000001"
    assert not (killed / "final").exists()

    res = _torchrun([*args, f"out={killed}"], tmp_path)
    assert res.returncode == 0, res.stderr[:6000]
    assert res.stdout.count("resuming") == 1  # rank 0 says so; every rank loaded the checkpoint
    rows = [r for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one row per iteration: only rank 0 writes
    ref_rows = [r for r in read_metrics(full / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert [r["env_steps"] for r in rows] == [r["env_steps"] for r in ref_rows]
    assert rows[0]["decisions"] >= 4  # both ranks' episodes are counted
    a, b = (
        load_file(str(full / "final" / "model.safetensors")),
        load_file(str(killed / "final" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    state = json.loads((killed / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["iteration"] == 3


def test_rl_refuses_rollouts_that_do_not_split_before_any_work(toy_sft_checkpoint, tmp_path, monkeypatch):
    """Rank 0 of 2 (no process group needed: the check comes before any collective or file)."""
    monkeypatch.setattr(rl, "load_policy", lambda *a, **k: pytest.fail("the policy was loaded"))
    cfg = _rl_cfg(toy_sft_checkpoint, tmp_path / "r", rollouts_per_iter=6)
    with pytest.raises(ValueError) as err:
        rl._train_rl(cfg, DistContext("ddp", rank=0, world_size=2))
    msg = str(err.value)
    assert (
        "rollouts_per_iter=6 is the global count" in msg and "WORLD_SIZE=2" in msg and "multiple of 4" in msg
    )
    assert not (tmp_path / "r").exists()
    grpo = _rl_cfg(toy_sft_checkpoint, tmp_path / "g", algo=AlgoConfig(name="grpo_action"), group_size=4)
    grpo = dataclasses.replace(grpo, rollouts_per_iter=12)  # 3 groups of 4: one would span both ranks
    with pytest.raises(ValueError, match="multiple of 8"):
        rl._train_rl(grpo, DistContext("ddp", rank=0, world_size=2))


def test_torchrun_sft_trains_and_only_rank_0_writes(toy_demos, tmp_path):
    """Two ranks, each on half of every batch of 8: the run finishes, its checkpoint resumes in one
    process (the layout is the one-process one), and the metrics have one row per logged step."""
    policy = [
        f"policy.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY_POLICY.items()
    ]
    out = tmp_path / "sft"
    args = ["sft", f"data={toy_demos}", f"out={out}", *policy, "teacher.k_max=4", "steps=10", "batch_size=8"]
    args += ["warmup_steps=2", "checkpoint_every=5", "progress=false"]
    res = _torchrun(args, tmp_path)
    assert res.returncode == 0, res.stderr[:6000]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [10]
    from lastr1.cli import main

    assert main([*args, "steps=12"]) == 0  # one process resumes the two-rank run
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [10, 12]


# ----------------------------------------------------------------------------- FSDP2 on a tiny Qwen3-VL


def _qwen_sft_setup(run=None):
    from lastr1.models import LastR1Policy, PolicyConfig
    from lastr1.train.sft import SFTData

    cfg = PolicyConfig(
        backbone="qwen3_vl",
        qwen3_vl_size="tiny",  # random weights of the bundled tiny config, offline
        image_size=64,
        use_proprio=False,
        instruction_max_len=6,
        k_max=4,
        latent_group=2,
        chunk=2,
        value_hidden=(16,),
    )
    torch.manual_seed(0)
    policy = LastR1Policy(cfg, backbone_run=run)
    n, g = 4, torch.Generator().manual_seed(1)
    data = SFTData(
        images=torch.randint(0, 256, (n, 1, 64, 64, 3), generator=g, dtype=torch.uint8),
        proprio=torch.zeros(n, 0),
        instructions=["pick up the red block", "open the drawer"] * 2,
        tokens=policy.tokenizer.encode(torch.rand(n, 2, 7, generator=g) * 2 - 1).long(),
        targets=torch.randn(n, 4, policy.config.d_model, generator=g),
        task=torch.zeros(n, dtype=torch.long),
        task_names=["t"],
    )
    return policy, data


def _sft_steps(ctx, policy, data, steps: int) -> tuple[torch.optim.Optimizer, list[float]]:
    """``steps`` SFT steps as lastr1 sft takes them, each rank on its half of a batch of 4."""
    from lastr1.train.sft import SFTConfig, sft_loss

    policy = ctx.prepare(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(steps):
        idx, gen = ctx.shard_batch(torch.arange(4), torch.Generator().manual_seed(0))
        loss, _ = sft_loss(policy, data, idx, SFTConfig(augment_shift=0), gen)
        weight, finite = ctx.batch_weight(len(idx), bool(torch.isfinite(loss)))
        opt.zero_grad(set_to_none=True)
        (loss * weight).backward()
        ctx.average_grads(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(float(loss.detach()) if finite else float("nan"))
    return opt, losses


def _fsdp2_rank_main(rank: int, port: int, work: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_PORT=str(port))
    os.environ.update(MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    import numpy as np

    from lastr1.envs.base import Observation
    from lastr1.models.backbones.run_settings import BackboneRunConfig
    from lastr1.train.distributed import session

    out: dict[str, object] = {}
    with session("fsdp2") as ctx:
        ddp = dataclasses.replace(ctx, mode="ddp")
        policy, data = _qwen_sft_setup()
        out["start"] = {k: v.clone() for k, v in policy.state_dict().items()}
        opt, _ = _sft_steps(ddp, policy, data, 2)
        with ddp.for_saving(policy, opt) as (full, full_opt):
            out["ddp"] = ({k: v.clone() for k, v in full.state_dict().items()}, full_opt.state_dict())

        policy, data = _qwen_sft_setup()
        opt, _ = _sft_steps(ctx, policy, data, 2)
        out["sharded"] = type(
            policy.backbone.model.model.language_model.layers[0].mlp.up_proj.weight
        ).__name__
        with ctx.for_saving(policy, opt) as (full, full_opt):
            out["fsdp2"] = ({k: v.clone() for k, v in full.state_dict().items()}, full_opt.state_dict())
        # gathered weights: the ranks may act a different number of times (rollouts of unequal length)
        obs = Observation(
            images=data.images[:2].numpy(),
            proprio=np.zeros((2, 0), np.float32),
            instruction=data.instructions[:2],
            privileged=np.zeros((2, 0), np.float32),
            task=np.zeros(2, np.int64),
        )
        with ctx.gathered(policy), torch.no_grad():
            acts = [policy.act(obs, generator=torch.Generator().manual_seed(i)) for i in range(rank + 1)]
        out["acted"] = len(acts)
        # resume: a new optimizer of the sharded policy loads the saved (one-process layout) state
        saved = ctx.broadcast_object(out["fsdp2"][1])
        resumed = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
        ctx.load_optimizer(policy, resumed, saved)
        with ctx.for_saving(policy, resumed) as (_, again):
            out["reloaded"] = again.state_dict()

        run = BackboneRunConfig(precision="bf16-mixed", gradient_checkpointing=True)
        policy, data = _qwen_sft_setup(run)
        _, out["bf16_losses"] = _sft_steps(ctx, policy, data, 1)
        with ctx.for_saving(policy) as (full, _):
            out["bf16_dtype"] = str(
                full.backbone.model.model.language_model.layers[0].mlp.up_proj.weight.dtype
            )
    if rank == 0:
        torch.save(out, Path(work) / "fsdp2.pt")


def test_fsdp2_sft_step_on_two_gloo_ranks_equals_ddp_and_checkpoints_resume(tmp_path):
    """FSDP2 on CPU/gloo (torch 2.13): two SFT steps of a tiny random Qwen3-VL, sharded per decoder
    layer and vision block, give DDP's weights; the checkpoint holds the full weights and the optimizer
    state in the one-process layout, which a sharded run loads back; bf16 mixed precision with
    activation checkpointing trains float32 master weights."""
    from conftest import require_qwen3_vl

    require_qwen3_vl()
    mp.start_processes(_fsdp2_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    out = torch.load(tmp_path / "fsdp2.pt", weights_only=False)
    assert out["sharded"] == "DTensor" and out["acted"] == 1  # rank 1 acted twice meanwhile
    (w_ddp, o_ddp), (w_fsdp, o_fsdp) = out["ddp"], out["fsdp2"]
    start = out["start"]
    assert w_ddp.keys() == w_fsdp.keys() == start.keys()
    moved = max((w_ddp[k].float() - v.float()).abs().max().item() for k, v in start.items() if v.numel())
    diff = max((w_ddp[k].float() - w_fsdp[k].float()).abs().max().item() for k in w_ddp if w_ddp[k].numel())
    assert moved > 1e-3 and diff < 1e-6, (moved, diff)
    # the optimizer state is keyed by position, as one process's: it loads into an unsharded optimizer
    assert sorted(o_fsdp["state"]) == sorted(o_ddp["state"]) and all(
        isinstance(k, int) for k in o_fsdp["state"]
    )
    for i, s in o_ddp["state"].items():
        assert torch.allclose(s["exp_avg"], o_fsdp["state"][i]["exp_avg"], atol=1e-7)
    reloaded = out["reloaded"]
    assert all(
        torch.equal(reloaded["state"][i]["exp_avg_sq"], s["exp_avg_sq"]) for i, s in o_fsdp["state"].items()
    )
    assert all(torch.isfinite(torch.tensor(v)) for v in out["bf16_losses"])
    assert out["bf16_dtype"] == "torch.float32"  # bf16 is gathered for compute; the masters stay float32


def test_fsdp2_refuses_what_it_cannot_shard():
    """Before anything is sharded: a tiny backbone, and bf16 backbone weights training beside our
    float32 heads (FSDP2 needs one dtype per unit); both errors name the fix."""
    from conftest import require_qwen3_vl
    from lastr1.models import LastR1Policy, PolicyConfig
    from lastr1.models.backbones.run_settings import BackboneRunConfig
    from lastr1.train import fsdp2
    from lastr1.train.sft import SFTConfig

    with pytest.raises(ValueError, match="policy.backbone=qwen3_vl.*use distributed=ddp"):
        SFTConfig(distributed="fsdp2")  # the tiny backbone
    require_qwen3_vl()
    ctx = DistContext("fsdp2")
    with pytest.raises(ValueError, match="use distributed=ddp"):
        fsdp2.shard_policy(ctx, LastR1Policy(PolicyConfig(**TINY_POLICY)))
    policy, _ = _qwen_sft_setup(BackboneRunConfig(precision="bf16-true"))
    with pytest.raises(ValueError) as err:
        fsdp2.shard_policy(ctx, policy)
    assert (
        "bfloat16" in str(err.value) and "lora_rank > 0" in str(err.value) and "bf16-mixed" in str(err.value)
    )
    assert ctx.saver is None  # refused before the copy or any sharding
