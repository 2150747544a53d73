"""Compute latent targets for a whole demo dataset once and cache them next to the demos.

Layout (``cache_root`` is usually ``<dataset>/latent_targets``)::

    cache_root/<teacher>-<raw-hash>/config.json              teacher fields that shaped the features
    cache_root/<teacher>-<raw-hash>/features/<episode>.npz   raw per-frame features (T, raw_dim)
    cache_root/<teacher>-<raw-hash>/transform-<hash>.npz     fitted standardisation / reduction

Only per-frame features are stored: the (T, k_max, dim) targets are a gather (``latent_targets``)
done on load, so Δ and k_max can change freely. The raw hash covers only the fields that change the
frozen model's output; the transform (fit over all episodes) has its own hash, so changing the
reduction refits in a second without re-running DINOv2. Each episode file records a fingerprint of
its demo (proprio bytes, image shape, first/last frame) so a re-recorded demo is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lastr1.models.teachers import Teacher, TeacherConfig, latent_targets, make_teacher
from lastr1.models.teachers.base import RunningStats, TargetTransform, config_hash

CACHE_FOLDER = "latent_targets"
FORMAT_VERSION = 1
EpisodeArrays = tuple[Any, Any, Any, Any]  # (episode_id, images, proprio, privileged)


def cache_dir_for(cache_root: str | Path, cfg: TeacherConfig) -> Path:
    """Folder holding the features of this teacher config under ``cache_root``."""
    key = {"format": FORMAT_VERSION, **cfg.raw_key()}
    return Path(cache_root) / f"{cfg.name}-{config_hash(key)}"


def episode_key(episode_id: Any) -> str:
    """File stem for an episode id: ints → episode_000042, strings sanitised."""
    if isinstance(episode_id, int | np.integer):
        return f"episode_{int(episode_id):06d}"
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(episode_id)).strip("._")
    if not text:
        raise ValueError(f"episode id {episode_id!r} gives an empty file name; use an int or a plain string")
    return text


def episode_fingerprint(images: Any, proprio: Any, privileged: Any) -> str:
    """Cheap identity of a demo: shapes, full proprio/privileged bytes, first and last image."""
    digest = hashlib.sha1()
    for name, arr in (("proprio", proprio), ("privileged", privileged)):
        if arr is not None:
            a = np.ascontiguousarray(np.asarray(arr))
            digest.update(f"{name}{a.shape}{a.dtype}".encode())
            digest.update(a.tobytes())
    if images is not None:
        digest.update(f"images{tuple(images.shape)}".encode())
        if len(images):
            digest.update(np.ascontiguousarray(np.asarray(images[0])).tobytes())
            digest.update(np.ascontiguousarray(np.asarray(images[-1])).tobytes())
    return digest.hexdigest()[:20]


@dataclass
class LatentTargetCache:
    """Handle on a filled cache: per-frame features and (T, k_max, dim) targets per episode."""

    directory: Path
    cfg: TeacherConfig
    transform: TargetTransform
    episode_ids: list[Any]
    computed: list[Any] = field(default_factory=list)  # episodes whose features were (re)computed
    reused: list[Any] = field(default_factory=list)  # episodes read back from the cache

    @property
    def dim(self) -> int:
        return self.transform.dim

    def raw_features(self, episode_id: Any) -> np.ndarray:
        path = self.directory / "features" / f"{episode_key(episode_id)}.npz"
        if not path.is_file():
            raise ValueError(
                f"episode {episode_id!r} has no cached features at {path}; run compute_latent_targets"
            )
        with np.load(path) as data:
            return np.asarray(data["features"], dtype=np.float32)

    def frame_features(self, episode_id: Any) -> np.ndarray:
        """(T, dim) transformed per-frame features of one episode."""
        return self.transform(self.raw_features(episode_id))

    def targets(self, episode_id: Any, k_max: int | None = None, stride: int | None = None) -> np.ndarray:
        """(T, k_max, dim): slot k of step t = features of frame min(t + k·stride, T - 1)."""
        return latent_targets(
            self.frame_features(episode_id),
            self.cfg.k_max if k_max is None else k_max,
            self.cfg.stride if stride is None else stride,
        )

    def all_frame_features(self) -> dict[Any, np.ndarray]:
        return {ep: self.frame_features(ep) for ep in self.episode_ids}


def compute_latent_targets(
    episodes: Iterable[EpisodeArrays],
    cache_root: str | Path,
    cfg: TeacherConfig,
    teacher: Teacher | None = None,
    teacher_factory: Callable[[TeacherConfig], Teacher] = make_teacher,
    progress: bool = True,
) -> LatentTargetCache:
    """Fill (or reuse) the cache for ``episodes`` and fit the dataset transform.

    ``episodes`` yields ``(episode_id, images, proprio, privileged)``; images may be lazy
    (h5py datasets, memmaps): they are only read in full when an episode must be computed. The
    teacher is built on first need, so a warm cache never loads the vision model.
    """
    cfg.validate()
    directory = cache_dir_for(cache_root, cfg)
    features_dir = directory / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    _write_json(directory / "config.json", {"format": FORMAT_VERSION, "raw_key": cfg.raw_key()})
    total = len(episodes) if hasattr(episodes, "__len__") else None  # type: ignore[arg-type]
    ids: list[Any] = []
    fingerprints: list[str] = []
    computed: list[Any] = []
    reused: list[Any] = []
    stats = RunningStats()
    seen: set[str] = set()
    bar = tqdm(episodes, total=total, desc=f"latent targets [{cfg.name}]", disable=not progress, unit="ep")
    for item in bar:
        if len(item) != 4:
            raise ValueError("each episode must be a tuple (episode_id, images, proprio, privileged)")
        episode_id, images, proprio, privileged = item
        key = episode_key(episode_id)
        if key in seen:
            raise ValueError(
                f"episode id {episode_id!r} appears twice (file stem {key!r}); ids must be unique"
            )
        seen.add(key)
        fingerprint = episode_fingerprint(images, proprio, privileged)
        feats = _read_cached(features_dir / f"{key}.npz", fingerprint)
        if feats is None:
            if teacher is None:
                teacher = teacher_factory(cfg)
            feats = np.asarray(teacher.encode_frames(images, proprio, privileged), dtype=np.float32)
            _check_frames(feats, episode_id, images, proprio)
            _atomic_savez(features_dir / f"{key}.npz", features=feats, fingerprint=np.asarray(fingerprint))
            computed.append(episode_id)
        else:
            reused.append(episode_id)
        stats.update(feats)
        ids.append(episode_id)
        fingerprints.append(fingerprint)
    if not ids:
        raise ValueError("compute_latent_targets got no episodes; check the dataset path / iterable")
    transform = _fit_or_load_transform(directory, cfg, stats, ids, fingerprints)
    return LatentTargetCache(directory, cfg, transform, ids, computed, reused)


def load_latent_targets(cache_root: str | Path, cfg: TeacherConfig) -> LatentTargetCache:
    """Open an existing cache without the demos (e.g. in the SFT data loader)."""
    directory = cache_dir_for(cache_root, cfg)
    index_path = directory / "transforms.json"
    if not index_path.is_file():
        raise ValueError(
            f"no latent-target cache for teacher {cfg.name!r} at {directory}; run compute_latent_targets first"
        )
    index = json.loads(index_path.read_text())
    key = config_hash(cfg.transform_key())
    if key not in index:
        raise ValueError(
            f"the cache at {directory} has no transform for this reduction/normalisation config; "
            "run compute_latent_targets with it once"
        )
    entry = index[key]
    with np.load(directory / entry["file"]) as data:
        transform = TargetTransform.from_arrays(data)
    return LatentTargetCache(directory, cfg, transform, list(entry["episode_ids"]))


def compute_dataset_latent_targets(
    dataset_dir: str | Path, cfg: TeacherConfig, progress: bool = True, cache_root: str | Path | None = None
) -> LatentTargetCache:
    """Adapter for the on-disk demo format of :mod:`lastr1.data.episodes`: caches under
    ``<cache_root or dataset_dir>/latent_targets`` (``cache_root`` for a read-only dataset);
    episode ids are the episode files' numbers."""
    from lastr1.data.episodes import load_dataset

    root = Path(cache_root) if cache_root is not None else Path(dataset_dir)
    return compute_latent_targets(
        _DatasetArrays(load_dataset(dataset_dir)), root / CACHE_FOLDER, cfg, progress=progress
    )


