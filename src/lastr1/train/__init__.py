"""Training loops: one-shot SFT warm-up and RL post-training."""
