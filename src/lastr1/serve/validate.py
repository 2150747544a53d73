"""Request validation: an openpi-style observation dict -> our :class:`Observation`, or a one-line error.

Why strict: a robot-side bug (a resized camera, a state vector in the wrong units, a NaN from a
dropped sensor) must come back as a message naming the field, not as a silently wrong action.
Keys follow openpi's LIBERO convention:

* ``observation/image``: uint8 ``(H, W, 3)``, H = W = the checkpoint's image size (view 0);
* ``observation/wrist_image``: the same, only for checkpoints trained with a wrist view (view 1);
* ``observation/state``: float ``(P,)``, finite, P = the checkpoint's state width (proprio);
* ``prompt``: the instruction, a non-empty string.

Other keys are ignored (clients send extras), except ``lastr1/stop_index``, an optional integer that
keeps an earlier stop decision (``decode.stop_scope=episode``; the evaluator's adapter sends it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lastr1.envs.base import Observation

IMAGE_KEY = "observation/image"
WRIST_KEY = "observation/wrist_image"
STATE_KEY = "observation/state"
PROMPT_KEY = "prompt"
STOP_KEY = "lastr1/stop_index"
MAX_PROMPT_CHARS = 1000


class RequestError(ValueError):
    """A request the server refuses; ``str()`` is the one-line reply naming the field."""


@dataclass(frozen=True)
class ObservationSpec:
    """What one request must carry, read from the checkpoint's architecture config."""

    image_size: int
    num_views: int
    state_dim: int  # 0 when the policy ignores proprio (the state is then optional)
    num_stop_candidates: int

    @property
    def image_keys(self) -> list[str]:
        return [IMAGE_KEY, WRIST_KEY][: self.num_views]

    @property
    def required_keys(self) -> list[str]:
        return [*self.image_keys, *([STATE_KEY] if self.state_dim else []), PROMPT_KEY]


@dataclass
class Request:
    """A validated request: a one-row observation and an optional kept stop decision."""

    obs: Observation
    keep_stop: int | None = None


def _image(msg: dict[str, Any], key: str, size: int) -> np.ndarray:
    img = msg[key]
    if not isinstance(img, np.ndarray):
        raise RequestError(f"{key}: expected a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise RequestError(f"{key}: dtype must be uint8, got {img.dtype}")
    if img.shape != (size, size, 3):
        raise RequestError(
            f"{key}: shape must be ({size}, {size}, 3) (the checkpoint's image size, HWC), got {img.shape}; "
            "resize on the robot side, e.g. openpi_client.image_tools.resize_with_pad"
        )
    return img


def _state(value: Any, dim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{STATE_KEY}: expected a numpy array, got {type(value).__name__}")
    if value.dtype.kind != "f":
        raise RequestError(f"{STATE_KEY}: dtype must be a float type, got {value.dtype}")
    if value.shape != (dim,):
        raise RequestError(f"{STATE_KEY}: shape must be ({dim},), got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise RequestError(f"{STATE_KEY}: contains NaN or inf")
    return value.astype(np.float32)


def validate_request(msg: Any, spec: ObservationSpec) -> Request:
    """Check every field of ``msg`` against ``spec``; raise :class:`RequestError` naming the first bad one."""
    if not isinstance(msg, dict):
        raise RequestError(f"request must be a map of observation keys, got {type(msg).__name__}")
    missing = [k for k in spec.required_keys if k not in msg]
    if missing:
        raise RequestError(f"{missing[0]}: missing (required keys: {', '.join(spec.required_keys)})")
    images = np.stack([_image(msg, k, spec.image_size) for k in spec.image_keys])[None]
    if spec.state_dim:
        proprio = _state(msg[STATE_KEY], spec.state_dim)[None]
    else:
        if STATE_KEY in msg:
            _state(msg[STATE_KEY], int(np.size(msg[STATE_KEY])))  # still finite and numeric
        proprio = np.zeros((1, 0), dtype=np.float32)
    prompt = msg[PROMPT_KEY]
    if isinstance(prompt, np.ndarray) and prompt.shape == ():
        prompt = prompt.item()
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(f"{PROMPT_KEY}: must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"{PROMPT_KEY}: longer than {MAX_PROMPT_CHARS} characters")
    keep = msg.get(STOP_KEY)
    if keep is not None:
        if isinstance(keep, np.generic):
            keep = keep.item()
        if (
            not isinstance(keep, int)
            or isinstance(keep, bool)
            or not 0 <= keep < max(spec.num_stop_candidates, 1)
        ):
            raise RequestError(
                f"{STOP_KEY}: must be an integer in [0, {max(spec.num_stop_candidates, 1)}) or absent"
            )
    obs = Observation(
        images=images,
        proprio=proprio,
        instruction=[prompt],
        privileged=np.zeros((1, 0), dtype=np.float32),
        task=np.zeros(1, dtype=np.int64),
    )
    return Request(obs, keep)
