"""``lastr1 import-demos``: LIBERO HDF5 and LeRobot v2.1 demos → lastr1 datasets, on tiny files we write."""

from __future__ import annotations

import importlib.util
import io
import json
import sys

import h5py
import numpy as np
import pytest

from lastr1.cli import main
from lastr1.commands import import_demos
from lastr1.data import load_dataset, load_statistics
from lastr1.data.importers import keep_mask, resize_images
from lastr1.data.stats import statistics_from_arrays
from lastr1.envs.libero import PRIVILEGED_DIM, suite_tasks

if importlib.util.find_spec("libero") is None:  # the task catalogue ships with LIBERO
    pytest.skip("LIBERO is not installed", allow_module_level=True)

SIZE = 16
SPATIAL = suite_tasks("libero_spatial")
OBJECT = suite_tasks("libero_object")
# task -> demo lengths (demo_0, demo_1, demo_2); the shortest are demo_1 and demo_2 for task 0
LENGTHS = {SPATIAL[0].name: [12, 8, 10], SPATIAL[1].name: [9, 11, 10]}
NOOP_STEPS = (2, 3)  # in demo_0 of every task: no motion, gripper unchanged


def _pattern(t: int, tag: int) -> np.ndarray:
    """(t, 16, 16, 3) frames: channel 0 = row*16 + col (asymmetric), 1 = step, 2 = tag."""
    frames = np.zeros((t, SIZE, SIZE, 3), np.uint8)
    frames[..., 0] = (np.arange(SIZE)[:, None] * SIZE + np.arange(SIZE)[None, :]).astype(np.uint8)
    frames[..., 1] = np.arange(t, dtype=np.uint8)[:, None, None]
    frames[..., 2] = tag
    return frames


