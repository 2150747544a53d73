"""A known answer for RL on a real simulator: recover a deliberately weakened SFT policy.

Why: "RL learns" needs a case where the answer is known before RL runs. One task's scripted demos
train two SFT policies with the same data and seed: the *full* one (the preset's SFT steps) and a
*weak* one (``--weak-steps``, a fraction of them), whose success is lower for a known reason, not a
hard task. The full policy's success shows what this policy class reaches from these demos; RL from
the weak checkpoint must close a stated share of the gap (``--target-share``) within the stated
budget (the preset's ``rl`` section, e.g. ``iterations=10``) on the same task's ``train`` starts::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/known_answer.py --task drawer-open-v3 \\
        --weak-steps 150 --seeds 0,1 --jobs 2 preset=demo env.vector=sync

Success is measured on the task's ``eval`` starts (greedy and sampled, ``--episodes`` each); the
recovered share per RL seed is ``(after - weak) / (full - weak)``. Prints one table and PASS or FAIL
against the target for the mean share of each decode; every number goes to ``<out>/results.json``
(``results-<label>.json`` with ``--label``, which compares RL settings from the same SFT policies).

A policy weakened by fewer SFT steps may be weak only in its greedy *stop* (it picks a reasoning length
its actions fail at, while another length succeeds): ``--by-length`` prints every policy's greedy
success at each fixed length, so a recovered gap can be read as the stop's or the actions'.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from lastr1.commands import make_demos
from lastr1.config import load_config, split_preset
from lastr1.envs import make_env
from lastr1.eval.evaluate import eval_files, evaluate, save_eval
from lastr1.eval.stats import t_interval
from lastr1.train.rl import RLConfig, load_policy, train_rl
from lastr1.train.sft import SFTConfig, train_sft

MODES = ("greedy", "sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="drawer-open-v3", help="one task with a scripted expert")
    p.add_argument("--demos", type=int, default=1, help="scripted demos of the task")
    p.add_argument("--weak-steps", type=int, default=150, help="SFT steps of the weakened policy")
    p.add_argument("--target-share", type=float, default=0.5, help="share of the gap RL must recover")
    p.add_argument("--seeds", default="0,1", help="RL seeds (both SFT policies use seed 0)")
    p.add_argument("--episodes", type=int, default=20, help="eval episodes per evaluation")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument(
        "--by-length",
        action="store_true",
        help="also decode the SFT policies and RL results greedily at every fixed reasoning length, to show "
        "whether a gap lies in the stop (the length chosen) or in the actions (success at every length)",
    )
    p.add_argument("--out", default="runs/known_answer")
    p.add_argument(
        "--label",
        default="",
        help="name of this RL setting: its runs go to <out>/rl-<label>, so settings share the SFT policies",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="preset=NAME (default demo) and rl overrides"
    )
    a = p.parse_args(argv)
    preset, a.overrides = split_preset(a.overrides)
    a.preset = preset or "demo"
    if not 0 < a.target_share <= 1:
        p.error(f"--target-share={a.target_share} must be in (0, 1]")
    return a


def _env_overrides(a: argparse.Namespace) -> list[str]:
    return [f"env.tasks=[{a.task}]"]


def rl_dir_name(a: argparse.Namespace) -> str:
    return f"rl-{a.label}" if a.label else "rl"


def rl_config(a: argparse.Namespace, seed: int) -> RLConfig:
    return load_config(
        RLConfig,
        overrides=[
            *a.overrides,
            *_env_overrides(a),
            f"checkpoint={Path(a.out) / 'sft_weak' / 'final'}",
            f"out={Path(a.out) / rl_dir_name(a) / f'seed{seed}'}",
            f"seed={seed}",
            f"eval_episodes_per_task={a.episodes}",
            "eval_at_start=false",
            "eval_every=0",
            "eval_sampled=true",
            "eval_videos=false",
            "progress=false",
        ],
        preset=a.preset,
        section="rl",
    )


def _sft(a: argparse.Namespace, name: str, steps: int | None) -> Path:
    extra = [f"steps={steps}"] if steps else []
    cfg = load_config(
        SFTConfig,
        overrides=[
            f"data={Path(a.out) / 'demos'}",
            f"out={Path(a.out) / name}",
            "seed=0",
            "progress=false",
            *extra,
        ],
        preset=a.preset,
        section="sft",
    )
    return train_sft(cfg)  # a finished run returns its final checkpoint at once


def _evaluate(a: argparse.Namespace, checkpoint: Path, cfg: RLConfig) -> dict[str, float]:
    """Greedy and sampled success of ``checkpoint`` with the RL run's decode (cached beside it)."""
    paths = {mode: checkpoint.parent / f"known_answer_{mode}.json" for mode in MODES}
    missing = [mode for mode, path in paths.items() if not path.is_file()]
    if missing:  # one policy and one env for every evaluation still to run
        policy = load_policy(checkpoint, cfg)
        with make_env(cfg.env) as env:
            for mode in missing:
                save_eval(evaluate(policy, env, a.episodes, mode=mode, progress=False), paths[mode])
    return {mode: json.loads(path.read_text())["success_rate"] for mode, path in paths.items()}


