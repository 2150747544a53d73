"""LAPO vs action-only baselines from the same SFT checkpoint and the same env-step budget.

Why: "LAPO beats action-only RL" is the paper's central claim; here it is a measured gap over
seeds, with the episodes counted, never one lucky run. Every algorithm starts from the same SFT
checkpoint, collects the same number of rollouts per iteration for the same number of iterations
(so the same env-step budget, give or take early successes), and is evaluated greedily on the same
``eval`` initial states. The "before" number is that checkpoint's evaluation: greedy once, sampled
once per seed with the run's sampling seed, so each Δ is a paired difference.

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/lapo_vs_baselines.py \\
        --checkpoint runs/demo-default/sft/final --tasks reach-v3,drawer-open-v3 --seeds 0,1,2

Prints a table (success before/after with a 95 % interval over seeds, latent length before/after,
env steps, wall time), each task's reasoning length in the training rollouts, and each task's stop
distribution on the first observations of its ``eval`` starts (expected sampled length before and
after, and how far it sits from the other tasks'). Every number goes to ``<out>/results.json``; the
runs themselves stay in ``<out>/<algo>/seed<k>`` (metrics.jsonl, evals, checkpoints) for the
learning-curve plot.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from tqdm import tqdm

from lastr1.algos import AlgoConfig
from lastr1.envs import EnvConfig, make_env
from lastr1.envs.base import Observation
from lastr1.eval.evaluate import eval_files, evaluate, save_eval
from lastr1.eval.length_bandit import first_observations, length_summary
from lastr1.eval.report import plot_learning_curve, plot_task_lengths, task_length_curves
from lastr1.eval.stats import t_interval
from lastr1.models.policy import LastR1Policy
from lastr1.train.metrics import read_metrics
from lastr1.train.rl import RLConfig, train_rl

ALGOS = ("lapo", "ppo_action", "grpo_action")
# greedy: the reference protocol; sample: the stochastic policy RL optimises, at the rollout temperatures
MODES = ("greedy", "sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="SFT checkpoint every algorithm starts from")
    p.add_argument("--tasks", default="reach-v3,button-press-topdown-v3,drawer-open-v3,drawer-close-v3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--rollouts-per-iter", type=int, default=64)
    p.add_argument(
        "--group-size", type=int, default=2, help="rollouts per initial state for group-relative advantages"
    )
    p.add_argument(
        "--lapo-advantage",
        default="gae",
        choices=["gae", "grpo"],
        help="LAPO's advantage estimator (gae: the reference; grpo: --group-size rollouts per start)",
    )
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--placement-scale", type=float, default=0.3, help="Meta-World placement ranges x this (demo: 0.3)"
    )
    p.add_argument("--vector", default="async", choices=["sync", "async"])
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="async simulator processes (env.workers; 0 = one per env slot)",
    )
    p.add_argument(
        "--pipeline",
        type=int,
        default=1,
        help="env groups stepping while the policy acts on another (RLConfig.pipeline; 1 = no overlap)",
    )
    p.add_argument("--eval-episodes", type=int, default=10, help="per task, on the eval initial states")
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="also evaluate every N iterations (learning curves); 0 = at the end",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=1, help="passes over each iteration's rollouts")
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--critic-warmup", type=int, default=0, help="iterations that train only the value head")
    p.add_argument(
        "--lr-warmup", type=int, default=0, help="optimizer updates over which the policy lr ramps up"
    )
    p.add_argument("--action-temperature", type=float, default=1.0)
    p.add_argument(
        "--attach-value",
        action="store_true",
        help="let the value loss train the shared backbone (the reference; RLConfig.value_trains_backbone)",
    )
    p.add_argument("--stop-lr", type=float, default=0.0, help="stop-head lr (RLConfig.stop_lr; 0 = --lr)")
    p.add_argument("--kl-coef", type=float, default=0.0, help="KL to the starting policy (algo.kl_coef)")
    p.add_argument(
        "--stop-kl-coef",
        type=float,
        default=0.0,
        help="LAPO only: KL of the stop to the starting policy's (algo.stop_kl_coef)",
    )
    p.add_argument(
        "--stop-advantage",
        default=AlgoConfig.stop_advantage,
        choices=["gae", "gae_expected", "return"],
        help="LAPO only: the stop's advantage (algo.stop_advantage; gae = the reference)",
    )
    p.add_argument(
        "--stop-probe",
        type=int,
        default=10,
        help="eval starts per task whose first observation measures the stop distribution (0 = skip)",
    )
    p.add_argument(
        "--w-latent",
        type=float,
        default=AlgoConfig.w_latent,
        help="LAPO latent weight (reference 0.1; 0 = ablation)",
    )
    p.add_argument(
        "--stop-scope",
        default="decision",
        choices=["decision", "episode"],
        help="stop chosen per action chunk (reference) or once per episode (PolicyConfig.stop_scope); "
        "applies to every algorithm and to the SFT 'before' evaluation",
    )
    p.add_argument(
        "--latent-sigma",
        type=float,
        default=AlgoConfig.latent_sigma,
        help="LAPO latent ratio's σ (reference 10)",
    )
    p.add_argument("--w-end", type=float, default=AlgoConfig.w_end, help="LAPO stop weight (reference 1)")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel worker processes (use --vector sync with > 1)"
    )
    p.add_argument(
        "--whiten-per-task",
        action="store_true",
        help="centre advantages per task (AlgoConfig.whiten_per_task)",
    )
    p.add_argument(
        "--stop-context",
        action="store_true",
        help="LAPO only: add the zero-initialised per-task context readout to the stop (RLConfig.stop_context)",
    )
    p.add_argument("--out", default="runs/lapo_vs_baselines")
    return p.parse_args(argv)


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "success": res["success_rate"],
        "latent_len": res["mean_latent_len"],
        "episodes": res["episodes"],
        "per_task": {k: v["success_rate"] for k, v in res["per_task"].items()},
        "latent_len_per_task": {k: v["mean_latent_len"] for k, v in res["per_task"].items()},
        # each episode weighs once (older eval files lack it)
        "episode_latent_len_per_task": {
            k: v.get("mean_episode_latent_len") for k, v in res["per_task"].items()
        },
    }


def _stop_lengths(policy_dir: Path | str, probe: Observation | None) -> dict[str, Any] | None:
    """Per task, the expected sampled reasoning length (at the rollout stop temperature) and the greedy
    rule's length on ``probe``'s first observations: the stop itself, without episode sampling noise."""
    if probe is None:
        return None
    policy = LastR1Policy.from_pretrained(policy_dir).eval()
    policy.config.stop_temperature = RLConfig.stop_temperature
    task = torch.from_numpy(probe.task)
    return length_summary(policy, policy.encode_obs(probe), task, int(task.max()) + 1)


def run_config(a: argparse.Namespace, env_cfg: EnvConfig, algo: str, seed: int, progress: bool) -> RLConfig:
    """The RL config of one (algorithm, seed) run: every algorithm gets the same budget and setting."""
    run = Path(a.out) / algo / f"seed{seed}"
    advantage = a.lapo_advantage if algo == "lapo" else ""  # "": the algorithm's default
    group_relative = algo == "grpo_action" or advantage == "grpo"
    return RLConfig(
        env=env_cfg,
        algo=AlgoConfig(
            name=algo,
            advantage=advantage,
            whiten_per_task=a.whiten_per_task,
            kl_coef=a.kl_coef,
            stop_kl_coef=a.stop_kl_coef if algo == "lapo" else 0.0,
            stop_advantage=a.stop_advantage if algo == "lapo" else "gae",
            w_latent=a.w_latent,
            w_end=a.w_end,
            latent_sigma=a.latent_sigma,
        ),
        checkpoint=a.checkpoint,
        out=str(run),
        iterations=a.iterations,
        rollouts_per_iter=a.rollouts_per_iter,
        group_size=a.group_size if group_relative else 1,
        lr=a.lr,
        stop_lr=a.stop_lr,
        epochs=a.epochs,
        minibatches=a.minibatches,
        critic_warmup=a.critic_warmup if algo != "grpo_action" else 0,
        action_temperature=a.action_temperature,
        lr_warmup_updates=a.lr_warmup,
        value_trains_backbone=a.attach_value,  # detached unless asked: the demo preset's setting
        eval_every=a.eval_every,
        eval_episodes_per_task=a.eval_episodes,
        eval_at_start=False,
        eval_sampled=True,
        stop_scope=a.stop_scope,
        stop_context=a.stop_context and algo == "lapo",
        pipeline=a.pipeline,
        seed=seed,
        progress=progress,  # a bar per run when runs are sequential: each takes minutes
    )


def _run(
    a: argparse.Namespace, env_cfg: EnvConfig, algo: str, seed: int, progress: bool, probe: Observation | None
) -> dict[str, Any]:
    """One (algorithm, seed) run from the shared checkpoint; its greedy and sampled results."""
    cfg = run_config(a, env_cfg, algo, seed, progress)
    run = Path(cfg.out)
    state = train_rl(cfg)  # a finished or killed run resumes instead of being redone
    logged = read_metrics(run / "metrics.jsonl")
    # the run's own logged seconds, not this call's: a resumed (finished) run returns at once
    wall = sum(r.get("sec_collect", 0.0) + r.get("sec_update", 0.0) + r.get("sec_eval", 0.0) for r in logged)
    rows = [r for r in logged if "train_success" in r]
    stop = _stop_lengths(run / "final", probe)
    records = {}
    for mode in MODES:
        after = json.loads(eval_files(run, mode)[-1].read_text())
        records[mode] = {
            "seed": seed,
            "env_steps": state["env_steps"],
            "wall_s": wall,
            "train_latent_len_first": rows[0].get("latent_len_mean") if rows else None,
            "train_latent_len_last": rows[-1].get("latent_len_mean") if rows else None,
            "stop": stop,
            **_summary(after),
        }
    return records


def main() -> None:
    a = parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env_cfg = EnvConfig(
        backend="metaworld",
        tasks=a.tasks.split(","),
        num_envs=a.num_envs,
        image_size=a.image_size,
        max_steps=a.max_steps,
        vector=a.vector,
        workers=a.workers,
        placement_scale=a.placement_scale,
    )
    seeds = [int(k) for k in a.seeds.split(",")]
    befores = _befores(a, env_cfg, out, seeds)
    probe = first_observations(env_cfg, "eval", a.stop_probe) if a.stop_probe > 0 else None
    stop_before = _stop_lengths(a.checkpoint, probe)
    for mode, per_seed in befores.items():
        rates = ", ".join(f"{per_seed[k]['success_rate']:.1%}" for k in seeds)
        print(
            f"SFT checkpoint, {mode}: {rates} (seeds {a.seeds}) over {per_seed[seeds[0]]['episodes']} eval episodes"
        )

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    jobs = [(algo, seed) for algo in a.algos.split(",") for seed in seeds]
    if a.jobs > 1:  # one run per worker process; each run is single-threaded (torch and its env)
        ctx = multiprocessing.get_context("spawn")  # rendering envs hang after fork (MACHINE_FACTS)
        with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run, a, env_cfg, algo, seed, False, probe) for algo, seed in jobs]
            done = [f.result() for f in tqdm(futures, desc="runs", unit="run")]
    else:
        done = [_run(a, env_cfg, algo, seed, True, probe) for algo, seed in jobs]
    for (algo, _), records in zip(jobs, done, strict=True):
        for mode, record in records.items():
            record["before"] = befores[mode][record["seed"]]["success_rate"]
            results.setdefault(mode, {}).setdefault(algo, []).append(record)
            print(
                f"{algo:12s} seed {record['seed']} {mode:6s}: {record['before']:.1%} -> "
                f"{record['success']:.1%} ({record['episodes']} episodes, {record['env_steps']} env "
                f"steps, {record['wall_s']:.0f} s)",
                flush=True,
            )

    summary = {
        "before": {m: {str(k): _summary(b) for k, b in per_seed.items()} for m, per_seed in befores.items()},
        "stop_before": stop_before,
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_learning_curve(
        {f"{algo}/seed{seeds[0]}": out / algo / f"seed{seeds[0]}" for algo in results["greedy"]},
        out / "learning_curve.png",
    )
    runs = {algo: [out / algo / f"seed{k}" for k in seeds] for algo in results["greedy"]}
    plot_task_lengths(runs, out / "latent_length_per_task.png")
    for mode in MODES:
        print(f"\n== {mode} evaluation ==")
        _print_table(list(befores[mode].values()), results[mode], mode)
    _print_lengths(runs)
    if stop_before is not None:
        _print_stop(stop_before, results["greedy"], env_cfg.tasks, a.stop_probe)


def _befores(
    a: argparse.Namespace, env_cfg: EnvConfig, out: Path, seeds: list[int]
) -> dict[str, dict[int, dict[str, Any]]]:
    """The SFT checkpoint's evaluations: greedy once (deterministic), sampled once per run seed.

    A run with seed k draws its sampled evaluation from a generator seeded k, so its "before" is the
    SFT policy sampled with the same seed: Δ is then a paired difference.
    """
    paths = {("greedy", k): out / "eval_before_greedy.json" for k in seeds}
    paths |= {("sample", k): out / f"eval_before_sample_seed{k}.json" for k in seeds}
    missing = {path: key for key, path in paths.items() if not path.is_file()}  # one entry per file
    if missing:
        policy = LastR1Policy.from_pretrained(a.checkpoint).eval()
        # the sampled policy at the rollout temperatures, exactly as RL's own sampled evaluations
        policy.config.action_temperature = a.action_temperature
        policy.config.stop_temperature = RLConfig.stop_temperature
        policy.config.stop_scope = a.stop_scope
        with make_env(env_cfg) as env:
            for path, (mode, k) in missing.items():
                save_eval(evaluate(policy, env, a.eval_episodes, mode=mode, seed=k), path)
    befores: dict[str, dict[int, dict[str, Any]]] = {}
    for (mode, k), path in paths.items():
        befores.setdefault(mode, {})[k] = json.loads(path.read_text())
    return befores


def _print_table(befores: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]], mode: str) -> None:
    n_eval = befores[0]["episodes"]
    before_rate = sum(b["success_rate"] for b in befores) / len(befores)
    before_len = sum(b["mean_latent_len"] for b in befores) / len(befores)
    print(
        f"\nfrom one SFT checkpoint; {mode} eval on {n_eval} eval episodes per run; before: the SFT policy "
        f"({'mean over the same sampling seeds' if mode == 'sample' else 'deterministic'}); mean [95% "
        "Student-t CI] over seeds; Δ paired per seed (wall s: this invocation's, near 0 for resumed runs)"
    )
    head = f"{'algo':12s} {'seeds':>5s} {'before':>7s} {'after':>22s} {'Δ paired':>22s} {'latent len':>13s} "
    head += f"{'env steps':>10s} {'wall s':>7s}"
    print(head)
    for algo, runs in results.items():
        mean, half = t_interval([r["success"] for r in runs])
        delta, d_half = t_interval([r["success"] - r["before"] for r in runs])
        lat = sum(r["latent_len"] for r in runs) / len(runs)
        steps = sum(r["env_steps"] for r in runs) / len(runs)
        wall = sum(r["wall_s"] for r in runs) / len(runs)
        print(
            f"{algo:12s} {len(runs):5d} {before_rate:7.1%} "
            f"{mean:8.1%} {_bracket(mean, half, '5.1%')} "
            f"{delta:+7.1%} {_bracket(delta, d_half, '+5.1%')} "
            f"{before_len:5.2f} → {lat:4.2f} {steps:10.0f} {wall:7.0f}"
        )
    tasks = list(befores[0]["per_task"])
    print("\nper task (mean over seeds)")
    print(f"{'algo':12s} " + " ".join(f"{t[:18]:>18s}" for t in tasks))
    sft = [sum(b["per_task"][t]["success_rate"] for b in befores) / len(befores) for t in tasks]
    print(f"{'SFT':12s} " + " ".join(f"{c:18.1%}" for c in sft))
    for algo, runs in results.items():
        cells = [sum(r["per_task"][t] for r in runs) / len(runs) for t in tasks]
        print(f"{algo:12s} " + " ".join(f"{c:18.1%}" for c in cells))


def _bracket(centre: float, half: float, spec: str) -> str:
    """``[lo, hi]`` of a 95 % interval, or a same-width note when one seed gives no interval."""
    cell = f"[{centre - half:{spec}}, {centre + half:{spec}}]"
    return f"{'[1 seed: no CI]':>{len(cell)}s}" if math.isnan(half) else cell


def _print_lengths(runs: dict[str, list[Path]]) -> None:
    """Whether the reasoning length adapts, and per task: each task's mean sampled length in the
    training rollouts at the first and last iteration, mean [95 % CI] over seeds, and the change."""
    print(
        "\nreasoning length in the training rollouts per task: first → last iteration, mean over seeds; "
        "change paired per seed [95% CI]"
    )
    for algo, dirs in runs.items():
        for task, curves in task_length_curves(dirs).items():
            first = [c[0] for c in curves]
            last = [c[-1] for c in curves]
            change, half = t_interval([b - a for a, b in zip(first, last, strict=True)])
            print(
                f"{algo:12s} {task:26s} {sum(first) / len(first):5.2f} → {sum(last) / len(last):5.2f}  "
                f"{change:+5.2f} {_bracket(change, half, '+5.2f')}  ({len(curves)} seeds)"
            )


def _print_stop(
    before: dict[str, Any], results: dict[str, list[dict[str, Any]]], tasks: list[str], n: int
) -> None:
    """Per task: the stop's expected sampled length before → after, the change, and the task's length
    after RL minus the mean of the other tasks' (≠ 0: the stop gives this task its own length)."""
    print(
        f"\nthe stop on the first observations of {n} eval starts per task: expected sampled length "
        "(stop T 1.6) before → after, change and after − the other tasks' mean, paired per seed [95% CI]; "
        "greedy rule's length after"
    )
    for algo, runs in results.items():
        after = [r["stop"]["expected_len"] for r in runs]
        for t, task in enumerate(tasks):
            change, c_half = t_interval([x[t] - before["expected_len"][t] for x in after])
            others = [(sum(x) - x[t]) / (len(x) - 1) for x in after] if len(tasks) > 1 else []
            apart, a_half = t_interval([x[t] - o for x, o in zip(after, others, strict=False)] or [0.0])
            greedy = sum(r["stop"]["greedy_len"][t] for r in runs) / len(runs)
            print(
                f"{algo:12s} {task:26s} {before['expected_len'][t]:5.2f} → "
                f"{sum(x[t] for x in after) / len(after):5.2f}  change {change:+5.2f} "
                f"{_bracket(change, c_half, '+5.2f')}  apart {apart:+5.2f} {_bracket(apart, a_half, '+5.2f')}"
                f"  greedy {greedy:4.2f}  ({len(runs)} seeds)"
            )


if __name__ == "__main__":
    main()
