"""``lastr1 report --run runs/x/rl``: rebuild ``report.md`` for any RL run directory.

Reads what the run wrote (``metrics.jsonl``, ``evals/eval_*.json``, ``config.yaml``): the learning
curve, latent length per task, the first and last evaluation as before/after, video links, and the
measured cost per iteration. Works on a run that is still going or was killed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lastr1.eval.evaluate import eval_files
from lastr1.eval.report import write_run_report

ALIASES = {"run": "run"}


@dataclass
class Config:
    run: str = ""  # an RL run directory (the `out` of `lastr1 rl`)


def run(cfg: Config) -> int:
    if not cfg.run:
        raise ValueError("run: pass the RL run directory (--run runs/rl), the `out` of `lastr1 rl`")
    rl = Path(cfg.run)
    if not (rl / "metrics.jsonl").is_file():
        raise ValueError(f"run={cfg.run!r} has no metrics.jsonl: is it the `out` directory of `lastr1 rl`?")
    evals = eval_files(rl)
    if not evals:
        raise ValueError(f"run={cfg.run!r} has no evaluation yet (evals/eval_*.json); run `lastr1 rl` longer")
    algo = "rl"
    if (rl / "config.yaml").is_file():
        algo = (yaml.safe_load((rl / "config.yaml").read_text()) or {}).get("algo", {}).get("name", algo)
    before, after = (json.loads(p.read_text()) for p in (evals[0], evals[-1]))
    path = write_run_report(rl, before, after, {}, algo, rl=rl, title=str(rl))
    print(f"report: {path} (before = {evals[0].name}, after = {evals[-1].name})")
    return 0
