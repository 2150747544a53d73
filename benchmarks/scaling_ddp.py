"""The distributed learner's scaling: RL throughput with 1 and N torchrun processes at equal total batch.

Why: ``lastr1 rl`` under ``torchrun`` splits each iteration's rollouts over the ranks and averages
gradients (``lastr1.train.distributed``); this measures what that buys on this machine. Every
configuration runs the trainer's own pieces (``collect`` on the rank's share, globally whitened
advantages, ``update_policy`` with the gradient all-reduce) under ``torchrun``, one process per rank,
one torch thread each, and is reported as a ratio to the 1-process run measured in the same call:

* ``update decisions/s``: decisions of the global batch per second of ``update_policy`` (the learner);
* ``iterations/s``: whole iterations (collect + advantages + update) per second.

    PYTHONPATH=src python benchmarks/scaling_ddp.py                     # toy env, 1 vs 2 processes
    ... --procs 1,2 --rollouts 16 --iterations 4 --repeats 2
    ... --device cuda --procs 1,2,4,8                                    # GPUs: NCCL, update only

``measure_ddp_scaling(args)`` is the entry point for ``benchmarks/scaling.py --ddp``: ``args`` is any
object with this script's options as attributes, each also accepted as ``ddp_<name>`` (missing ones
take the defaults below). ``--device cuda`` times the update only (NCCL, one GPU per process, the
rollouts collected once on the CPU); it has not run on these CPU machines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS: dict[str, Any] = {
    "procs": "1,2",  # process counts to compare; the first is the baseline
    "device": "cpu",  # cpu (gloo) or cuda (NCCL, one GPU per process; the update only)
    "backend": "toy",  # simulator of the rollouts (toy: instant, so the learner dominates)
    "tasks": "",  # comma list (empty: the backend's default tasks)
    "rollouts": 16,  # global rollouts per iteration, split over the processes
    "num_envs": 2,  # env slots per process
    "image_size": 64,
    "max_steps": 0,  # rollout budget per episode (0: the task's)
    "minibatches": 4,  # the reference's
    "iterations": 3,  # timed iterations per run
    "warmup": 1,  # untimed iterations first
    "repeats": 1,  # runs per process count, interleaved (1, 2, 1, 2, ...); the median is reported
    "timeout": 1800,  # seconds per torchrun call
}


def _opt(args: Any, name: str) -> Any:
    """``args.ddp_<name>``, else ``args.<name>``, else the default (the prefix avoids clashes with the
    options of a caller such as ``benchmarks/scaling.py``)."""
    for attr in (f"ddp_{name}", name):
        value = getattr(args, attr, None)
        if value is not None:
            return value
    return DEFAULTS[name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "scaling_ddp: --device cuda needs CUDA GPUs, and torch sees none "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); run it on a GPU machine "
                "with a CUDA torch build, or use --device cpu"
            )


def _launch(procs: int, args: Any, out: Path) -> dict[str, Any]:
    """One torchrun call of ``procs`` processes running :func:`worker`; rank 0's timings."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    spec = {name: _opt(args, name) for name in DEFAULTS}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(procs),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(Path(__file__).resolve()),
        "--worker",
        json.dumps({**spec, "out": str(out)}),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=spec["timeout"])
    if res.returncode != 0:
        raise RuntimeError(f"torchrun with {procs} processes failed:\n{res.stderr[-4000:]}")
    return json.loads(out.read_text())


