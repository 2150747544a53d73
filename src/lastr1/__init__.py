"""lastr1: LaST-R1 latent-reasoning VLA policies and LAPO RL post-training."""

__version__ = "0.1.0"
