"""Rollout videos (mp4 through imageio's bundled ffmpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write uint8 HxWx3 frames to an mp4; small frames are upscaled so players show them."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // max(1, frames[0].shape[0]))
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            f = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1) if scale > 1 else frame
            writer.append_data(np.ascontiguousarray(f))
    return path
