"""LAPO: Latent-to-Action Policy Optimisation.

One clipped objective over the three things the policy decides per action chunk, all with the
same advantages ``A`` (GAE from the value head by default):

* action tokens: one ratio per decision ``r_a = Π_j π_new(a_j) / π_old(a_j)`` over its C·7 tokens
  (``algo.action_ratio="sequence"``, the reference), or one per token (``"token"``);
* the stop decision: ``r_e = π_new(stop = ℓ) / π_old(stop = ℓ)`` for the chosen candidate ℓ,
  under the same categorical it was sampled from (the reference uses the full-vocabulary logit);
  with ``algo.stop.advantage`` "gae_expected" or "return" its advantage uses a baseline that does not
  depend on ℓ (``OldTerms.stop_advantages``, :func:`lastr1.algos.advantages.stop_baseline_shift`);
* the latents: the stored rollout latents ``z`` are read as a Gaussian sample around the new
  latent mean ``μ`` with std ``σ``: ``r_z = exp(−Σ_k m_k ‖z_k − μ_k‖² / 2σ²)`` over the valid
  slots k. ``r_z ≤ 1``, so its upper clip never binds; with ``A > 0`` it pulls μ toward what was
  thought, with ``A < 0`` it pushes μ away.

Each ratio enters ``L(r) = max(−A·r, −A·clip(r, 1−ε_lo, 1+ε_hi))``, combined as

    L = w_a · (n·L_a + w_e·L_e) / (n + w_e) + w_z · L_z + c_v · L_value − c_H · H

with ``n = C·7`` action tokens (so the stop is one more "token", weighted ``w_e``; ``w_e = 0`` on
decisions that kept an earlier decision's stop, ``DecodeConfig.stop_scope="episode"``) and the clipped
value loss ``0.5·max((v − R)², (v_clip − R)²)``. Reference weights: w_a = w_e = 1, w_z = 0.1.
"""

from __future__ import annotations

import torch

from lastr1.algos.base import AlgoConfig, NewTerms, OldTerms
from lastr1.algos.losses import action_token_loss, clipped_surrogate, combine


def latent_log_ratio(
    latents: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor, sigma: float
) -> torch.Tensor:
    """``log r_z = −Σ_k m_k ‖z_k − μ_k‖² / 2σ²`` per decision, ``(B,)``."""
    sq = ((latents - mu) ** 2).sum(dim=-1) * mask.to(mu.dtype)
    return -sq.sum(dim=-1) / (2.0 * sigma**2)


class Lapo:
    name = "lapo"
    default_advantage = "gae"
    uses_value = True
    trains_reasoning = True

    def loss(self, new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> tuple[torch.Tensor, dict[str, float]]:
        adv = old.advantages
        l_action, metrics = action_token_loss(new, old, cfg)
        n = float(old.logp_action_tokens.shape[1])
        has_latents = old.latent_mask.numel() > 0 and bool(old.latent_mask.any())
        if has_latents:
            stop_adv = adv if old.stop_advantages is None else old.stop_advantages
            l_end, end_clipped = clipped_surrogate(
                new.logp_stop - old.logp_stop, stop_adv, cfg.clip_low, cfg.clip_high
            )
            # decisions that kept an earlier stop (stop_scope "episode") carry no stop term
            w_end = cfg.w_end if old.stop_mask is None else cfg.w_end * old.stop_mask.to(l_end.dtype)
            l_act_end = (n * l_action + w_end * l_end) / (n + w_end)
            z_log_ratio = latent_log_ratio(old.latents, new.latent_mu, old.latent_mask, cfg.latent_sigma)
            l_latent, latent_clipped = clipped_surrogate(z_log_ratio, adv, cfg.clip_low, cfg.clip_high)
            chose = end_clipped if old.stop_mask is None else end_clipped[old.stop_mask]
            metrics["stop_clip_frac"] = float(chose.float().mean()) if chose.numel() else 0.0
            metrics["clip_frac_stop"] = metrics["stop_clip_frac"]  # the per-part name (diagnostics)
            # decisions whose latent term sits on its clipped branch (no latent gradient there)
            metrics["clip_frac_latent"] = float(latent_clipped.float().mean())
            metrics["latent_ratio"] = float(torch.exp(z_log_ratio.detach()).mean())
        else:  # a policy without latents: LAPO degenerates to action PPO
            l_act_end = l_action
            l_latent = torch.zeros_like(l_action)
        policy = cfg.w_action * l_act_end.mean() + cfg.w_latent * l_latent.mean()
        return combine(policy, new, old, cfg, metrics, with_value=True)
