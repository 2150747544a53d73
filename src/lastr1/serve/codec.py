"""The wire codec: msgpack with openpi's numpy extension, decoded defensively.

Why our own decoder rather than ``openpi_client.msgpack_numpy.unpackb``: a server must not trust
what a client declares. openpi's ``unpack_array`` builds ``np.ndarray(buffer=..., dtype=...)`` from
whatever dtype string arrives (object dtypes included) and lets numpy raise on a size mismatch. Here
the dtype must be a plain boolean/integer/float type named by a short type string, the shape a short
list of non-negative integers whose size matches the byte count exactly, and nothing is ever
unpickled. The encoding itself is byte-for-byte openpi's (``b"__ndarray__"``, ``b"data"``,
``b"dtype"``, ``b"shape"``; ``b"__npgeneric__"`` for numpy scalars), so openpi-client works as is.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack
import numpy as np

# "<f4", "|u1", "<i8", "|b1": byte order, kind (bool, int, uint, float), item size. Nothing else:
# no object ("O"), void/structured ("V", "[(...)]"), complex, string or datetime types.
_DTYPE_RE = re.compile(r"^[<>|=]?[biuf][1-8]$")
MAX_NDIM = 8


class DecodeError(ValueError):
    """A frame that is not a well-formed message; the text is one line naming what is wrong."""


def _encode_default(obj: Any) -> Any:
    """openpi's ``pack_array``: numpy arrays and scalars as tagged maps (refusing object dtypes)."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype {obj.dtype} (only numeric arrays travel)")
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """Encode a message the way openpi-client's ``msgpack_numpy.packb`` does."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str) or not _DTYPE_RE.match(raw):
        raise DecodeError(
            f"array dtype {str(raw)[:40]!r} is not allowed; send bool, int, uint or float arrays"
        )
    return np.dtype(raw)


def _decode_array(obj: dict[Any, Any]) -> np.ndarray:
    data, shape = obj.get(b"data"), obj.get(b"shape")
    dtype = _dtype(obj.get(b"dtype"))
    if not isinstance(data, bytes):
        raise DecodeError("array data must be raw bytes")
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) > MAX_NDIM
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise DecodeError(f"array shape must be a list of at most {MAX_NDIM} non-negative integers")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(data):
        raise DecodeError(
            f"array of shape {tuple(shape)} and dtype {dtype.str} needs {count * dtype.itemsize} bytes, "
            f"got {len(data)}"
        )
    # a writable copy: frombuffer views the frame, which is read-only and freed with it
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _decode_scalar(obj: dict[Any, Any]) -> np.generic:
    dtype = _dtype(obj.get(b"dtype"))
    value = obj.get(b"data")
    if isinstance(value, (dict, list, tuple, bytes, str)) or value is None:
        raise DecodeError("numpy scalar data must be a number")
    return dtype.type(value)


def _object_hook(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        return _decode_array(obj)
    if b"__npgeneric__" in obj:
        return _decode_scalar(obj)
    return obj


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")


def unpack(frame: bytes) -> Any:
    """Decode one binary frame; any malformed input raises :class:`DecodeError` with one line.

    The caller bounds the frame size before calling; msgpack's own limits then follow from it.
    """
    try:
        return msgpack.unpackb(
            frame, object_hook=_object_hook, ext_hook=_no_ext, raw=False, strict_map_key=True
        )
    except DecodeError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"frame is not a single msgpack message ({type(exc).__name__})") from None
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DecodeError(f"frame is not valid msgpack: {first}") from None
