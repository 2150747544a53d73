"""Sequence layout, attention masks, stop choice and the cached decode loop of the LaST-R1 policy.

Layout (absolute positions, identical for every sample and every reasoning length)::

    [image tokens][instruction tokens (right-padded)][proprio][<latent_start>] | [z_1 .. z_K] | [C*7 action slots]
    0 ..................................................................Lp-1  | Lp .. Lp+K-1 | Lp+K ..

``z_k`` (the input embedding of latent slot k) is the final hidden state at the position before it:
``z_1`` is the hidden state at ``<latent_start>``, ``z_k`` the one at latent slot ``k-1``. The stop
candidates are read at the hidden states of slots ``g*group`` (``g = 1 .. K/group``), so the possible
reasoning lengths are ``{group, 2 group, .., K}``; the value is read at slot ``latent_len`` (or at
``<latent_start>`` when ``K = 0``).

Masks: prefix and latent queries attend causally (prefix padding is never a key). Action queries attend
to the valid prefix, to latent slots ``< latent_len`` only, and to all action slots (parallel decoding)
or to earlier ones (autoregressive). Every token may attend to itself, so no row is empty.

With ``latent_end`` (the reference's layout on Qwen3-VL) a ``<latent_end>`` token follows every
group of ``latent_group`` latents::

    [prefix][<latent_start>] | z_1 z_2 <latent_end> z_3 z_4 <latent_end> .. | [action slots]

The "chain" (hidden states at positions ``Lp-1 .. action_begin-1``) then has ``1 + K + K/group``
entries: the stop candidates are read at each group's last latent, the value at each group's
``<latent_end>``, and ``z_k`` is still the hidden state at the position before slot ``k`` (the
previous group's ``<latent_end>`` for a group's first latent). The action slots see whole groups:
a group's latents and its ``<latent_end>`` are visible iff the group is among the chosen ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lastr1.models.backbones import Backbone, KVCache


@dataclass(frozen=True)
class SequenceLayout:
    """Where each segment of the policy's token sequence lives."""

    n_prefix: int  # observation tokens + <latent_start> (the last prefix position)
    k_max: int
    n_actions: int
    latent_group: int
    latent_end: bool = False  # a <latent_end> token after every group (the reference layout)

    @property
    def n_reasoning(self) -> int:
        """Positions between ``<latent_start>`` and the action slots (latents and ``<latent_end>``s)."""
        return self.k_max + (self.num_candidates if self.latent_end else 0)

    @property
    def action_begin(self) -> int:
        return self.n_prefix + self.n_reasoning

    @property
    def total(self) -> int:
        return self.n_prefix + self.n_reasoning + self.n_actions

    @property
    def num_candidates(self) -> int:
        return self.k_max // self.latent_group if self.k_max else 0

    def candidate_lengths(self) -> list[int]:
        """Reasoning lengths the stop decision chooses between (empty when ``k_max == 0``)."""
        return [self.latent_group * (g + 1) for g in range(self.num_candidates)]

    def latent_len(self, stop_index: torch.Tensor) -> torch.Tensor:
        """Candidate index -> number of valid latents (0 when there are no latents)."""
        if self.k_max == 0:
            return torch.zeros_like(stop_index)
        return (stop_index + 1) * self.latent_group

    # chain indices: the chain holds the hidden states at positions n_prefix - 1 .. action_begin - 1

    def stop_rows(self) -> list[int]:
        """Chain index of each group's last latent (where its stop candidate is read)."""
        extra = 1 if self.latent_end else 0
        return [n * self.latent_group + (n - 1) * extra for n in range(1, self.num_candidates + 1)]

    def value_rows(self) -> list[int]:
        """Chain index of each candidate's value: its ``<latent_end>``, else its last latent."""
        return self.chain_rows(torch.tensor(self.candidate_lengths(), dtype=torch.long)).tolist()

    def chain_rows(self, latent_len: torch.Tensor) -> torch.Tensor:
        """Chain index of the value for a reasoning length (``<latent_start>`` for 0)."""
        if not self.latent_end:
            return latent_len
        return latent_len + torch.div(latent_len, self.latent_group, rounding_mode="floor")

    def mu_rows(self) -> list[int]:
        """Chain index of the position before each latent slot (the hidden state fed back as it)."""
        extra = 1 if self.latent_end else 0
        return [k + (k // self.latent_group) * extra for k in range(self.k_max)]


def attention_mask(
    layout: SequenceLayout,
    q_pos: torch.Tensor,
    k_len: int,
    prefix_valid: torch.Tensor,
    latent_len: torch.Tensor,
    causal_actions: bool,
) -> torch.Tensor:
    """Boolean mask ``(B, len(q_pos), k_len)`` for queries at ``q_pos`` over keys at ``0 .. k_len-1``."""
    dev = prefix_valid.device
    kpos = torch.arange(k_len, device=dev)
    q = q_pos.to(dev)
    causal = kpos[None, :] <= q[:, None]  # (Lq, K)
    key_valid = torch.ones(prefix_valid.shape[0], k_len, dtype=torch.bool, device=dev)
    n = min(k_len, layout.n_prefix)
    key_valid[:, :n] = prefix_valid[:, :n]
    base = causal[None] & key_valid[:, None, :]
    is_latent = (kpos >= layout.n_prefix) & (kpos < layout.action_begin)
    is_action = kpos >= layout.action_begin
    if layout.latent_end:  # a whole group (latents + <latent_end>) is visible iff it is chosen
        g = layout.latent_group
        group = torch.div(kpos - layout.n_prefix, g + 1, rounding_mode="floor")
        latent_ok = ((group + 1) * g)[None, :] <= latent_len.to(dev)[:, None]
    else:
        latent_ok = (kpos[None, :] - layout.n_prefix) < latent_len.to(dev)[:, None]  # (B, K)
    action_keys = causal if causal_actions else torch.ones_like(causal)
    action_rows = (
        (key_valid & ~is_latent[None] & ~is_action[None])[:, None, :]
        | (is_latent[None] & latent_ok)[:, None, :]
        | (is_action[None, None, :] & action_keys[None])
    )
    mask = torch.where((q >= layout.action_begin)[None, :, None], action_rows, base)
    return mask | (kpos[None, :] == q[:, None])[None]


class DecodeStream:
    """Feeds a growing sequence through the backbone, with or without a KV cache.

    Without the cache every ``feed`` recomputes the whole sequence so far (the baseline the latency
    benchmark compares against); both paths give the same hidden states up to float rounding.
    """

    def __init__(
        self,
        backbone: Backbone,
        layout: SequenceLayout,
        prefix_valid: torch.Tensor,
        causal_actions: bool,
        use_cache: bool = True,
    ) -> None:
        self.backbone = backbone
        self.layout = layout
        self.prefix_valid = prefix_valid
        self.causal_actions = causal_actions
        self.use_cache = use_cache
        self.cache: KVCache | None = None
        self.embeds: list[torch.Tensor] = []
        self.length = 0

    def feed(self, embeds: torch.Tensor, latent_len: torch.Tensor) -> torch.Tensor:
        """Append ``embeds`` ``(B, n, D)`` at the next positions; return their hidden states."""
        n = embeds.shape[1]
        dev = embeds.device
        if self.use_cache:
            pos = torch.arange(self.length, self.length + n, device=dev)
            mask = attention_mask(
                self.layout, pos, self.length + n, self.prefix_valid, latent_len, self.causal_actions
            )
            hidden, self.cache = self.backbone(embeds, pos, mask, self.cache)
        else:
            full = torch.cat([*self.embeds, embeds], dim=1)
            pos = torch.arange(self.length + n, device=dev)
            mask = attention_mask(
                self.layout, pos, self.length + n, self.prefix_valid, latent_len, self.causal_actions
            )
            hidden = self.backbone(full, pos, mask, None)[0][:, -n:]
            self.embeds.append(embeds)
        self.length += n
        return hidden


def choose_stop(
    logits: torch.Tensor,
    mode: str,
    temperature: float,
    threshold: float,
    generator: torch.Generator | None = None,
    greedy_rule: str = "threshold",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick a stop candidate per sample; return ``(index (B,), log-prob (B,))``.

    ``sample``: draw from ``softmax(logits / temperature)``. ``greedy``: the first candidate whose
    *hazard* -- the probability of stopping there given reasoning got there,
    ``p_j / Σ_{i≥j} p_i`` under ``softmax(logits / temperature)`` -- reaches ``threshold`` (the
    analogue of the reference's per-position ``p(<latent_end>)``), else the argmax. The last
    candidate's hazard is always 1, so it only wins through the argmax. Both rules read only the
    categorical that sampling and the PPO ratio use, so they are invariant to a shift of all logits:
    RL, which trains that categorical, cannot move the greedy stop through a drift it never sees.
    ``greedy_rule="mean"`` instead takes the candidate nearest the expected index (candidates are
    evenly spaced lengths): a near-tie between distant candidates, which an update of the shared
    trunk can flip, moves it by at most one step instead of across the range.
    The log-prob is always taken from that categorical (the caller passes temperature 1 for greedy).
    """
    logp_all = F.log_softmax(logits / temperature, dim=-1)
    if mode == "sample":
        index = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
    elif greedy_rule == "mean":
        positions = torch.arange(logits.shape[-1], dtype=logp_all.dtype, device=logits.device)
        index = (logp_all.exp() @ positions).round().long()
    else:
        # log Σ_{i≥j} p_i by a reversed log-cumsum-exp
        tail = torch.logcumsumexp(logp_all.flip(-1), dim=-1).flip(-1)
        hit = (logp_all - tail).exp() >= threshold
        hit[..., -1] = False
        first = hit.int().argmax(dim=-1)  # argmax returns the first maximal index
        index = torch.where(hit.any(dim=-1), first, logits.argmax(dim=-1))
    return index, logp_all.gather(1, index[:, None]).squeeze(1)


def sample_tokens(
    logits: torch.Tensor, mode: str, temperature: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per position from ``softmax(logits / temperature)``; return tokens and log-probs.

    ``sample`` draws, ``greedy`` takes the argmax, ``mean`` the bin nearest the distribution's mean
    index. Action bins are ordered values, so the mean is a deterministic decode that, unlike the
    argmax of a broad distribution, does not jump between distant near-tied bins.
    """
    logp_all = F.log_softmax(logits / temperature, dim=-1)
    if mode == "sample":
        flat = logp_all.reshape(-1, logp_all.shape[-1]).exp()
        tokens = torch.multinomial(flat, 1, generator=generator).view(logits.shape[:-1])
    elif mode == "mean":
        bins = torch.arange(logits.shape[-1], device=logits.device, dtype=logp_all.dtype)
        tokens = (logp_all.exp() * bins).sum(-1).round().long()
    else:
        tokens = logits.argmax(dim=-1)
    return tokens, logp_all.gather(-1, tokens[..., None]).squeeze(-1)
