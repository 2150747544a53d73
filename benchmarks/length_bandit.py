"""Can LAPO's stop give tasks different reasoning lengths when they need them? A known-answer test.

Why: in the Meta-World demo LAPO shortens every task alike, and ``decoding_probe.py`` finds no task
that does better with long reasoning, so the demo cannot tell "nothing to separate" from "the
learner cannot separate". Here the simulator's outcome is replaced by a *length bandit* with a known
answer (``lastr1.eval.length_bandit``): on the demo checkpoint and real first observations of the
demo tasks, each task succeeds with probability ``--p-best`` at its preferred length and ``--p-worst``
at the other end (default 0.85 / 0.20: reach's measured sampled rates at lengths 2 and 8), one
sampled stop per episode, ``rollouts_per_iter / tasks`` episodes per task per iteration for
``iterations`` iterations (the demo's 64 rollouts per iteration = 16 per task, 10 iterations) and
the trainer's own LAPO update. It runs the reference's shared stop head and the same head plus the
per-candidate context readout (``algo.stop.context``), ``--seeds`` each, and prints per task the
expected sampled length before and after, and the separation (long-preferring minus
short-preferring tasks' length change) with a 95 % t interval over seeds.

The RL setting (tasks, decode, learning rates, KL, budget) is a preset's ``rl`` section (default
``preset=demo``) plus ``key=value`` overrides, read by the same loader as ``lastr1 rl``; the flags
are only about the benchmark::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/length_bandit.py \\
        --checkpoint runs/demo/sft/final --seeds 0,1,2 [preset=demo algo.stop.kl_coef=0.1]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from lastr1.config import load_config, split_preset
from lastr1.eval.length_bandit import LengthBandit, first_observations, train_stop_on_bandit
from lastr1.eval.stats import t_interval
from lastr1.train.rl import RLConfig, load_policy

HEADS = {"shared": False, "shared + context": True}  # algo.stop.context of each compared run
DEFAULT_PRESET = "demo"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prefer", default="short,long,short,long", help="per task of env.tasks: short | long")
    p.add_argument(
        "--ends",
        default="",
        help="instead of --prefer/--p-*: per task 'p_shortest:p_longest', e.g. a probe's measured rates "
        "'0.85:0.20,0.90:0.95,0.55:0.60,1:1'",
    )
    p.add_argument("--p-best", type=float, default=0.85, help="success at the preferred end")
    p.add_argument("--p-worst", type=float, default=0.20, help="success at the other end")
    p.add_argument("--pool", type=int, default=32, help="train first observations per task")
    p.add_argument("--held-out", type=int, default=10, help="eval first observations per task (measured)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="runs/length_bandit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"preset=NAME (default {DEFAULT_PRESET}) and RL config overrides, as for `lastr1 rl`",
    )
    a = p.parse_args()
    preset, a.overrides = split_preset(a.overrides)
    a.preset = preset or DEFAULT_PRESET
    return a


def _rl_config(a: argparse.Namespace, seed: int, context: bool) -> RLConfig:
    """The RL config of one run: the preset's ``rl`` section and the overrides, LAPO, the run's seed
    and stop head (``algo.stop.context``)."""
    return load_config(
        RLConfig,
        overrides=[
            *a.overrides,
            "algo.name=lapo",
            f"checkpoint={a.checkpoint}",
            f"seed={seed}",
            f"algo.stop.context={str(context).lower()}",
            "progress=false",
        ],
        preset=a.preset,
        section="rl",
    )


def main() -> None:
    a = _args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    configs = {
        (name, seed): _rl_config(a, seed, context) for name, context in HEADS.items() for seed in seeds
    }
    base = configs["shared", seeds[0]]  # the setting every run shares (but the seed and the stop head)
    tasks, prefer = list(base.env.tasks), a.prefer.split(",")
    if len(prefer) != len(tasks) or set(prefer) - {"short", "long"}:
        raise SystemExit(f"--prefer needs one of short|long per task ({len(tasks)} tasks), got {a.prefer!r}")
    ends = [(a.p_best, a.p_worst) if p == "short" else (a.p_worst, a.p_best) for p in prefer]
    if a.ends:
        try:
            ends = [(float(x), float(y)) for x, y in (e.split(":") for e in a.ends.split(","))]
        except ValueError:
            raise SystemExit(f"--ends needs 'p_shortest:p_longest' per task, got {a.ends!r}") from None
        if len(ends) != len(tasks):
            raise SystemExit(f"--ends has {len(ends)} entries for {len(tasks)} tasks")
        prefer = ["short" if lo > hi else "long" if hi > lo else "none" for lo, hi in ends]
    iterations, per_task = base.iterations, base.rollouts_per_iter // len(tasks)
    pool, held = (  # first_observations runs one in-process env slot per task
        first_observations(base.env, "train", a.pool),
        first_observations(base.env, "eval", a.held_out),
    )
    start = load_policy(a.checkpoint, base)  # the shared stop head: the KL anchor of every run
    lengths = start.layout.candidate_lengths()
    bandit = LengthBandit.linear(ends, len(lengths))
    anchor = start.requires_grad_(False)
    inputs, held_inputs = start.encode_obs(pool), start.encode_obs(held)  # the same for every run
    histories: dict[str, list[list[dict]]] = {name: [] for name in HEADS}
    bar = tqdm(total=len(HEADS) * len(seeds), desc="length bandit", unit="run")
    for (name, _), cfg in configs.items():
        policy = load_policy(a.checkpoint, cfg)  # the run's decode and, per head, the context readout
        hist = train_stop_on_bandit(
            policy, cfg, bandit, inputs, torch.from_numpy(pool.task),
            iterations, per_task, held_inputs, torch.from_numpy(held.task), anchor=anchor,
        )  # fmt: skip
        histories[name].append(hist)
        bar.update()
    bar.close()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n_eps = iterations * per_task
    print(
        f"\nlength bandit on {a.checkpoint}: success (shortest : longest) "
        f"{', '.join(f'{lo:.2f}:{hi:.2f}' for lo, hi in ends)}, linear between (candidates {lengths});"
        f" {iterations} iterations x {per_task} episodes per task ({n_eps} per task),"
        f" stop lr {base.stop_head_lr:g}, stop KL {base.algo.stop.kl_coef:g}, {len(seeds)} seeds;"
        " expected sampled length on"
        f" {a.held_out} held-out first observations per task"
    )
    print(
        f"{'stop head':18s} {'task':26s} {'prefers':7s} {'before':>6s} {'after':>6s} {'change [95% CI]':>20s}"
        f" {'greedy after':>12s}"
    )
    summary: dict[str, dict] = {}
    for name, runs in histories.items():
        rows = {}
        for t, task in enumerate(tasks):
            first = [h[0]["expected_len"][t] for h in runs]
            last = [h[-1]["expected_len"][t] for h in runs]
            change, half = t_interval([b - f for f, b in zip(first, last, strict=True)])
            greedy = sum(h[-1]["greedy_len"][t] for h in runs) / len(runs)
            rows[task] = {
                "before": sum(first) / len(first),
                "after": sum(last) / len(last),
                "change": change,
                "greedy_after": greedy,
            }
            print(
                f"{name:18s} {task:26s} {prefer[t]:7s} {rows[task]['before']:6.2f} {rows[task]['after']:6.2f}"
                f" {change:+8.2f} [{change - half:+.2f}, {change + half:+.2f}] {greedy:12.2f}"
            )
        seps = []
        for h in runs:
            delta = [h[-1]["expected_len"][t] - h[0]["expected_len"][t] for t in range(len(tasks))]
            longs = [d for d, p in zip(delta, prefer, strict=True) if p == "long"]
            shorts = [d for d, p in zip(delta, prefer, strict=True) if p == "short"]
            if longs and shorts:
                seps.append(sum(longs) / len(longs) - sum(shorts) / len(shorts))
        if seps:
            sep, sep_half = t_interval(seps)
            print(
                f"{name:18s} separation (long - short change): {sep:+.2f} [{sep - sep_half:+.2f}, "
                f"{sep + sep_half:+.2f}] per seed {', '.join(f'{s:+.2f}' for s in seps)}"
            )
        summary[name] = {"tasks": rows, "separation": seps}
    fig, axes = plt.subplots(1, len(HEADS), figsize=(5 * len(HEADS), 3.6), sharey=True)
    for ax, (name, runs) in zip(axes, histories.items(), strict=True):
        for t, task in enumerate(tasks):
            curve = [sum(h[i]["expected_len"][t] for h in runs) / len(runs) for i in range(iterations + 1)]
            ax.plot(
                range(iterations + 1),
                curve,
                ls={"short": "-", "long": "--"}.get(prefer[t], ":"),
                label=f"{task} ({prefer[t]})",
            )
        ax.set_title(f"stop head: {name}")
        ax.set_xlabel("iteration")
    axes[0].set_ylabel(f"expected sampled length (mean of {len(seeds)} seeds)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "length_bandit.png", dpi=120)
    (out / "results.json").write_text(
        json.dumps({"args": vars(a), "summary": summary, "histories": histories})
    )
    print(f"wrote {out / 'results.json'} and {out / 'length_bandit.png'}")


if __name__ == "__main__":
    main()
