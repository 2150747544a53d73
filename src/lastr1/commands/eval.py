"""``lastr1 eval --checkpoint DIR --env metaworld --tasks a,b --episodes 20``.

Greedy actions and the deterministic stop rule on the ``eval`` initial states; writes ``eval.json``
(per-task success, 95 % Wilson interval, mean latent length, the per-episode success list) and one
mp4 per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lastr1.envs import EnvConfig, make_env
from lastr1.envs.config import ENV_ALIASES
from lastr1.eval.evaluate import evaluate, format_table, save_eval
from lastr1.models.policy import LastR1Policy

ALIASES = {
    **ENV_ALIASES,
    "episodes": "episodes_per_task",
    "trials_per_task": "episodes_per_task",
}


@dataclass
class Config:
    checkpoint: str = ""
    env: EnvConfig = field(default_factory=EnvConfig)
    episodes_per_task: int = 20
    init_set: str = "eval"
    out: str = ""  # default: <checkpoint>/eval
    videos_per_task: int = 1
    seed: int = 0
    threads: int = 1  # torch threads; >1 is much slower when another process keeps a core busy
    progress: bool = True


def run(cfg: Config) -> int:
    if not cfg.checkpoint:
        raise ValueError("checkpoint: pass the policy directory to evaluate (--checkpoint runs/x/final)")
    if cfg.init_set not in ("train", "eval"):
        raise ValueError(f"init_set={cfg.init_set!r} must be 'eval' (the benchmark states) or 'train'")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    policy = LastR1Policy.from_pretrained(cfg.checkpoint).eval()
    env_cfg = cfg.env
    if env_cfg.image_size != policy.config.image_size:
        print(f"note: using env.image_size={policy.config.image_size} to match the checkpoint")
        env_cfg.image_size = policy.config.image_size
    env_cfg.wrist_view = policy.config.num_views > 1
    out = Path(cfg.out or Path(cfg.checkpoint) / "eval")
    with make_env(env_cfg) as env:
        result = evaluate(
            policy,
            env,
            cfg.episodes_per_task,
            init_set=cfg.init_set,
            videos_dir=out / "videos" if cfg.videos_per_task else None,
            videos_per_task=cfg.videos_per_task,
            progress=cfg.progress,
        )
    result["checkpoint"] = str(cfg.checkpoint)
    path = save_eval(result, out / "eval.json")
    print(format_table(result))
    print(f"wrote {path}")
    return 0