def _demo_arrays(seed: int, t: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (t, 7))
    actions[:, 6] = np.where(np.arange(t) < t // 2, -1.0, 1.0)
    return {
        "actions": actions,
        "ee_pos": rng.normal(size=(t, 3)),
        "ee_ori": rng.normal(size=(t, 3)),
        "gripper_states": rng.normal(size=(t, 2)),
    }


@pytest.fixture(scope="module")
def hdf5_dir(tmp_path_factory):
    """Two libero_spatial tasks × 3 demos; task 1's file has no problem_info (name-derived instruction)."""
    root = tmp_path_factory.mktemp("libero_hdf5") / "libero_spatial"
    root.mkdir()
    raw: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for k, (name, lengths) in enumerate(LENGTHS.items()):
        with h5py.File(root / f"{name}_demo.hdf5", "w") as f:
            data = f.create_group("data")
            if k == 0:
                data.attrs["problem_info"] = json.dumps(
                    {"language_instruction": f"  {SPATIAL[0].instruction} ", "problem_name": "x"}
                )
            data.attrs["env_args"] = json.dumps({"env_name": "x"})
            data.attrs["bddl_file_name"] = f"{name}.bddl"
            for i, t in enumerate(lengths):
                arrays = _demo_arrays(10 * k + i, t)
                if i == 0:
                    arrays["actions"][list(NOOP_STEPS), :6] = 0.0
                    arrays["actions"][list(NOOP_STEPS), 6] = arrays["actions"][NOOP_STEPS[0] - 1, 6]
                arrays["agent"] = _pattern(t, 10 * k + i)
                arrays["wrist"] = _pattern(t, 100 + 10 * k + i)
                g = data.create_group(f"demo_{i}")
                g.create_dataset("actions", data=arrays["actions"])
                g.create_dataset("states", data=np.zeros((t, 20)))
                g.create_dataset("rewards", data=np.r_[np.zeros(t - 1), 1.0])
                g.create_dataset("dones", data=np.r_[np.zeros(t - 1), 1.0])
                g.create_dataset("obs/agentview_rgb", data=arrays["agent"])
                g.create_dataset("obs/eye_in_hand_rgb", data=arrays["wrist"])
                for key in ("ee_pos", "ee_ori", "gripper_states"):
                    g.create_dataset(f"obs/{key}", data=arrays[key])
                g.create_dataset("obs/joint_states", data=np.zeros((t, 7)))
                raw[(name, i)] = arrays
    return root, raw


def _run(tmp_path, **kw) -> tuple[int, object]:
    kw.setdefault("format", "libero_hdf5")
    kw.setdefault("image_size", SIZE)
    out = tmp_path / "out"
    code = import_demos.run(import_demos.Config(out=str(out), **kw))
    return code, out


def test_hdf5_first_demo_per_task(hdf5_dir, tmp_path, capsys):
    root, raw = hdf5_dir
    code, out = _run(tmp_path, path=str(root), suite="libero_spatial")
    assert code == 0
    ds = load_dataset(out)
    assert len(ds) == 2 and ds.meta["backend"] == "libero" and ds.meta["suite"] == "libero_spatial"
    assert [t["name"] for t in ds.tasks] == [SPATIAL[0].name, SPATIAL[1].name]
    assert ds.meta["privileged"] == "unavailable (imported)" and ds.meta["proprio_dim"] == 8
    assert ds.meta["per_task"][SPATIAL[0].name] == {"episodes": 1, "available": 3}
    for ep, task in zip(ds, SPATIAL[:2], strict=True):
        src = raw[(task.name, 0)]
        t = LENGTHS[task.name][0]
        assert ep.task == task.name and ep.init_set == "train" and ep.init_index == 0 and len(ep) == t
        assert ep.instruction == task.instruction  # file's (stripped) for task 0, name-derived for task 1
        np.testing.assert_array_equal(ep.actions, src["actions"].astype(np.float32))
        expect = np.concatenate([src["ee_pos"], src["ee_ori"], src["gripper_states"]], axis=1)
        np.testing.assert_array_equal(ep.proprio, expect.astype(np.float32))
        # LIBERO renders upside down: stored frames are rotated 180° like our env's.
        assert ep.images.shape == (t, 1, SIZE, SIZE, 3)
        np.testing.assert_array_equal(ep.images[:, 0], src["agent"][:, ::-1, ::-1])
        assert ep.images[0, 0, 0, 0, 0] == 255 and ep.images[0, 0, -1, -1, 0] == 0
        assert ep.success[-1] and not ep.success[:-1].any() and ep.rewards.tolist() == [0.0] * (t - 1) + [1.0]
        assert ep.privileged.shape == (t, PRIVILEGED_DIM) and not ep.privileged.any()
    assert f"{SPATIAL[0].name}: 1/1 of 3 demos: #0 (12 steps)" in capsys.readouterr().out


def test_hdf5_shortest_wrist_and_statistics(hdf5_dir, tmp_path):
    root, raw = hdf5_dir
    code, out = _run(tmp_path, path=str(root), episodes_per_task=2, select="shortest", wrist_view=True)
    assert code == 0
    ds = load_dataset(out)
    picked = [(ep.task, ep.init_index) for ep in ds]
    assert picked == [(SPATIAL[0].name, 1), (SPATIAL[0].name, 2), (SPATIAL[1].name, 0), (SPATIAL[1].name, 2)]
    assert ds.meta["views"] == ["agent", "wrist"] and ds.meta["suite"] == "libero_spatial"  # inferred
    for ep in ds:
        src = raw[(ep.task, ep.init_index)]
        assert ep.images.shape[1] == 2
        np.testing.assert_array_equal(ep.images[:, 1], src["wrist"][:, ::-1, ::-1])
    selected = [raw[key] for key in picked]
    expect = statistics_from_arrays(
        {
            "action": [s["actions"].astype(np.float32) for s in selected],
            "proprio": [
                np.concatenate([s["ee_pos"], s["ee_ori"], s["gripper_states"]], 1).astype(np.float32)
                for s in selected
            ],
        }
    )
    assert load_statistics(out) == expect and ds.stats["num_episodes"] == 4


def test_hdf5_skip_noops_and_no_flip(hdf5_dir, tmp_path):
    root, raw = hdf5_dir
    code, out = _run(tmp_path, path=str(root), tasks=[SPATIAL[1].name], skip_noops=True, flip_images=False)
    assert code == 0
    ds = load_dataset(out)
    (ep,) = list(ds)
    src = raw[(SPATIAL[1].name, 0)]
    keep = np.ones(len(src["actions"]), bool)
    keep[list(NOOP_STEPS)] = False
    np.testing.assert_array_equal(keep_mask(src["actions"]), keep)
    assert len(ep) == keep.sum() == 7 and ds.meta["import"]["noop_steps_dropped"] == 2
    np.testing.assert_array_equal(ep.actions, src["actions"][keep].astype(np.float32))
    np.testing.assert_array_equal(ep.images[:, 0], src["agent"][keep])  # flip_images=false: as stored
    assert ep.success[-1] and ep.success.sum() == 1


def test_keep_mask_edges():
    a = np.zeros((4, 7))
    a[:, 6] = [-1, -1, 1, 1]
    # step 0: still, nothing to compare its gripper with -> dropped; step 2 closes the gripper -> kept;
    # the last step always stays (it carries the success).
    assert keep_mask(a).tolist() == [False, False, True, True]


def test_resize_keeps_orientation_with_and_without_pil(monkeypatch):
    big = np.zeros((2, 32, 32, 3), np.uint8)
    big[:, :16] = 200  # bright top half
    small = resize_images(big, 16)
    assert small.shape == (2, 16, 16, 3) and small[:, :7].min() == 200 and small[:, 9:].max() == 0
    monkeypatch.setitem(sys.modules, "PIL", None)  # the numpy fallback: block mean
    np.testing.assert_array_equal(resize_images(big, 16), big[:, ::2, ::2])
    assert resize_images(big, 12).shape == (2, 12, 12, 3)


def test_hdf5_errors(hdf5_dir, tmp_path):
    root, _ = hdf5_dir
    with pytest.raises(ValueError, match="path is empty"):
        _run(tmp_path, path="")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(tmp_path, path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no \*_demo.hdf5"):
        _run(tmp_path, path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not in LIBERO suite 'libero_object'"):
        _run(tmp_path, path=str(root), suite="libero_object")
    with pytest.raises(ValueError, match="not a LIBERO suite"):
        _run(tmp_path, path=str(root), suite="libero_90")
    with pytest.raises(ValueError, match=r"tasks: \['open_the_door'\] not found"):
        _run(tmp_path, path=str(root), tasks=["open_the_door"])
    with pytest.raises(ValueError, match="not a LeRobot dataset"):
        _run(tmp_path, path=str(root), format="lerobot")
    assert not (tmp_path / "out").exists()  # nothing written before the input checks pass
    assert _run(tmp_path, path=str(root))[0] == 0
    with pytest.raises(ValueError, match="not empty"):
        _run(tmp_path, path=str(root))
    assert _run(tmp_path, path=str(root), overwrite=True)[0] == 0


def test_hdf5_task_outside_the_suites_is_kept_with_a_warning(hdf5_dir, tmp_path):
    import shutil

    src = tmp_path / "libero_90"
    src.mkdir()
    shutil.copy(hdf5_dir[0] / f"{SPATIAL[1].name}_demo.hdf5", src / "KITCHEN_SCENE1_make_tea_demo.hdf5")
    with pytest.warns(UserWarning, match="no LIBERO suite has task 'KITCHEN_SCENE1_make_tea'"):
        code, out = _run(tmp_path, path=str(src))
    assert code == 0
    (task,) = load_dataset(out).tasks
    assert task["suite"] == "unknown" and task["instruction"] == "make tea"  # derived from the name


def test_too_few_demos_returns_1(hdf5_dir, tmp_path, capsys):
    code, out = _run(tmp_path, path=str(hdf5_dir[0]), episodes_per_task=4)
    assert code == 1 and len(load_dataset(out)) == 6
    assert "fewer than episodes_per_task=4" in capsys.readouterr().err


def test_cli_spelling(hdf5_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["import-demos", "--format", "libero_hdf5", "--path", str(hdf5_dir[0])]
    argv += ["--suite", "libero_spatial", "--episodes-per-task", "1", "--out", str(out), "image_size=16"]
    assert main(argv) == 0
    assert len(load_dataset(out)) == 2
    capsys.readouterr()
    assert main(["import-demos", "--path", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert main(["import-demos", "--format", "rlds", "--path", "x"]) == 2
    assert "format: expected one of ['libero_hdf5', 'lerobot']" in capsys.readouterr().err


def test_sft_trains_on_imported_demos(hdf5_dir, tmp_path):
    from conftest import tiny_sft_config
    from lastr1.models.policy import LastR1Policy
    from lastr1.train.sft import train_sft

    code, out = _run(tmp_path, path=str(hdf5_dir[0]), wrist_view=True)
    assert code == 0
    final = train_sft(tiny_sft_config(out, tmp_path / "sft", steps=3, batch_size=8, checkpoint_every=3))
    policy = LastR1Policy.from_pretrained(final)
    assert (
        policy.config.proprio_dim == 8 and policy.config.image_size == SIZE and policy.config.num_views == 2
    )


# -- LeRobot v2.1 -----------------------------------------------------------------------------------
LEROBOT_TASKS = [
    SPATIAL[0].instruction.upper(),  # matching is case-insensitive
    SPATIAL[1].instruction,
    OBJECT[0].instruction,  # another suite: skipped when suite=libero_spatial
    "wave at the camera",  # no LIBERO task: kept as a slug, with a warning
]
LEROBOT_EPISODES = [(0, 6), (1, 5), (0, 4), (2, 5), (3, 4)]  # (task_index, length) per episode


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _write_lerobot(root, version="v2.1", video=False):
    """A LeRobot dataset like physical-intelligence/libero's layout, 16 px, 5 episodes, 4 tasks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_feature = {"dtype": "video" if video else "image", "shape": [SIZE, SIZE, 3], "names": None}
    info = {
        "codebase_version": version,
        "fps": 10,
        "chunks_size": 1000,
        "total_episodes": len(LEROBOT_EPISODES),
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        if video
        else None,
        "features": {
            "image": image_feature,
            "wrist_image": {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": None},
            "state": {"dtype": "float32", "shape": [8], "names": None},
            "actions": {"dtype": "float32", "shape": [7], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    lines = [json.dumps({"task_index": i, "task": t}) for i, t in enumerate(LEROBOT_TASKS)]
    (root / "meta/tasks.jsonl").write_text("\n".join(lines) + "\n")
    lines = [
        json.dumps({"episode_index": e, "tasks": [LEROBOT_TASKS[k]], "length": t})
        for e, (k, t) in enumerate(LEROBOT_EPISODES)
    ]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    raw = {}
    for e, (k, t) in enumerate(LEROBOT_EPISODES):
        rng = np.random.default_rng(e)
        agent, wrist = _pattern(t, e), _pattern(t, 50 + e)
        state = rng.normal(size=(t, 8)).astype(np.float32)
        actions = rng.uniform(-1, 1, (t, 7)).astype(np.float32)
        columns = {
            "wrist_image": [{"bytes": _png(f), "path": None} for f in wrist],
            "state": state.tolist(),
            "actions": actions.tolist(),
            "task_index": [k] * t,
            "episode_index": [e] * t,
            "frame_index": list(range(t)),
        }
        if video:
            import imageio.v2 as imageio

            agent = np.zeros((t, SIZE, SIZE, 3), np.uint8)
            agent[:, : SIZE // 2] = 220  # bright top half survives lossy coding
            path = root / f"videos/chunk-000/image/episode_{e:06d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            imageio.mimwrite(path, list(agent), fps=10, macro_block_size=1)
        else:
            columns["image"] = [{"bytes": _png(f), "path": None} for f in agent]
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        raw[e] = {"agent": agent, "wrist": wrist, "state": state, "actions": actions}
    return raw


def test_lerobot_maps_tasks_and_keeps_images_upright(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    root = tmp_path / "lerobot"
    raw = _write_lerobot(root)
    with pytest.warns(UserWarning, match="'wave at the camera' matches no LIBERO task"):
        code, out = _run(
            tmp_path, format="lerobot", path=str(root), suite="libero_spatial", episodes_per_task=2
        )
    assert code == 1  # the slug task has one episode, not two
    ds = load_dataset(out)
    got = [(ep.task, ep.init_index) for ep in ds]
    assert got == [
        (SPATIAL[0].name, 0),
        (SPATIAL[0].name, 2),
        (SPATIAL[1].name, 1),
        ("wave_at_the_camera", 4),
    ]
    assert ds.meta["suite"] == "mixed" and ds.tasks[-1]["suite"] == "unknown"
    for ep in ds:
        src = raw[ep.init_index]
        np.testing.assert_array_equal(ep.images[:, 0], src["agent"])  # LeRobot images are upright already
        np.testing.assert_array_equal(ep.proprio, src["state"])
        np.testing.assert_array_equal(ep.actions, src["actions"])
    assert ds.tasks[0]["instruction"] == SPATIAL[0].instruction  # the env's wording, not the upper-case one
    assert "skipped 1 episodes of 1 tasks outside suite 'libero_spatial'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:instruction 'wave at the camera'")
def test_lerobot_wrist_and_video(tmp_path):
    pytest.importorskip("pyarrow")
    root = tmp_path / "lerobot_video"
    raw = _write_lerobot(root, video=True)
    code, out = _run(tmp_path, format="lerobot", path=str(root), tasks=[SPATIAL[1].name], wrist_view=True)
    assert code == 0
    (ep,) = list(load_dataset(out))
    assert ep.init_index == 1 and ep.images.shape == (5, 2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(ep.images[:, 1], raw[1]["wrist"])
    frames = ep.images[:, 0].astype(int)  # decoded mp4: lossy, but the bright half stays on top
    assert frames[:, : SIZE // 2 - 2].mean() > 180 and frames[:, SIZE // 2 + 2 :].mean() < 40


@pytest.mark.filterwarnings("ignore:instruction 'wave at the camera'")
def test_lerobot_errors(tmp_path):
    pytest.importorskip("pyarrow")
    root = tmp_path / "v3"
    _write_lerobot(root, version="v3.0")
    with pytest.raises(ValueError, match=r"codebase_version='v3.0' is not supported; only LeRobot v2.x"):
        _run(tmp_path, format="lerobot", path=str(root))
    root = tmp_path / "v21"
    _write_lerobot(root)
    with pytest.raises(ValueError, match=r"state_key='observation.state' is not a feature"):
        _run(tmp_path, format="lerobot", path=str(root), state_key="observation.state")
    with pytest.raises(ValueError, match="looks like a LeRobot dataset: use format=lerobot"):
        _run(tmp_path, format="libero_hdf5", path=str(root))
    (root / "data/chunk-000/episode_000001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="episode_000001.parquet is missing"):
        _run(tmp_path, format="lerobot", path=str(root), suite="libero_spatial", tasks=[SPATIAL[1].name])
