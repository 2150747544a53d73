"""How a policy turns its distributions into a decision: sampling temperatures, the stop rule, probes.

Why a separate config: none of these settings changes a weight, so they do not belong in the
architecture config a checkpoint's weights are read with (openpi keeps sampling settings outside the
model the same way). The same weights are decoded one way in RL rollouts (sampled, T 1.6 in the
reference), another in evaluation (greedy, the 0.99 stop threshold), and with probes (a forced
reasoning length) in ablations. A policy carries a default ``DecodeConfig`` (``decode.json`` beside
its weights, written by the run that trained it); ``act(..., decode=...)`` overrides it per call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

DECODE_FILE = "decode.json"


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; defaults are the LaST-R1 reference values."""

    # sampling temperature of the action tokens (``act(mode="sample")``; greedy ignores it)
    action_temperature: float = 1.6
    # sampling temperature of the stop categorical over the candidate lengths
    stop_temperature: float = 1.6
    # Gaussian noise on fed-back latents when sampling (reference: 0)
    latent_noise_std: float = 0.0
    # "decision" (reference): the stop is chosen at every action chunk. "episode": chosen at an
    # episode's first decision and kept (the collector passes it back), so one stop decision sets the
    # whole episode's reasoning length and RL credits it with the whole outcome
    stop_scope: Literal["decision", "episode"] = "decision"
    # greedy stop rule. "threshold" (reference): the first candidate whose hazard
    # p_j / sum_{i>=j} p_i reaches eval_stop_threshold, else the argmax. "mean": the candidate
    # nearest the distribution's expected length, which moves smoothly with the weights instead of
    # jumping between near-tied candidates (docs/rl.md, "Guarding the greedy stop")
    greedy_stop: Literal["threshold", "mean"] = "threshold"
    eval_stop_threshold: float = 0.99
    # probe: a fixed reasoning length instead of the stop decision (0 = the stop decides)
    force_latent_len: int = 0
    # greedy action decode: the argmax bin (reference) or the bin nearest the distribution's mean
    greedy_actions: Literal["argmax", "bin_mean"] = "argmax"

    def __post_init__(self) -> None:
        checks = [
            (self.action_temperature > 0, f"action_temperature={self.action_temperature} must be > 0"),
            (self.stop_temperature > 0, f"stop_temperature={self.stop_temperature} must be > 0"),
            (self.latent_noise_std >= 0, f"latent_noise_std={self.latent_noise_std} must be >= 0"),
            (
                self.stop_scope in ("decision", "episode"),
                f"stop_scope={self.stop_scope!r} must be 'decision' (reference) or 'episode'",
            ),
            (
                self.greedy_stop in ("threshold", "mean"),
                f"greedy_stop={self.greedy_stop!r} must be 'threshold' (reference) or 'mean'",
            ),
            (
                0 < self.eval_stop_threshold <= 1,
                f"eval_stop_threshold={self.eval_stop_threshold} must be in (0, 1]",
            ),
            (self.force_latent_len >= 0, f"force_latent_len={self.force_latent_len} must be >= 0"),
            (
                self.greedy_actions in ("argmax", "bin_mean"),
                f"greedy_actions={self.greedy_actions!r} must be 'argmax' or 'bin_mean'",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"decode.{msg}")

    def check_for(self, k_max: int, latent_group: int) -> None:
        """Refuse a forced length the policy's stop could not choose."""
        n = self.force_latent_len
        if n and not (n <= k_max and n % latent_group == 0):
            raise ValueError(
                f"decode.force_latent_len={n} must be 0 (the stop decides) or a reasoning length the stop "
                f"could choose: a multiple of latent_group={latent_group} up to k_max={k_max}"
            )


DECODE_KEYS = frozenset(f.name for f in fields(DecodeConfig))


def split_legacy_config(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``config.json`` written before decoding settings left the architecture config: its
    architecture keys, and its decoding keys (which become the policy's default decode)."""
    arch = {k: v for k, v in data.items() if k not in DECODE_KEYS}
    decode = {k: v for k, v in data.items() if k in DECODE_KEYS}
    return arch, decode


def with_overrides(base: DecodeConfig, overrides: list[str]) -> DecodeConfig:
    """``base`` (e.g. a checkpoint's own decode) with ``decode.key=value`` overrides on top; any
    other key is a :class:`~lastr1.config.ConfigError` naming the one form that applies here."""
    from dataclasses import asdict

    from lastr1.config import ConfigError, from_dict, parse_overrides

    over = parse_overrides(overrides)
    extra = over.pop("decode", {})
    if over or not isinstance(extra, dict):
        raise ConfigError(
            f"only decode.* overrides apply here (e.g. decode.stop_scope=episode), got {overrides}"
        )
    return from_dict(DecodeConfig, {**asdict(base), **extra}, prefix="decode")
