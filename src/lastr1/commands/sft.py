"""``lastr1 sft``: one-shot SFT warm-up on a demo dataset (see :mod:`lastr1.train.sft`)."""

from __future__ import annotations

from lastr1.train.sft import SFTConfig as Config
from lastr1.train.sft import train_sft

ALIASES = {"data_dir": "data"}
SECTION = "sft"  # its section in the presets


def run(cfg: Config) -> int:
    final = train_sft(cfg)
    print(f"SFT done: policy saved to {final}")
    return 0
