"""Run reports: learning-curve and latent-length plots plus a markdown summary.

Everything is read back from ``metrics.jsonl`` and the ``eval*.json`` files a run wrote, so a
report can be regenerated for any run directory with :func:`write_run_report`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from lastr1.eval.evaluate import eval_files
from lastr1.train.metrics import read_metrics


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["env_steps"], r[key]) for r in rows if key in r and "env_steps" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning_curve(rl_dirs: dict[str, Path], path: Path) -> Path:
    """Greedy eval success (solid), sampled eval success (dotted, when run) and train success (dashed)
    vs env steps, one colour per run."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, run in rl_dirs.items():
        rows = read_metrics(run / "metrics.jsonl")
        x, y = _series(rows, "eval_success")
        line = ax.plot(x, [100 * v for v in y], marker="o", label=f"{label} (eval, greedy)")[0]
        x, y = _series(rows, "eval_sampled_success")
        if x:
            ax.plot(
                x,
                [100 * v for v in y],
                marker="s",
                linestyle=":",
                color=line.get_color(),
                label=f"{label} (eval, sampled)",
            )
        x, y = _series(rows, "train_success")
        ax.plot(
            x,
            [100 * v for v in y],
            linestyle="--",
            alpha=0.5,
            color=line.get_color(),
            label=f"{label} (train)",
        )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


EPISODE_LENGTH = "episode_latent_len/"  # each episode's mean length, every episode weighing once
DECISION_LENGTH = "latent_len/"  # the mean over decisions (older runs)


def _train_length_prefix(rows: list[dict[str, Any]]) -> str:
    """The per-task training-length key family a run logged: per episode (every episode weighs
    once) where present, else per decision (older runs)."""
    return EPISODE_LENGTH if any(k.startswith(EPISODE_LENGTH) for r in rows for k in r) else DECISION_LENGTH


