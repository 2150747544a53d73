"""Evaluate a policy on the ``eval`` initial states: per-task success, 95 % CI, latent length, videos.

Episodes are fixed by ``(task, "eval", index)`` for index < episodes_per_task, actions are greedy
and the stop rule is the deterministic one, so the same checkpoint gives the same success list on
every run (tested). ``mode="sample"`` evaluates the stochastic policy RL actually optimises (at the
policy's configured temperatures), drawing from one generator seeded by ``seed``, so it is
reproducible too. A small policy's greedy and sampled behaviour can differ a lot (see docs/rl.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lastr1.envs.base import EpisodeSpec, VectorEnv
from lastr1.eval.stats import wilson_interval
from lastr1.eval.video import write_video
from lastr1.models.decode import DecodeConfig
from lastr1.rollout.collector import ActingPolicy, collect


def evaluate(
    policy: ActingPolicy,
    env: VectorEnv,
    episodes_per_task: int,
    *,
    init_set: str = "eval",
    videos_dir: str | Path | None = None,
    videos_per_task: int = 1,
    progress: bool = True,
    mode: str = "greedy",
    seed: int = 0,
    pipeline: int = 1,
    decode: DecodeConfig | None = None,
) -> dict[str, Any]:
    """Run ``episodes_per_task`` episodes per task and summarise them (see module docstring)."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes per task must be >= 1, got {episodes_per_task}")
    specs: list[EpisodeSpec] = []
    for t in range(len(env.tasks)):
        available = env.num_init_states(t, init_set)  # type: ignore[arg-type]
        if episodes_per_task > available:
            raise ValueError(
                f"{episodes_per_task} episodes per task asked, but task {env.tasks[t].name!r} has only "
                f"{available} {init_set!r} initial states; lower the episode count"
            )
        specs += [EpisodeSpec(t, init_set, i) for i in range(episodes_per_task)]  # type: ignore[arg-type]
    n = env.num_envs
    success: dict[int, list[bool]] = {t: [] for t in range(len(env.tasks))}
    latent_len: dict[int, list[int]] = {t: [] for t in range(len(env.tasks))}
    episode_len: dict[int, list[float]] = {t: [] for t in range(len(env.tasks))}
    steps: dict[int, list[int]] = {t: [] for t in range(len(env.tasks))}
    videos: dict[str, str] = {}
    gen = torch.Generator().manual_seed(seed) if mode == "sample" else None
    bar = tqdm(total=len(specs), desc=f"eval episodes ({mode})", disable=not progress, leave=False)
    for start in range(0, len(specs), n):
        batch = specs[start : start + n]
        real = len(batch)
        batch = batch + [batch[-1]] * (n - real)  # pad the last round; padded slots are discarded
        # frames cost a render per control step: record only the slots whose episode becomes a video
        wanted = [i < real and spec.init_index < videos_per_task for i, spec in enumerate(batch)]
        record = max((i + 1 for i, w in enumerate(wanted) if w), default=0) if videos_dir else 0
        roll = collect(
            env,
            policy,
            batch,
            mode=mode,
            generator=gen,
            record_frames=record,
            pipeline=min(pipeline, n),
            decode=decode,
        )
        per_episode = roll.episode_latent_len()
        for i, spec in enumerate(batch[:real]):
            success[spec.task].append(bool(roll.success[i]))
            episode_len[spec.task].append(float(per_episode[i]))
            valid = roll.mask[i]
            latent_len[spec.task] += roll.latent_len[i][valid].tolist()
            steps[spec.task].append(int(roll.env_steps[i]))
            if videos_dir is not None and spec.init_index < videos_per_task:
                tag = "success" if roll.success[i] else "failure"
                name = f"{env.tasks[spec.task].name}_ep{spec.init_index:03d}_{tag}.mp4"
                videos.setdefault(
                    env.tasks[spec.task].name, str(write_video(roll.frames[i], Path(videos_dir) / name))
                )
        bar.update(real)
    bar.close()
    per_task = {}
    for t, task in enumerate(env.tasks):
        k, m = sum(success[t]), len(success[t])
        lo, hi = wilson_interval(k, m)
        per_task[task.name] = {
            "instruction": task.instruction,
            "episodes": m,
            "successes": k,
            "success_rate": k / m,
            "ci95": [lo, hi],
            "mean_latent_len": float(np.mean(latent_len[t])) if latent_len[t] else 0.0,
            "mean_episode_latent_len": float(np.mean(episode_len[t])),
            "mean_env_steps": float(np.mean(steps[t])),
            "success_list": success[t],
            "video": videos.get(task.name),
        }
    total_k = sum(sum(v) for v in success.values())
    total_m = sum(len(v) for v in success.values())
    lo, hi = wilson_interval(total_k, total_m)
    all_lat = [x for v in latent_len.values() for x in v]
    return {
        "episodes": total_m,
        "successes": total_k,
        "success_rate": total_k / total_m,
        "ci95": [lo, hi],
        "mean_latent_len": float(np.mean(all_lat)) if all_lat else 0.0,
        "mean_episode_latent_len": float(np.mean([x for v in episode_len.values() for x in v])),
        "init_set": init_set,
        "mode": mode,
        "per_task": per_task,
    }


# A run keeps its evaluations as evals/eval_XXXXX.json (greedy) and evals/sampled_XXXXX.json (sampled).
_EVAL_FILE_STEM = {"greedy": "eval", "sample": "sampled"}


def eval_file(run: str | Path, mode: str, iteration: int) -> Path:
    """Where a run saves its ``mode`` evaluation of ``iteration``."""
    return Path(run) / "evals" / f"{_EVAL_FILE_STEM[mode]}_{iteration:05d}.json"


def eval_files(run: str | Path, mode: str = "greedy") -> list[Path]:
    """A run's saved evaluations of one mode, oldest first."""
    return sorted((Path(run) / "evals").glob(f"{_EVAL_FILE_STEM[mode]}_*.json"))


def save_eval(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")  # a full disk never leaves a torn eval.json
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return path


def save_eval_or_fallback(result: dict[str, Any], path: str | Path) -> tuple[Path, str | None]:
    """Save to ``path``, or, when that fails (read-only, full disk), to a file in the temp folder.

    Why: an evaluation can take hours; its results must never be lost to where they were to be
    written. Returns the path written and, after a fallback, a one-line warning naming both paths.
    """
    try:
        return save_eval(result, path), None
    except OSError as exc:
        fd, name = tempfile.mkstemp(prefix="lastr1-eval-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(result, indent=2))
        reason = exc.strerror or str(exc)
        return Path(name), f"could not write {path} ({reason}); the results were saved to {name} instead"


def format_table(result: dict[str, Any]) -> str:
    """A plain-text per-task table for the terminal."""
    lines = [f"{'task':<36s} {'success':>9s} {'95% CI':>15s} {'latent':>7s} {'n':>5s}"]
    for name, r in result["per_task"].items():
        lo, hi = r["ci95"]
        lines.append(
            f"{name:<36s} {r['success_rate']:>8.1%} {f'[{lo:.0%}, {hi:.0%}]':>15s} "
            f"{r['mean_latent_len']:>7.2f} {r['episodes']:>5d}"
        )
    lo, hi = result["ci95"]
    lines.append(
        f"{'overall':<36s} {result['success_rate']:>8.1%} {f'[{lo:.0%}, {hi:.0%}]':>15s} "
        f"{result['mean_latent_len']:>7.2f} {result['episodes']:>5d}"
    )
    return "\n".join(lines)
