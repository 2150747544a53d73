"""Demonstration datasets on disk (see ``docs/data_format.md``)."""

from lastr1.data.episodes import (
    FORMAT_VERSION,
    Dataset,
    Episode,
    load_dataset,
    read_episode,
    write_episode,
    write_meta,
)
from lastr1.data.stats import compute_statistics, load_statistics, write_statistics

__all__ = [
    "FORMAT_VERSION",
    "Dataset",
    "Episode",
    "compute_statistics",
    "load_dataset",
    "load_statistics",
    "read_episode",
    "write_episode",
    "write_meta",
    "write_statistics",
]
