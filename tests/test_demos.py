"""``lastr1 make-demos`` end to end on Meta-World, and the on-disk episode format."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import pytest

pytest.importorskip("metaworld")

from lastr1.commands import make_demos
from lastr1.config import ConfigError, load_config
from lastr1.data import Episode, load_dataset, load_statistics, read_episode, write_episode, write_meta
from lastr1.envs.experts import has_experts


def _cfg(out, *extra):
    args = ["env.tasks=reach-v3", "env.image_size=32", f"out={out}", *extra]
    return load_config(make_demos.Config, None, args)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos") / "reach"
    cfg = _cfg(out, "episodes_per_task=2", "env.wrist_view=true", "video=true")
    assert make_demos.run(cfg) == 0
    return out


def test_dataset_loads_back(dataset_dir):
    ds = load_dataset(dataset_dir)
    assert len(ds) == 2 and ds.meta["backend"] == "metaworld" and ds.meta["views"] == ["agent", "wrist"]
    assert ds.tasks[0]["name"] == "reach-v3" and ds.tasks[0]["instruction"] == "move the gripper to the goal"
    assert (dataset_dir / "videos" / "reach-v3.mp4").stat().st_size > 0
    for i, ep in enumerate(ds):
        t = len(ep)
        assert ep.images.shape == (t, 2, 32, 32, 3) and ep.images.dtype == np.uint8
        assert ep.actions.shape == (t, 7) and ep.proprio.shape == (t, 4) and ep.privileged.shape == (t, 39)
        assert ep.task == "reach-v3" and ep.init_set == "train" and ep.init_index == i
        # Only successful episodes, ending at the first success with the binary reward.
        assert ep.success[-1] and not ep.success[:-1].any()
        assert ep.rewards.sum() == 1.0 and ep.rewards[-1] == 1.0
        assert ds.meta["episodes"][i]["length"] == t


def test_statistics_match_numpy(dataset_dir):
    ds = load_dataset(dataset_dir)
    stats = load_statistics(dataset_dir)
    assert stats == ds.stats
    for key, attr in (("action", "actions"), ("proprio", "proprio")):
        data = np.concatenate([getattr(ep, attr) for ep in ds]).astype(np.float64)
        np.testing.assert_allclose(stats[key]["mean"], data.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stats[key]["std"], data.std(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stats[key]["min"], data.min(0))
        np.testing.assert_allclose(stats[key]["max"], data.max(0))
        np.testing.assert_allclose(stats[key]["q01"], np.quantile(data, 0.01, axis=0), atol=1e-7)
        np.testing.assert_allclose(stats[key]["q99"], np.quantile(data, 0.99, axis=0), atol=1e-7)
    assert stats["num_transitions"] == sum(len(ep) for ep in ds) and stats["num_episodes"] == 2


def test_failed_episodes_are_not_kept(tmp_path, capsys):
    out = tmp_path / "none"
    # 3 steps are far too few for the expert to reach the goal: nothing may be written.
    assert make_demos.run(_cfg(out, "env.max_steps=3", "max_tries_per_task=2", "video=false")) == 1
    assert not (out / "meta.json").exists() and not list(out.glob("episodes/*.npz"))
    assert "0/1 successful demos in 2 tries" in capsys.readouterr().err


def test_out_dir_errors(tmp_path, dataset_dir):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        make_demos.run(_cfg(a_file))
    with pytest.raises(ValueError, match="not empty"):
        make_demos.run(_cfg(dataset_dir))
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="holds no lastr1 dataset"):
        make_demos.run(_cfg(other, "overwrite=true"))
    assert (other / "keep.txt").read_text() == "precious"


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="episodes_per_task"):
        _cfg(tmp_path, "episodes_per_task=0")
    with pytest.raises(ConfigError, match="init_set"):
        _cfg(tmp_path, "init_set=test")
    with pytest.raises(ConfigError, match="max_tries_per_task"):
        _cfg(tmp_path, "episodes_per_task=5", "max_tries_per_task=2")
    with pytest.raises(ValueError, match="unknown task 'nope-v3'"):
        make_demos.run(load_config(make_demos.Config, None, ["env.tasks=nope-v3", f"out={tmp_path / 'x'}"]))
    # LIBERO has a make_expert hook now: its backend check passes without building a simulator
    assert has_experts("libero")
    make_demos._check_backend("libero")


def test_load_dataset_errors(tmp_path, dataset_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no meta.json"):
        load_dataset(tmp_path)
    bad = tmp_path / "bad"
    write_meta(bad, {"episodes": [{"file": "episodes/000000.npz"}]})
    with pytest.raises(ValueError, match="missing"):
        load_dataset(bad)
    meta = json.loads((bad / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99"):
        load_dataset(bad)
    (bad / "dataset_statistics.json").write_text(json.dumps({"action": {"mean": [0.0]}}))
    with pytest.raises(ValueError, match="lacks statistics"):
        load_statistics(bad)


def test_episode_roundtrip_and_validation(tmp_path):
    t = 3
    ep = Episode(
        images=np.random.default_rng(0).integers(0, 255, size=(t, 1, 16, 16, 3), dtype=np.uint8),
        proprio=np.ones((t, 4), np.float32),
        actions=np.zeros((t, 7), np.float32),
        privileged=np.zeros((t, 39), np.float32),
        rewards=np.array([0, 0, 1], np.float32),
        success=np.array([False, False, True]),
        task="reach-v3",
        instruction="move the gripper to the goal",
        init_set="train",
        init_index=7,
    )
    back = read_episode(write_episode(tmp_path, 0, ep))
    np.testing.assert_array_equal(back.images, ep.images)
    assert (back.task, back.instruction, back.init_set, back.init_index) == (
        ep.task,
        ep.instruction,
        "train",
        7,
    )
    ep.actions = np.zeros((t, 6), np.float32)
    with pytest.raises(ValueError, match="actions"):
        write_episode(tmp_path, 1, ep)
    ep.actions = np.zeros((t, 7), np.float64)
    with pytest.raises(ValueError, match=r"episode.actions: expected float32"):
        write_episode(tmp_path, 1, ep)