def load_dataset_latent_targets(dataset_dir: str | Path, cfg: TeacherConfig) -> LatentTargetCache:
    """Open the cache that :func:`compute_dataset_latent_targets` filled for this dataset."""
    return load_latent_targets(Path(dataset_dir) / CACHE_FOLDER, cfg)


class _DatasetArrays:
    """Sized iterable of (episode_id, images, proprio, privileged) over a lastr1 Dataset."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[EpisodeArrays]:
        records = self.dataset.meta.get("episodes", [])
        for index in range(len(self.dataset)):
            stem = Path(str(records[index].get("file", index))).stem if index < len(records) else str(index)
            episode = self.dataset[index]
            yield int(stem) if stem.isdigit() else stem, episode.images, episode.proprio, episode.privileged


def _fit_or_load_transform(
    directory: Path, cfg: TeacherConfig, stats: RunningStats, ids: list[Any], fingerprints: list[str]
) -> TargetTransform:
    """Reuse the stored transform when neither its config nor the set of demos changed."""
    key = config_hash(cfg.transform_key())
    data_hash = config_hash({"episodes": [episode_key(i) for i in ids], "fingerprints": fingerprints})
    index_path = directory / "transforms.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    entry = index.get(key)
    path = directory / f"transform-{key}.npz"
    if entry is not None and entry.get("data_hash") == data_hash and path.is_file():
        with np.load(path) as data:
            return TargetTransform.from_arrays(data)
    transform = TargetTransform.fit(cfg, stats)
    _atomic_savez(path, **transform.to_arrays())
    index[key] = {
        "file": path.name,
        "data_hash": data_hash,
        "transform_key": cfg.transform_key(),
        "episode_ids": [i.item() if isinstance(i, np.generic) else i for i in ids],
    }
    _write_json(index_path, index)
    return transform


def _read_cached(path: Path, fingerprint: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            return np.asarray(data["features"], dtype=np.float32)
    except (OSError, ValueError, KeyError):
        return None  # a truncated or foreign file: recompute it


def _check_frames(feats: np.ndarray, episode_id: Any, images: Any, proprio: Any) -> None:
    ref = images if images is not None else proprio
    if feats.ndim != 2 or (ref is not None and feats.shape[0] != len(ref)):
        raise ValueError(
            f"teacher returned features of shape {feats.shape} for episode {episode_id!r} "
            f"with {None if ref is None else len(ref)} frames; expected (T, dim)"
        )


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
