"""``lastr1 rl --algo lapo|ppo_action|grpo_action``: RL post-training (see :mod:`lastr1.train.rl`)."""

from __future__ import annotations

import os

from lastr1.envs.config import ENV_ALIASES
from lastr1.models.load import saved_family
from lastr1.train.rl import RLConfig as Config
from lastr1.train.rl import train_rl

ALIASES = {**ENV_ALIASES, "algo": "algo.name"}
SECTION = "rl"  # its section in the presets


def run(cfg: Config) -> int:
    if cfg.checkpoint and saved_family(cfg.checkpoint) == "last0":
        raise ValueError(
            f"checkpoint={cfg.checkpoint} is a LaST0 policy (policy.family=last0): RL for its flow-matching "
            "acting expert is not implemented; docs/last0.md ('RL: how it would plug in') has the plan. "
            "Evaluate it with `lastr1 eval checkpoint=...`"
        )
    state = train_rl(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return 1 if state.get("stopped") else 0
    print(f"RL done after {state['iteration']} iterations, {state['env_steps']} env steps; out: {cfg.out}")
    if state.get("last_eval"):
        print(f"last eval success: {state['last_eval']['success_rate']:.1%}")
    return 1 if state.get("stopped") else 0
