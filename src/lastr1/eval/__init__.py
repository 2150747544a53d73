"""Evaluation (per-task success with confidence intervals, videos) and run reports."""
