"""How much does the reasoning length move the action distribution? A direct read of the policy.

Why: success probes (``benchmarks/decoding_probe.py``) say whether a length changes the *outcome*,
but 30 episodes per row cannot tell "the actions ignore the length" from "they change, but not in
ways that matter". This measures the cause. For every stored decision, the action-token
distribution is re-scored teacher-forced on the same latents with each stop candidate, and compared
with the longest one:

* ``kl[L]``: mean over decisions and action tokens of ``KL(p_Lmax ‖ p_L)`` (nats per token);
* ``flip[L]``: the fraction of action tokens whose argmax differs from ``p_Lmax``'s;
* ``swap_kl``: ``KL(p_Lmax ‖ p_Lmax with another decision's latents)``, where the other decision is
  from the same task (the next one in rollout order): do the actions read what the latents say,
  or only that there are latents?

against a yardstick from the same rollouts, ``state_kl``: the same KL between *consecutive*
decisions of one episode at ``Lmax`` (one action chunk of progress). ``kl[L] / state_kl`` is then
"moving from length L to Lmax changes the actions this much, relative to what one chunk of robot
motion changes them".
"""

from __future__ import annotations

import torch

from lastr1.models.policy import LastR1Policy
from lastr1.models.policy_io import PolicyBatch
from lastr1.rollout.collector import Rollout


def _token_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q)`` per token from log-probs ``(B, tokens, bins)``, averaged over tokens: ``(B,)``."""
    logp, logq = logp.double(), logq.double()  # small KLs: float32 rounding would be of their size
    return (logp.exp() * (logp - logq)).sum(-1).mean(-1)


def _action_logp(
    policy: LastR1Policy, roll: Rollout, candidate: int, latents: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``(decisions, tokens, bins)`` action log-probs at temperature 1, teacher-forced on ``latents``."""
    out = roll.out
    rows = []
    for s in range(0, len(out), batch_size):
        part = out.index(slice(s, s + batch_size))
        m = len(part)
        batch = PolicyBatch(
            inputs=part.inputs,
            latents=latents[s : s + m],
            stop_index=torch.full((m,), candidate, dtype=torch.long),
            action_tokens=part.action_tokens,
            action_temperature=torch.ones(m),
            stop_temperature=torch.ones(m),
        )
        rows.append(policy.log_probs(batch).action_logp_all)
    return torch.cat(rows)


@torch.no_grad()
def action_logp_per_length(policy: LastR1Policy, roll: Rollout, batch_size: int = 256) -> torch.Tensor:
    """``(num_candidates, decisions, tokens, bins)`` action log-probs at temperature 1 for every
    stop candidate, teacher-forced on the rollout's stored latents (the chain is causal, so the
    first L latents of a K-step chain are exactly what a length-L decision reads)."""
    return torch.stack(
        [
            _action_logp(policy, roll, j, roll.out.latents, batch_size)
            for j in range(policy.layout.num_candidates)
        ]
    )


def _same_task_partner(task_of: torch.Tensor) -> torch.Tensor:
    """For each decision, the next decision of the same task in rollout order (cyclic)."""
    partner = torch.arange(len(task_of))
    for t in task_of.unique():
        rows = (task_of == t).nonzero().squeeze(1)
        partner[rows] = rows.roll(-1)
    return partner


@torch.no_grad()
def length_sensitivity(
    policy: LastR1Policy, roll: Rollout, num_tasks: int, batch_size: int = 256
) -> list[dict]:
    """Per task: ``kl`` and ``flip`` per candidate length (vs the longest), ``swap_kl``, ``state_kl``,
    ``decisions``."""
    if policy.layout.k_max == 0:
        raise ValueError("length_sensitivity needs a policy with latents (PolicyConfig.k_max > 0)")
    logp = action_logp_per_length(policy, roll, batch_size)
    longest = logp[-1]
    kl = torch.stack([_token_kl(longest, lp) for lp in logp])  # (candidates, decisions)
    flip = torch.stack([(lp.argmax(-1) != longest.argmax(-1)).float().mean(-1) for lp in logp])
    task_of = roll.flat(roll.task[:, None].expand_as(roll.mask))
    swapped = roll.out.latents[_same_task_partner(task_of)]
    swap_logp = _action_logp(policy, roll, policy.layout.num_candidates - 1, swapped, batch_size)
    swap_kl = _token_kl(longest, swap_logp)
    # consecutive decisions of one episode: rows index[n, t] and index[n, t + 1]
    both = roll.mask[:, :-1] & roll.mask[:, 1:]
    first, second = roll.index[:, :-1][both], roll.index[:, 1:][both]
    step_kl = _token_kl(longest[first], longest[second])
    step_task = task_of[first]
    lengths = policy.layout.candidate_lengths()
    rows = []
    for t in range(num_tasks):
        sel, step_sel = task_of == t, step_task == t
        rows.append(
            {
                "decisions": int(sel.sum()),
                "kl": {L: float(kl[j, sel].mean()) for j, L in enumerate(lengths)},
                "flip": {L: float(flip[j, sel].mean()) for j, L in enumerate(lengths)},
                "swap_kl": float(swap_kl[sel].mean()),
                "state_kl": float(step_kl[step_sel].mean()) if step_sel.any() else float("nan"),
                "state_pairs": int(step_sel.sum()),
            }
        )
    return rows