def measure_ddp_scaling(args: Any) -> list[dict[str, Any]]:
    """Rows ``{procs, decisions, sec_update, update_decisions_per_s, sec_iteration, iterations_per_s,
    update_ratio, iteration_ratio}``, the ratios against the first process count of ``args.procs``."""
    device = _opt(args, "device")
    _check_device(device)
    counts = [int(p) for p in str(_opt(args, "procs")).split(",")]
    for p in counts:
        if _opt(args, "rollouts") % (p * _opt(args, "num_envs")):
            raise SystemExit(
                f"scaling_ddp: --rollouts {_opt(args, 'rollouts')} must split over {p} processes of "
                f"--num-envs {_opt(args, 'num_envs')} slots: use a multiple of {p * _opt(args, 'num_envs')}"
            )
    runs: dict[int, list[dict[str, Any]]] = {p: [] for p in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(_opt(args, "repeats")):
            for p in counts:
                runs[p].append(_launch(p, args, Path(tmp) / f"p{p}_r{r}.json"))
    rows = []
    for p in counts:
        upd = statistics.median(m["sec_update"] for m in runs[p])
        it = statistics.median(m["sec_iteration"] for m in runs[p]) if device == "cpu" else float("nan")
        decisions = statistics.median(m["decisions"] for m in runs[p])
        rows.append(
            {
                "procs": p,
                "device": device,
                "decisions": decisions,
                "sec_update": upd,
                "update_decisions_per_s": decisions / upd,
                "sec_iteration": it,
                "iterations_per_s": 1.0 / it,
            }
        )
    base = rows[0]
    for row in rows:
        row["update_ratio"] = row["update_decisions_per_s"] / base["update_decisions_per_s"]
        row["iteration_ratio"] = row["iterations_per_s"] / base["iterations_per_s"]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| processes | decisions / iteration | update (s) | update decisions/s | vs 1st | iteration (s) "
        "| iterations/s | vs 1st |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['procs']} | {r['decisions']:.0f} | {r['sec_update']:.3f} | {r['update_decisions_per_s']:.1f} "
            f"| {r['update_ratio']:.2f}x | {r['sec_iteration']:.3f} | {r['iterations_per_s']:.3f} "
            f"| {r['iteration_ratio']:.2f}x |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one torchrun rank


def worker(spec: dict[str, Any]) -> None:
    """One rank: the trainer's iteration on this rank's share, timed; rank 0 writes the medians."""
    import dataclasses

    import torch

    from lastr1.envs import EnvConfig, EpisodeSpec, make_env
    from lastr1.models.policy import LastR1Policy, PolicyConfig
    from lastr1.rollout.collector import collect, merge_rollouts
    from lastr1.train import rl
    from lastr1.train.distributed import session

    torch.set_num_threads(1)
    tasks = [t for t in spec["tasks"].split(",") if t]
    env_cfg = EnvConfig(
        backend=spec["backend"],
        image_size=spec["image_size"],
        num_envs=spec["num_envs"],
        **({"tasks": tasks} if tasks else {}),
    )
    cfg = rl.RLConfig(
        env=env_cfg,
        rollouts_per_iter=spec["rollouts"],
        group_size=1,
        minibatches=spec["minibatches"],
        rollout_max_steps=spec["max_steps"],
        progress=False,
    )
    cuda = spec["device"] == "cuda"
    with session("ddp", device=spec["device"]) as ctx:
        env = make_env(cfg.env)
        n = env.num_envs
        proprio = env.reset([EpisodeSpec(0)] * n).proprio.shape[1]
        torch.manual_seed(0)  # the default-size policy (the demo's), untrained: cost, not success
        policy = LastR1Policy(PolicyConfig(image_size=spec["image_size"], proprio_dim=proprio))
        policy = ctx.prepare(policy.eval())
        ctx.check_share("rollouts", cfg.rollouts_per_iter, cfg.env.num_envs, "--num-envs")
        opt = rl.make_optimizer(policy, cfg)
        timings: list[dict[str, float]] = []
        try:
            batch = None
            for it in range(1, spec["warmup"] + spec["iterations"] + 1):
                ctx.barrier()
                t0 = time.perf_counter()
                if batch is None:
                    specs, groups = rl._train_episodes(cfg, env, it)
                    specs, groups = ctx.shard(specs), ctx.shard(groups)
                    gen = torch.Generator().manual_seed(ctx.rank_seed(it))
                    rounds = [
                        collect(env, policy, specs[s : s + n], generator=gen, group=groups[s : s + n])
                        for s in range(0, len(specs), n)
                    ]
                    roll = merge_rollouts(rounds)
                    adv, ret, stop_adv = rl._advantages(cfg, cfg.advantage_kind, roll, ctx)
                    old, out = rl.old_terms(roll, adv, ret, stop_adv), roll.out
                    decisions = ctx.sum_int(roll.num_decisions)
                    if cuda:  # the learner on the GPU, every timed update on this one batch
                        policy.to(ctx.device)
                        out = out.to(ctx.device)
                        moved = {
                            f.name: _to(getattr(old, f.name), ctx.device) for f in dataclasses.fields(old)
                        }
                        batch = (dataclasses.replace(old, **moved), out)
                else:
                    old, out = batch
                ctx.barrier()
                t1 = time.perf_counter()
                rl.update_policy(policy, opt, cfg, old, out, it, None, ctx)
                ctx.barrier()  # the slowest rank's update
                t2 = time.perf_counter()
                if it > spec["warmup"]:
                    sec_it = t2 - t0 if not cuda else float("nan")
                    timings.append({"sec_update": t2 - t1, "sec_iteration": sec_it, "decisions": decisions})
        finally:
            env.close()
        if ctx.is_main:
            summary = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
            Path(spec["out"]).write_text(json.dumps({**summary, "procs": ctx.world_size}))


def _to(value: Any, device: Any) -> Any:
    return value.to(device) if hasattr(value, "to") else value


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--procs", default=DEFAULTS["procs"], help="comma list of process counts; first = baseline"
    )
    p.add_argument("--device", default=DEFAULTS["device"], choices=["cpu", "cuda"])
    p.add_argument("--backend", default=DEFAULTS["backend"], help="env backend of the rollouts")
    p.add_argument("--tasks", default=DEFAULTS["tasks"], help="comma list of tasks (empty: the backend's)")
    p.add_argument("--rollouts", type=int, default=DEFAULTS["rollouts"], help="global rollouts per iteration")
    p.add_argument("--num-envs", type=int, default=DEFAULTS["num_envs"], help="env slots per process")
    p.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    p.add_argument(
        "--max-steps", type=int, default=DEFAULTS["max_steps"], help="rollout budget (0: the task's)"
    )
    p.add_argument("--minibatches", type=int, default=DEFAULTS["minibatches"])
    p.add_argument("--iterations", type=int, default=DEFAULTS["iterations"], help="timed iterations per run")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="untimed iterations first")
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="interleaved runs per count")
    p.add_argument("--timeout", type=int, default=DEFAULTS["timeout"], help="seconds per torchrun call")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    rows = measure_ddp_scaling(args)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
