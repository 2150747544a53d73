"""``lastr1 make-demos``: record successful one-shot demos with scripted experts.

For each task the expert runs from ``init_set`` initial states 0, 1, 2, ... and only successful
episodes are kept, until ``episodes_per_task`` are found or ``max_tries_per_task`` starts were
used. The output is a dataset directory in the format of :mod:`lastr1.data.episodes` plus an mp4
preview of the first kept episode per task. Only the frames the dataset stores are rendered (see
:func:`record_episode`; on LIBERO a frame costs ~3x a physics step, and a failed try renders only
its first frame). The progress bar shows the expert's success so far (kept / tried) and env steps per second. Example::

    lastr1 make-demos env.tasks=reach-v3,drawer-open-v3 episodes_per_task=1 out=runs/demos
"""

from __future__ import annotations

import importlib
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lastr1.data.episodes import EPISODES_DIR, META_FILE, STATS_FILE, Episode, write_episode, write_meta
from lastr1.data.stats import statistics_from_arrays, write_statistics
from lastr1.envs.base import INIT_SETS, SingleEnv, TaskSpec
from lastr1.envs.config import ENV_ALIASES, EnvConfig
from lastr1.envs.experts import ScriptedExpert, expert_factory, make_expert
from lastr1.envs.suites import resolve_tasks

VIDEOS_DIR = "videos"
VIDEO_FPS = 20

ALIASES = {
    **ENV_ALIASES,
    "image_size": "env.image_size",
    "episodes": "episodes_per_task",
}


SECTION = "make_demos"  # its section in the presets


@dataclass
class Config:
    """Which simulator/tasks, how many demos, where to write them."""

    env: EnvConfig = field(default_factory=EnvConfig)
    episodes_per_task: int = 1
    out: str = "runs/demos"
    max_tries_per_task: int = 20
    # Demos come from the train set so evaluation starts stay unseen.
    init_set: str = "train"
    video: bool = True
    # Replace an existing lastr1 dataset at `out` (never deletes a directory that is not one).
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task={self.episodes_per_task} must be >= 1")
        if self.max_tries_per_task < self.episodes_per_task:
            raise ValueError(
                f"max_tries_per_task={self.max_tries_per_task} must be >= "
                f"episodes_per_task={self.episodes_per_task}"
            )
        if self.init_set not in INIT_SETS:
            raise ValueError(f"init_set={self.init_set!r} is unknown; use one of {list(INIT_SETS)}")
        if not self.out.strip():
            raise ValueError("out is empty; give the dataset directory to write, e.g. out=runs/demos")


def _check_backend(backend: str) -> None:
    expert_factory(backend)  # fails early, before any simulator is built


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix datasets; with ``overwrite`` remove only the files a dataset consists of."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file; give a directory path for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"out={str(out)!r} already exists and is not empty; choose a new directory "
                "or pass overwrite=true to replace a previous lastr1 dataset there"
            )
        if not (out / META_FILE).is_file():
            raise ValueError(
                f"out={str(out)!r} is not empty and holds no lastr1 dataset ({META_FILE}); "
                "refusing to overwrite it: choose another directory"
            )
        for name in (META_FILE, STATS_FILE):
            (out / name).unlink(missing_ok=True)
        for name in (EPISODES_DIR, VIDEOS_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"out={str(out)!r} cannot be created: {exc}") from None


