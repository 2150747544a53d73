"""``lastr1 rl --algo lapo|ppo_action|grpo_action``: RL post-training (see :mod:`lastr1.train.rl`)."""

from __future__ import annotations

from lastr1.envs.config import ENV_ALIASES
from lastr1.train.rl import RLConfig as Config
from lastr1.train.rl import train_rl

ALIASES = {**ENV_ALIASES, "algo": "algo.name"}
SECTION = "rl"  # its section in the presets


def run(cfg: Config) -> int:
    state = train_rl(cfg)
    print(f"RL done after {state['iteration']} iterations, {state['env_steps']} env steps; out: {cfg.out}")
    if state.get("last_eval"):
        print(f"last eval success: {state['last_eval']['success_rate']:.1%}")
    return 1 if state.get("stopped") else 0
