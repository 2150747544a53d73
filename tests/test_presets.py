"""Presets are the one source of truth for a named setting.

Why: the demo's RL setting once lived in three copies (RLConfig defaults, a dict in the demo command,
~37 benchmark flags), and a flag whose default silently inverted (`--attach-value`) mislabelled every
benchmark table for several rounds. Now `lastr1 demo`, `lastr1 rl preset=demo` and the benchmark all
read `presets/demo.yaml`; these tests prove they resolve to the same RLConfig.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lastr1 import cli
from lastr1.commands import demo
from lastr1.config import ConfigError, load_config, load_preset, preset_names, split_preset
from lastr1.config_help import describe
from lastr1.train.rl import RLConfig
from lastr1.train.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "lapo_vs_baselines.py"
README = ROOT / "README.md"
# what a run's own paths and the benchmark's harness set; everything else must come from the preset
PER_RUN = {"checkpoint", "out", "seed", "progress", "eval_at_start", "eval_videos", "eval_sampled"}


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(cfg).items() if prefix == "" else cfg.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(a: RLConfig, b: RLConfig) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa if fa[k] != fb[k] and k not in PER_RUN}


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lapo_vs_baselines_under_test", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _readme_command() -> list[str]:
    """The README's `lapo_vs_baselines.py` command (the one that made its headline table), as argv."""
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


@pytest.mark.parametrize("algo", ["lapo", "ppo_action", "grpo_action"])
def test_demo_preset_resolves_to_one_rl_config_through_every_entry_point(algo: str, tmp_path: Path) -> None:
    via_demo = demo.stage_configs(demo.Config(algo=algo), tmp_path)[2]
    preset, overrides = split_preset(["preset=demo", f"algo.name={algo}"])
    via_rl = load_config(RLConfig, overrides=overrides, preset=preset, section="rl")
    bench = _benchmark()
    via_bench = bench.run_config(bench.parse_args(["--checkpoint", "x", "preset=demo"]), algo, 0, False)
    assert _differences(via_demo, via_rl) == set()
    assert _differences(via_demo, via_bench) == set()
    assert via_rl.algo.name == via_bench.algo.name == via_demo.algo.name == algo
    assert via_demo.value_trains_backbone is False and via_demo.decode.stop_scope == "episode"
    # the README's headline command (on tasks that never shaped the recipe) differs from the preset
    # only in the task list and the harness settings it names: the recipe itself is the preset's
    readme = bench.run_config(bench.parse_args(_readme_command()), algo, 0, False)
    harness = {"env.vector", "eval_episodes_per_task", "iterations", "eval_every", "env.tasks"}
    assert _differences(via_demo, readme) <= harness


def test_every_shipped_preset_loads_for_every_command() -> None:
    from lastr1.commands import eval as eval_command
    from lastr1.commands import make_demos

    assert set(preset_names()) >= {"demo", "quick", "reference"}
    for name in preset_names():
        for cls, section in ((SFTConfig, "sft"), (RLConfig, "rl"), (eval_command.Config, "eval")):
            load_config(cls, preset=name, section=section)
        load_config(make_demos.Config, preset=name, section="make_demos")
    with pytest.raises(ConfigError, match=r"preset='nope' is unknown; use one of \['demo'"):
        load_config(RLConfig, preset="nope", section="rl")


def test_reference_preset_is_the_reference_recipe() -> None:
    rl = load_config(RLConfig, preset="reference", section="rl")
    assert rl.algo.name == "lapo" and rl.algo.action_ratio == "sequence" and rl.advantage_kind == "gae"
    assert (rl.algo.clip_low, rl.algo.clip_high, rl.algo.latent_sigma) == (0.2, 0.28, 10.0)
    assert (rl.algo.w_action, rl.algo.w_end, rl.algo.w_latent, rl.algo.kl_coef) == (1.0, 1.0, 0.1, 0.0)
    assert (rl.decode.action_temperature, rl.decode.stop_temperature) == (1.6, 1.6)
    assert rl.decode.stop_scope == "decision" and rl.decode.eval_stop_threshold == 0.99
    assert (rl.lr, rl.value_lr, rl.grad_clip, rl.value_trains_backbone) == (3e-5, 3e-4, 10.0, True)
    assert rl.rollouts_per_start == 1 and rl.epochs == 1 and rl.minibatches == 4
    sft = load_config(SFTConfig, preset="reference", section="sft")
    assert sft.latent_loss == "cos" and sft.teacher.name == "dinov2" and sft.teacher.reduction == "topk"
    assert sft.teacher.target_dim == sft.policy.d_model  # the latent itself is aligned: no projection
    assert (sft.stop_weight, sft.latent_weight, sft.stop_target) == (0.1, 1.0, "uniform")
    assert sft.policy.action_slot_embedding == "zero" and not sft.policy.use_proprio
    # the dataclass defaults are the reference too, where the preset does not scale a size
    assert load_preset("reference", "rl")["algo"]["action_ratio"] == RLConfig().algo.action_ratio


def test_help_lists_every_field_with_type_default_and_meaning(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rl", "--help"])
    text = capsys.readouterr().out
    for name, _tp, _default, _doc in describe(RLConfig):
        assert re.search(rf"^  {re.escape(name)}: ", text, re.M), name
    assert "presets: demo, libero, quick, reference" in text
    meaning = {row[0]: row[3] for row in describe(RLConfig)}
    assert "episode" in meaning["decode.stop_scope"] and meaning["algo.action_ratio"]
    undocumented = [name for name, doc in meaning.items() if not doc]
    assert len(undocumented) < len(meaning) / 2, undocumented  # most fields carry a comment


def test_cli_applies_preset_then_overrides(capsys) -> None:
    assert cli.main(["rl", "preset=demo", "lr=2e-4", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert (
        "lr: 0.0002" in printed and "action_temperature: 0.5" in printed and "stop_scope: episode" in printed
    )
    assert cli.main(["rl", "preset=nope"]) == 2
    assert "preset='nope' is unknown" in capsys.readouterr().err


def test_nothing_outside_models_writes_a_policy_attribute() -> None:
    """The policy's config is frozen and its decode is passed per call: no trainer, command or
    benchmark sets ``policy.<attr> = ...`` or ``policy.config.<field> = ...`` after construction."""
    # an assignment statement (also in a tuple target) or a setattr on a policy or its config
    pattern = re.compile(
        r"^\s*(?:[\w.]+\s*,\s*)*(?:policy|anchor|final)\.(?:config\.)?\w+\s*(?:,[^=]*)?=(?!=)"
        r"|setattr\((?:policy|anchor|final)\b"
    )
    offenders = []
    for folder in (ROOT / "src" / "lastr1", ROOT / "benchmarks"):
        for path in folder.rglob("*.py"):
            if "models" in path.relative_to(ROOT).parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line.split("#")[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
