"""Report helpers that read runs back from metrics.jsonl (hand-made files, no simulator)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lastr1.eval.report import plot_task_lengths, task_length_curves


def _write_run(run: Path, lengths: list[dict[str, float]]) -> Path:
    run.mkdir(parents=True)
    rows = [{"step": 0, "eval_success": 0.5}]  # an eval-only row: not an iteration
    rows += [
        {"step": i + 1, "train_success": 0.5, **{f"latent_len/{t}": v for t, v in per_task.items()}}
        for i, per_task in enumerate(lengths)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_task_length_curves_align_seeds_per_task(tmp_path: Path) -> None:
    a = _write_run(
        tmp_path / "s0", [{"reach": 5.0, "drawer": 4.0}, {"reach": 3.0, "drawer": 4.5}, {"reach": 2.0}]
    )
    b = _write_run(tmp_path / "s1", [{"reach": 6.0, "drawer": 5.0}, {"reach": 2.0, "drawer": 6.0}])
    curves = task_length_curves([a, b])
    assert sorted(curves) == ["drawer", "reach"]
    # cut to the shorter run (2 iterations), one list per run, iteration order kept
    assert curves["reach"] == [[5.0, 3.0], [6.0, 2.0]]
    assert curves["drawer"] == [[4.0, 4.5], [5.0, 6.0]]
    c = _write_run(tmp_path / "s2", [{"reach": 4.0}, {"reach": 4.0}])  # a task it never logged is nan
    assert math.isnan(task_length_curves([a, c])["drawer"][1][0])
    assert task_length_curves([]) == {}


def test_task_length_curves_prefer_per_episode_lengths(tmp_path: Path) -> None:
    run = tmp_path / "s0"
    run.mkdir()
    rows = [
        {"step": 1, "train_success": 0.5, "latent_len/reach": 6.5, "episode_latent_len/reach": 5.0},
        {"step": 2, "train_success": 0.5, "latent_len/reach": 7.0, "episode_latent_len/reach": 4.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # per-episode means where logged; the per-decision key is not read as another task
    assert task_length_curves([run]) == {"reach": [[5.0, 4.0]]}


def test_plot_task_lengths_writes_one_panel_per_group(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "lapo0", [{"reach": 5.0}, {"reach": 3.0}])
    b = _write_run(tmp_path / "ppo0", [{"reach": 5.0}, {"reach": 5.0}])
    path = plot_task_lengths({"lapo": [a], "ppo_action": [b]}, tmp_path / "lengths.png")
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