def plot_latent_length(run: Path, path: Path) -> Path:
    """Mean reasoning length per task vs env steps: sampled stops in the training rollouts (left) and
    the deterministic stop rule of the greedy evaluations (right), the one the success numbers use."""
    rows = read_metrics(run / "metrics.jsonl")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    train_prefix = _train_length_prefix(rows)
    panels = (
        (
            train_prefix,
            f"training rollouts (sampled stop{', mean per episode' if train_prefix == EPISODE_LENGTH else ''})",
        ),
        ("eval_latent_len/", "evaluation (greedy stop)"),
    )
    for ax, (prefix, title) in zip(axes, panels, strict=True):
        keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
        for key in keys:
            x, y = _series(rows, key)
            ax.plot(x, y, marker=".", label=key.split("/", 1)[1])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("mean latent length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def task_length_curves(runs: list[Path]) -> dict[str, list[list[float]]]:
    """Per task, each run's mean sampled reasoning length in its training rollouts, one value per
    iteration (runs cut to the shortest, so seeds line up).

    Per-episode means (``episode_latent_len/<task>``: every episode weighs once) where the runs
    logged them, else per-decision means (``latent_len/<task>``, older runs), which over-weight the
    long, failing episodes.
    """
    per_run = [read_metrics(run / "metrics.jsonl") for run in runs]
    per_run = [[r for r in rows if "train_success" in r] for rows in per_run]
    if not per_run or not all(per_run):
        return {}
    n = min(len(rows) for rows in per_run)
    prefixes = {_train_length_prefix(rows) for rows in per_run}
    prefix = EPISODE_LENGTH if prefixes == {EPISODE_LENGTH} else DECISION_LENGTH
    tasks = sorted({k[len(prefix) :] for rows in per_run for r in rows for k in r if k.startswith(prefix)})
    return {
        task: [[float(r.get(f"{prefix}{task}", float("nan"))) for r in rows[:n]] for rows in per_run]
        for task in tasks
    }


def plot_task_lengths(groups: dict[str, list[Path]], path: Path) -> Path:
    """One panel per group (an algorithm): each task's training-rollout reasoning length vs iteration,
    the mean over the group's runs (seeds) bold and each run thin, so a per-task trend can be told
    from seed noise."""
    fig, axes = plt.subplots(
        1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 3.4), sharey=True, squeeze=False
    )
    for ax, (label, runs) in zip(axes[0], groups.items(), strict=False):
        for task, curves in task_length_curves(runs).items():
            xs = list(range(1, len(curves[0]) + 1))
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(xs))]
            line = ax.plot(xs, mean, linewidth=2, label=task)[0]
            for c in curves:
                ax.plot(xs, c, linewidth=0.6, alpha=0.4, color=line.get_color())
        ax.set_title(f"{label} ({len(runs)} runs)", fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean latent length (training rollouts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


DIAG = "diag/"  # the prefix of the trainer's per-iteration diagnostics (lastr1.train.diagnostics)


def _numbers(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(iterations, values)`` of ``key``, skipping rows without it and values that are not
    finite numbers (the logger writes nan/inf as strings)."""
    pts = [
        (float(r["step"]), float(r[key]))
        for r in rows
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "step" in r
    ]
    pts = [p for p in pts if math.isfinite(p[1])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _first_logged(rows: list[dict[str, Any]], *keys: str) -> str:
    """The first of ``keys`` the run logged (a newer name, then the older one it replaces)."""
    return next((k for k in keys if any(k in r for r in rows)), keys[0])


def _diagnostic_panels(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``(title, y label, [(metric key, legend label)])`` per panel of :func:`plot_diagnostics`."""
    keys = sorted({k for r in rows for k in r})

    def family(prefix: str, suffix: str = "") -> list[tuple[str, str]]:
        found = [k for k in keys if k.startswith(prefix) and k.endswith(suffix)]
        return [(k, k[len(prefix) : len(k) - len(suffix)]) for k in found]

    return [
        ("value head", "explained variance", [(f"{DIAG}explained_variance", "1 − Var[R−V]/Var[R]")]),
        (
            "KL",
            "KL per action token",
            [
                (_first_logged(rows, "approx_kl_behaviour", "approx_kl"), "to behaviour (minibatch mean)"),
                (f"{DIAG}kl_behaviour", "to behaviour (after the update)"),
                (_first_logged(rows, f"{DIAG}kl_sft", "kl_ref"), "to SFT start"),
            ],
        ),
        (
            "clip fraction",
            "fraction clipped",
            [
                (_first_logged(rows, "clip_frac_action", "clip_frac"), "action"),
                (_first_logged(rows, "clip_frac_stop", "stop_clip_frac"), "stop"),
                ("clip_frac_latent", "latent"),
            ],
        ),
        (
            "entropy",
            "mean action-token entropy",
            [("entropy", "minibatch mean"), (f"{DIAG}entropy", "after the update")],
        ),
        (
            "no-signal decisions",
            "fraction of decisions",
            [
                (f"{DIAG}zero_adv_frac", "|A| = 0 (raw)"),
                (f"{DIAG}zero_signal_frac", "group/task without contrast"),
            ],
        ),
        ("advantage mean per task", "mean A (as the loss sees it)", family(f"{DIAG}adv_mean/")),
        (
            "gradient share, policy group",
            "‖∇ term‖ / ‖∇ loss‖ (log)",
            family(f"{DIAG}grad_share/", "/policy"),
        ),
        ("gradient share, stop group", "‖∇ term‖ / ‖∇ loss‖ (log)", family(f"{DIAG}grad_share/", "/stop")),
    ]


def plot_diagnostics(run: Path, path: Path) -> Path | None:
    """A grid of the RL diagnostics vs iteration, read from the run's ``metrics.jsonl``: the value
    head's explained variance, KL to the behaviour and SFT policies, clip fractions per part,
    entropy, the share of decisions without signal, per-task advantage means and each loss term's
    share of the gradient. None when the run logged no ``diag/`` keys (runs from before them), so
    a report never links a figure of empty panels."""
    rows = read_metrics(run / "metrics.jsonl")
    if not any(k.startswith(DIAG) for r in rows for k in r):
        return None
    panels = _diagnostic_panels(rows)
    cols = 4
    fig, axes = plt.subplots(
        math.ceil(len(panels) / cols),
        cols,
        figsize=(4 * cols, 3 * math.ceil(len(panels) / cols)),
        squeeze=False,
    )
    for ax, (title, ylabel, series) in zip(axes.flat, panels, strict=False):
        log = title.startswith("gradient share")  # shares span decades (a latent term at 1e-10)
        drawn = 0
        for key, label in series:
            x, y = _numbers(rows, key)
            if x and (not log or max(y) > 0):  # a term that never reaches the group: no line
                ax.plot(x, y, marker=".", label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        else:
            ax.legend(fontsize=7)
            if log:
                ax.set_yscale("log", nonpositive="mask")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def success_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown table of per-task success (with 95 % CI) and latent length, before vs after RL."""
    lines = [
        "| task | success before | success after | latent len before | latent len after | episodes |",
        "|---|---|---|---|---|---|",
    ]

    def cell(r: dict[str, Any]) -> str:
        lo, hi = r["ci95"]
        return f"{r['success_rate']:.0%} [{lo:.0%}, {hi:.0%}]"

    for name, a in after["per_task"].items():
        b = before["per_task"].get(name)
        lines.append(
            f"| {name} | {cell(b) if b else '—'} | {cell(a)} | "
            f"{b['mean_latent_len'] if b else float('nan'):.2f} | {a['mean_latent_len']:.2f} | {a['episodes']} |"
        )
    lines.append(
        f"| **overall** | {cell(before)} | {cell(after)} | {before['mean_latent_len']:.2f} | "
        f"{after['mean_latent_len']:.2f} | {after['episodes']} |"
    )
    return "\n".join(lines)


def cost_table(rl: Path) -> str:
    """Mean seconds per RL iteration by phase, from the run's metrics (measured, this machine)."""
    metrics = read_metrics(rl / "metrics.jsonl")
    rows = [r for r in metrics if "sec_collect" in r]
    if not rows:
        return "(no RL iteration recorded yet)"

    def mean(key: str) -> float:
        vals = [float(r[key]) for r in rows if key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    evals = [float(r["sec_eval"]) for r in metrics if "sec_eval" in r]
    lines = [
        f"Over {len(rows)} iterations ({rows[-1]['env_steps']} env steps):",
        "",
        "| per iteration | mean |",
        "|---|---|",
        f"| collect rollouts (s) | {mean('sec_collect'):.1f} |",
        f"| of which env stepping (s, summed over rounds) | {mean('sec_env'):.1f} |",
        f"| of which policy forward (s) | {mean('sec_policy'):.1f} |",
        f"| update (s) | {mean('sec_update'):.1f} |",
        f"| env steps | {rows[-1]['env_steps'] / len(rows):.0f} |",
        f"| env steps / s while collecting | {mean('env_steps_per_s'):.1f} |",
    ]
    if evals:
        lines.append(f"| evaluation, when run (s) | {sum(evals) / len(evals):.1f} |")
    return "\n".join(lines)


def _sampled_section(rl: Path) -> list[str]:
    """Before/after of the sampled policy when the run evaluated it (``RLConfig.eval_sampled``)."""
    files = eval_files(rl, "sample")
    if len(files) < 2:
        return []
    first, last = (json.loads(f.read_text()) for f in (files[0], files[-1]))
    return [
        "The sampled policy (the rollout temperatures; the policy RL optimises), same eval states:",
        "",
        success_table(first, last),
        "",
    ]


def _diagnostics_section(figure: Path | None) -> list[str]:
    """The report's "Diagnostics" section when the run logged diagnostics, else nothing."""
    if figure is None:
        return []
    return [
        "## Diagnostics",
        "",
        "Why the policy does or does not improve, per iteration (`diag/*` and the update's metrics "
        "in metrics.jsonl; `lastr1.train.diagnostics`).",
        "",
        f"![diagnostics]({figure.name})",
        "",
    ]


def _link(path: str, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), base.resolve())


def write_run_report(
    run_dir: Path,
    before: dict[str, Any],
    after: dict[str, Any],
    seconds: dict[str, float],
    algo: str,
    rl: Path | None = None,
    title: str = "",
    setting: str = "",
) -> Path:
    """``report.md`` in ``run_dir``: curves, latent lengths, before/after table, video links, costs.

    ``rl`` is the RL run directory (default ``run_dir/rl``, the demo's layout; ``lastr1 report``
    passes the RL run itself). ``setting`` is one sentence on the environment, shown under the title.
    """
    rl = rl if rl is not None else run_dir / "rl"
    curve = plot_learning_curve({algo: rl}, run_dir / "learning_curve.png")
    latent = plot_latent_length(rl, run_dir / "latent_length.png")
    diagnostics = plot_diagnostics(rl, run_dir / "diagnostics.png")
    lines = [
        f"# lastr1 run report: {title or run_dir.name}",
        "",
        f"SFT warm-up, then `{algo}` RL; evaluation on the held-out `eval` "
        "initial states with greedy actions and the deterministic stop rule."
        + (f" {setting}" if setting else ""),
        "",
        "## Success before and after RL (95 % Wilson intervals)",
        "",
        success_table(before, after),
        "",
        *_sampled_section(rl),
        "## Learning curve",
        "",
        f"![learning curve]({curve.name})",
        "",
        "## Reasoning length per task (training rollouts and greedy evaluations)",
        "",
        f"![latent length]({latent.name})",
        "",
        *_diagnostics_section(diagnostics),
        "## Rollout videos",
        "",
    ]
    for label, res in (("SFT", before), ("RL", after)):
        for name, r in res["per_task"].items():
            if r.get("video"):
                lines.append(f"- {label} / {name}: [{Path(r['video']).name}]({_link(r['video'], run_dir)})")
    lines += ["", "## Cost per RL iteration", "", cost_table(rl)]
    if seconds:
        lines += ["", "## Time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    prefix = "" if rl.resolve() == run_dir.resolve() else f"{rl.relative_to(run_dir)}/"
    lines += [
        "",
        "Reproduce by hand: "
        + ("`lastr1 sft --config sft/config.yaml`, " if prefix else "")
        + f"`lastr1 rl --config {prefix}config.yaml`, `lastr1 eval --checkpoint {prefix}final ...`.",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_sft_report(
    run_dir: Path, result: dict[str, Any], seconds: dict[str, float], setting: str = "", note: str = ""
) -> Path:
    """``report.md`` for a run without an RL stage (a LaST0 policy in ``lastr1 demo``): the SFT policy's
    greedy success per task with 95 % Wilson intervals, its videos and the time per stage."""
    lines = [
        f"# lastr1 run report: {run_dir.name}",
        "",
        "SFT warm-up only; evaluation on the held-out `eval` initial states, greedy."
        + (f" {setting}" if setting else ""),
        "",
        *([note, ""] if note else []),
        "## Success of the SFT policy (95 % Wilson intervals)",
        "",
        "| task | success | latent len | episodes |",
        "|---|---|---|---|",
    ]
    for name, r in [*result["per_task"].items(), ("**overall**", result)]:
        lo, hi = r["ci95"]
        lines.append(
            f"| {name} | {r['success_rate']:.0%} [{lo:.0%}, {hi:.0%}] | {r['mean_latent_len']:.2f} | {r['episodes']} |"
        )
    videos = [(n, r["video"]) for n, r in result["per_task"].items() if r.get("video")]
    if videos:
        lines += ["", "## Rollout videos", ""]
        lines += [f"- SFT / {n}: [{Path(v).name}]({_link(v, run_dir)})" for n, v in videos]
    if seconds:
        lines += ["", "## Time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    lines += [
        "",
        "Reproduce by hand: `lastr1 sft --config sft/config.yaml`, `lastr1 eval --checkpoint sft/final ...`.",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
