"""LaST0, the dual-system predecessor of LaST-R1, as ``policy.family=last0`` (docs/last0.md).

| module | its one job |
|---|---|
| ``config.py`` | ``Last0Config``: keyframes, κ (``reason_every``), Euler steps, acting attention |
| ``layout.py`` | the token layout and the joint attention mask (reasoning never sees acting) |
| ``mot.py`` | the Mixture-of-Transformers: per-expert weights, one joint attention |
| ``flow.py`` | flow-matching time sampling, interpolation, loss, Euler integration |
| ``encoders.py`` | one conv stack, slow (reasoning) and fast (acting) image readouts |
| ``policy.py`` | ``Last0Policy``: ``act`` with κ-cached reasoning, ``sft_outputs``, save/load |
| ``qwen3_vl_mot.py`` | ``Qwen3VLMoT``: the loaded Qwen3-VL decoder layers wrapped as the two-expert MoT |
| ``qwen3_vl_parts.py`` | the Qwen3-VL backbone, encoder and fast image tokens of ``Last0Policy`` |

Only the config is imported here: :mod:`lastr1.models.policy` imports it, and the policy module
imports that one (import ``Last0Policy`` from :mod:`lastr1.models.last0.policy`).
"""

from lastr1.models.last0.config import Last0Config

__all__ = ["Last0Config"]
