"""The typed config loader: YAML + overrides into dataclasses, one-line errors naming the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from lastr1.config import ConfigError, load_config, save_config
from lastr1.envs.config import EnvConfig


@dataclass
class Inner:
    size: int = 64
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_without_file():
    cfg = load_config(Outer)
    assert cfg == Outer()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\ninner:\n  size: 32\n")
    cfg = load_config(Outer, path, ["inner.names=a,b", "flag=true", "lr=1e-4", "limit=7"])
    assert cfg.lr == pytest.approx(1e-4)
    assert cfg.inner.size == 32
    assert cfg.inner.names == ["a", "b"]
    assert cfg.flag is True and cfg.limit == 7


def test_none_for_optional():
    assert load_config(Outer, None, ["limit=null"]).limit is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=fast", "lr: expected float"),
        ("inner.size=big", "inner.size: expected int"),
        ("mode=c", "mode: expected one of ['a', 'b']"),
        ("flag=maybe", "flag: expected true/false"),
        ("inner.sise=3", "inner.sise: unknown field (did you mean 'size'?)"),
        ("nokey", "expected key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(Outer, None, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_dataclass_validation_surfaces_as_config_error():
    with pytest.raises(ConfigError, match="env.num_envs=0 must be >= 1"):
        load_config(EnvConfig, None, ["num_envs=0"])


def test_unused_env_seed_is_refused_with_the_fix():
    # it once did nothing silently: a user sweeping env.seed would have rerun the same starts
    with pytest.raises(ConfigError, match=r"env.seed=3 is not used.*lastr1 rl seed=1"):
        load_config(EnvConfig, None, ["seed=3"])
    assert load_config(EnvConfig, None, ["seed=0"]).seed == 0  # saved configs still load


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.names=x", "lr=0.25"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg


def test_a_lone_number_is_a_one_item_list():
    """`--tasks 0` (a LIBERO task id): YAML reads it as an int; a list[str] field still gets ["0"]."""
    assert load_config(Outer, None, ["inner.names=0"]).inner.names == ["0"]
    assert load_config(Outer, None, ["inner.names=3,5"]).inner.names == ["3", "5"]
