"""The learning benchmark runs the setting its README command claims: the demo preset's RL stage.

Why: the benchmark's tables are read as "the demo's setting". A flag whose default silently
inverts (as `--attach-value` once did: every run trained the value loss into the backbone while the
docs said detached) changes what every published row measured, and nothing else would catch it.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lastr1.commands.demo import PRESETS
from lastr1.envs import EnvConfig

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "lapo_vs_baselines.py"

README = BENCHMARK.parents[1] / "README.md"


def _readme_command() -> list[str]:
    """The README's `lapo_vs_baselines.py` command (the one that made its table), as argv."""
    lines = README.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("python benchmarks/lapo_vs_baselines.py")
    )
    command = ""
    for line in lines[start:]:
        command += " " + line.rstrip("\\ ")
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(command)[2:]


README_FLAGS = _readme_command()


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lapo_vs_baselines_under_test", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("algo", ["lapo", "ppo_action", "grpo_action"])
def test_the_readme_command_runs_the_demo_presets_rl_setting(algo: str, tmp_path: Path) -> None:
    bench = _benchmark()
    args = bench.parse_args([*README_FLAGS, "--out", str(tmp_path)])  # the last --out wins
    cfg = bench.run_config(args, EnvConfig(), algo, seed=3, progress=False)
    preset = PRESETS["default"]
    assert cfg.value_trains_backbone is preset["rl_value_trains_backbone"] is False
    assert cfg.iterations == preset["rl_iterations"]
    assert cfg.rollouts_per_iter == preset["rollouts_per_iter"]
    assert cfg.lr == preset["rl_lr"]
    assert cfg.stop_lr == preset["rl_stop_lr"]
    assert cfg.stop_scope == preset["rl_stop_scope"]
    assert cfg.action_temperature == preset["rl_action_temperature"]
    assert cfg.algo.kl_coef == preset["rl_kl_coef"]
    assert cfg.group_size == (preset["rl_group_size"] if algo == "grpo_action" else 1)
    assert cfg.algo.name == algo and cfg.seed == 3
    assert cfg.out == str(tmp_path / algo / "seed3")


def test_attach_value_lets_the_value_loss_train_the_backbone(tmp_path: Path) -> None:
    bench = _benchmark()
    args = bench.parse_args([*README_FLAGS, "--attach-value", "--out", str(tmp_path)])
    assert bench.run_config(args, EnvConfig(), "lapo", seed=0, progress=False).value_trains_backbone is True