def record_episode(
    env: SingleEnv,
    expert: ScriptedExpert,
    task: TaskSpec,
    init_set: str,
    index: int,
    *,
    render_failed: bool = True,
) -> Episode:
    """Run ``expert`` from one initial state until success or ``task.max_steps``.

    Renders only the frames the episode stores. Experts read the simulator, not the pixels, so every
    step runs unrendered (``env.step(action, render=False)``) and the observation after step ``t`` is
    drawn only when step ``t + 1`` follows; the one after the last action is never drawn. With
    ``render_failed=False`` and an env that can draw past frames later (``frame_snapshot`` /
    ``render_snapshots``: LIBERO, where a frame costs ~3x a physics step), frames are drawn after
    the episode and only if it succeeded; a failed episode then has no images (``images`` has 0 rows).
    """
    obs = env.reset(init_set, index)  # type: ignore[arg-type]
    expert.reset()
    deferred = not render_failed and hasattr(env, "frame_snapshot") and hasattr(env, "render_snapshots")
    frames: list[np.ndarray] = [obs.images]  # reset renders the first observation
    frame_shape = np.shape(obs.images)
    snapshots: list[object] = []
    proprio, privileged, actions, rewards, success = [], [], [], [], []
    for t in range(task.max_steps):
        if t > 0:  # the observation after the previous step is stored: draw it (or keep what draws it)
            if deferred:
                snapshots.append(env.frame_snapshot())  # type: ignore[attr-defined]
            else:
                frames.append(env.observe().images)
        action = np.asarray(expert.act(obs), dtype=np.float32)
        proprio.append(obs.proprio)
        privileged.append(obs.privileged)
        actions.append(action)
        obs, reward, done = env.step(action, render=False)
        rewards.append(reward)
        success.append(done)
        if done:
            break
    if deferred and any(success):
        frames.extend(env.render_snapshots(snapshots))  # type: ignore[attr-defined]
    elif deferred:
        frames = []
    images = np.stack(frames) if frames else np.zeros((0, *frame_shape), dtype=np.uint8)
    return Episode(
        images=images.astype(np.uint8),
        proprio=np.stack(proprio).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        privileged=np.stack(privileged).astype(np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        success=np.asarray(success, dtype=bool),
        task=task.name,
        instruction=task.instruction,
        init_set=init_set,
        init_index=index,
    )


def write_video(path: Path, episode: Episode) -> None:
    """An mp4 preview; views side by side."""
    import imageio.v2 as imageio

    frames = np.concatenate(list(episode.images.transpose(1, 0, 2, 3, 4)), axis=2)  # (T, H, V*W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, list(frames), fps=VIDEO_FPS, macro_block_size=1)


def run(cfg: Config) -> int:
    from tqdm import tqdm

    _check_backend(cfg.env.backend)
    tasks = resolve_tasks(cfg.env)
    out = Path(cfg.out)
    _prepare_out(out, cfg.overwrite)
    backend = importlib.import_module(f"lastr1.envs.{cfg.env.backend}")

    records: list[dict[str, object]] = []
    per_task: dict[str, dict[str, int]] = {}
    arrays: dict[str, list[np.ndarray]] = {"action": [], "proprio": []}
    views = ["agent", "wrist"] if cfg.env.wrist_view else ["agent"]
    dims: dict[str, int] = {}
    start = time.time()
    solved = tries_total = steps = 0  # the expert's successes, its tries and env steps, all tasks
    recording = 0.0  # seconds spent in episodes (not building simulators)
    bar = tqdm(total=len(tasks) * cfg.episodes_per_task, desc="demos", unit="ep", file=sys.stderr)
    bar.set_postfix(expert="0/0")
    for task in tasks:
        env = backend.make_single_env(task, cfg.env)
        kept = tries = 0
        try:
            expert = make_expert(cfg.env.backend, task, env)  # may refuse the task (ValueError)
            while kept < cfg.episodes_per_task and tries < cfg.max_tries_per_task:
                t_episode = time.perf_counter()
                episode = record_episode(env, expert, task, cfg.init_set, tries, render_failed=False)
                recording += time.perf_counter() - t_episode
                tries += 1
                solved += episode.succeeded
                steps += len(episode)
                bar.set_postfix(
                    task=task.name,
                    expert=f"{solved}/{tries_total + tries} ({solved / (tries_total + tries):.0%})",
                    steps_s=f"{steps / recording:.1f}",  # env steps per second of recording
                )
                if not episode.succeeded:
                    continue
                rel = Path(write_episode(out, len(records), episode)).relative_to(out)
                records.append(
                    {
                        "file": rel.as_posix(),
                        "task": task.name,
                        "length": len(episode),
                        "init_set": cfg.init_set,
                        "init_index": episode.init_index,
                    }
                )
                arrays["action"].append(episode.actions)
                arrays["proprio"].append(episode.proprio)
                dims = {
                    "proprio_dim": episode.proprio.shape[1],
                    "privileged_dim": episode.privileged.shape[1],
                }
                if cfg.video and kept == 0:
                    try:
                        write_video(out / VIDEOS_DIR / f"{task.name}.mp4", episode)
                    except Exception as exc:  # a preview must not cost the demos; say why it is absent
                        tqdm.write(f"{task.name}: no video ({type(exc).__name__}: {exc})", sys.stderr)
                kept += 1
                bar.update(1)
        finally:
            env.close()
        tries_total += tries
        per_task[task.name] = {"episodes": kept, "tries": tries}
        tqdm.write(
            f"{task.name}: {kept}/{cfg.episodes_per_task} successful demos in {tries} tries", sys.stderr
        )
    bar.close()

    if not records:
        print(
            f"make-demos: no expert episode succeeded in {cfg.max_tries_per_task} tries per task; "
            "nothing written",
            file=sys.stderr,
        )
        return 1
    write_meta(
        out,
        {
            "backend": cfg.env.backend,
            "suite": tasks[0].suite,
            "tasks": [asdict(t) for t in tasks],
            "image_size": cfg.env.image_size,
            "views": views,
            "action_dim": 7,
            **dims,
            "num_episodes": len(records),
            "per_task": per_task,
            "init_set": cfg.init_set,
            "placement_scale": cfg.env.placement_scale,  # (task, init_set, index) reproduce a start only with it
            "source": "scripted expert (lastr1 make-demos)",
            "episodes": records,
        },
    )
    write_statistics(out, statistics_from_arrays(arrays))
    short = [name for name, c in per_task.items() if c["episodes"] < cfg.episodes_per_task]
    print(f"wrote {len(records)} episodes to {out} in {time.time() - start:.0f} s")
    if short:
        print(f"make-demos: too few successful demos for {short}; raise max_tries_per_task", file=sys.stderr)
        return 1
    return 0