def _by_length(a: argparse.Namespace, checkpoint: Path, cfg: RLConfig) -> dict[int, float]:
    """Greedy success of ``checkpoint`` at each fixed reasoning length (``decode.force_latent_len``),
    cached beside it: the control that tells a stop gap (one length succeeds) from an action gap."""
    policy = load_policy(checkpoint, cfg)
    lay = policy.layout
    lengths = list(range(lay.latent_group, lay.k_max + 1, lay.latent_group))
    out: dict[int, float] = {}
    with make_env(cfg.env) as env:
        for n in lengths:
            path = checkpoint.parent / f"known_answer_greedy_len{n}.json"
            if not path.is_file():
                dec = dataclasses.replace(cfg.decode, force_latent_len=n)
                save_eval(evaluate(policy, env, a.episodes, mode="greedy", progress=False, decode=dec), path)
            out[n] = json.loads(path.read_text())["success_rate"]
    return out


def _rl(a: argparse.Namespace, seed: int) -> dict[str, float]:
    cfg = rl_config(a, seed)
    train_rl(cfg)  # a finished run resumes and returns at once
    return {mode: json.loads(eval_files(cfg.out, mode)[-1].read_text())["success_rate"] for mode in MODES}


def main() -> None:
    a = parse_args()
    out = Path(a.out)
    seeds = [int(k) for k in a.seeds.split(",")]
    base = rl_config(a, seeds[0])  # every setting checked before anything runs
    if not (out / "demos").is_dir():
        demo_cfg = load_config(
            make_demos.Config,
            overrides=[
                *_env_overrides(a),
                f"episodes_per_task={a.demos}",
                f"out={out / 'demos'}",
                "video=false",
            ],
            preset=a.preset,
            section="make_demos",
        )
        make_demos.run(demo_cfg)
    full = _sft(a, "sft_full", None)
    weak = _sft(a, "sft_weak", a.weak_steps)
    ref = {"full": _evaluate(a, full, base), "weak": _evaluate(a, weak, base)}
    if a.jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # rendering envs hang after fork
        with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            after = list(pool.map(_rl, [a] * len(seeds), seeds))
    else:
        after = [_rl(a, k) for k in seeds]
    print(
        f"\n{a.task}, {a.demos} demo(s); SFT {load_config(SFTConfig, preset=a.preset, section='sft').steps} "
        f"vs {a.weak_steps} steps; RL preset={a.preset} {' '.join(a.overrides)}: {base.algo.name}, "
        f"{base.iterations} iterations x {base.rollouts_per_iter} rollouts; {a.episodes} eval episodes each"
    )
    print(
        f"{'decode':7s} {'full SFT':>9s} {'weak SFT':>9s} {'after RL (per seed)':>26s} {'recovered share':>28s}"
    )
    summary: dict[str, Any] = {"task": a.task, "setting": {"preset": a.preset, "overrides": a.overrides}}
    for mode in MODES:
        f, w = ref["full"][mode], ref["weak"][mode]
        shares = [(r[mode] - w) / (f - w) if f > w else float("nan") for r in after]
        mean, half = t_interval(shares)
        verdict = "PASS" if mean >= a.target_share else "FAIL"
        if f <= w:
            verdict = "no gap: the weakened policy is not weaker"
        per_seed = ", ".join(f"{r[mode]:.0%}" for r in after)
        print(
            f"{mode:7s} {f:9.1%} {w:9.1%} {per_seed:>26s} {mean:+8.2f} [{mean - half:+.2f}, {mean + half:+.2f}] "
            f"{verdict} (target {a.target_share:.2f})"
        )
        summary[mode] = {
            "full": f,
            "weak": w,
            "after": [r[mode] for r in after],
            "share": shares,
            "verdict": verdict,
        }
    name = f"results-{a.label}.json" if a.label else "results.json"
    if a.by_length:
        runs = {"full SFT": full, "weak SFT": weak}
        runs |= {f"after RL seed {k}": Path(rl_config(a, k).out) / "final" for k in seeds}
        print("\ngreedy success at a fixed reasoning length (the stop's choice removed):")
        summary["by_length"] = {}
        for label, ckpt in runs.items():
            row = _by_length(a, ckpt, base)
            summary["by_length"][label] = row
            print(f"{label:16s} " + "  ".join(f"len {n}: {v:5.1%}" for n, v in row.items()))
    (out / name).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
