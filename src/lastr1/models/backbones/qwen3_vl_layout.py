"""The reference's token layout on Qwen3-VL: its special tokens and the ``lm_head`` readouts.

``PolicyConfig.qwen3_vl_layout="reference"`` (docs/backbones.md) runs the sequence of the LaST-R1
reference::

    [padding .. image(s) instruction (proprio)] <latent_start> (z z <latent_end>) x G [action slots]

with ``<latent_start>``, ``<latent_end>``, ``<latent_pad>`` and ``num_bins`` ``<action_i>`` tokens in
the vocabulary. :func:`add_layout_tokens` adds the ones a tokenizer lacks (``add_special_tokens``,
then ``resize_token_embeddings`` when the ids run past the embedding's rows) and reports what it
added. :class:`LayoutTokens` holds the rows of those tokens the policy reads:

* inputs: the ``<latent_start>`` and ``<latent_end>`` rows of the input embedding (the action slots'
  inputs are zeros, the latents are hidden states);
* readouts: the stop score of a group is the ``lm_head`` logit of ``<latent_end>`` at the group's
  last latent, and the action logits are the ``lm_head`` restricted to the ``<action_i>`` rows.

Why a copy of those rows as our own float32 parameter instead of the embedding matrix itself: the
policy only ever reads these rows (it computes no full-vocabulary logits), LoRA freezes the
embedding matrix (the new tokens would stay random), and a bf16 matrix would round their updates
away. :meth:`LayoutTokens.writes` puts the trained rows back into the matrix when the backbone is
saved, so the saved folder is a complete checkpoint whose own ``lm_head`` gives the same stop and
action logits; with tied embeddings (Qwen3-VL 2B/4B) one row serves as both input and readout, as in
the model.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

LATENT_START, LATENT_END, LATENT_PAD = "<latent_start>", "<latent_end>", "<latent_pad>"
_REPORTED: set[tuple[str, int, int]] = set()


def action_token(i: int) -> str:
    return f"<action_{i}>"


def layout_token_names(num_bins: int) -> list[str]:
    """Every special token of the reference layout, in the order they are added."""
    return [LATENT_START, LATENT_END, LATENT_PAD, *(action_token(i) for i in range(num_bins))]


def token_id(tokenizer: Any, name: str) -> int | None:
    """The id of ``name`` as one token of ``tokenizer``'s vocabulary, None when it is not one."""
    got = tokenizer.convert_tokens_to_ids(name)
    if got is None or (got == tokenizer.unk_token_id and tokenizer.unk_token != name):
        return None
    return int(got)


def add_layout_tokens(model: nn.Module, tokenizer: Any, num_bins: int, source: str) -> tuple[int, int]:
    """Add the layout's special tokens ``tokenizer`` lacks (``add_special_tokens``) and grow the
    model's embedding rows to cover every id (``resize_token_embeddings``); returns ``(tokens added,
    rows added)`` and prints them once per ``source``.

    Qwen3-VL's embedding has spare rows past its tokenizer (151936 rows for 151669 ids), so the 259
    tokens of a 256-bin layout fit without new rows; those rows keep the checkpoint's values, as a
    resize to ``len(tokenizer)`` would. Rows that have to be added get transformers' initialisation
    (the mean and covariance of the existing rows)."""
    missing = [n for n in layout_token_names(num_bins) if token_id(tokenizer, n) is None]
    added = 0
    if missing:
        kwargs: dict[str, Any] = {}
        params = inspect.signature(tokenizer.add_special_tokens).parameters
        for keep in ("replace_extra_special_tokens", "replace_additional_special_tokens"):
            if keep in params:  # add to the tokenizer's special tokens, do not replace them
                kwargs[keep] = False
        added = int(tokenizer.add_special_tokens({"additional_special_tokens": missing}, **kwargs))
    rows = int(model.get_input_embeddings().weight.shape[0])
    need = max(int(token_id(tokenizer, n) or 0) for n in layout_token_names(num_bins)) + 1
    new_rows = max(0, max(need, len(tokenizer)) - rows)
    if new_rows:
        model.resize_token_embeddings(rows + new_rows)
    key = (source, added, new_rows)
    if (added or new_rows) and key not in _REPORTED:
        _REPORTED.add(key)
        print(
            f"note: Qwen3-VL from {source}: added {added} special tokens (<latent_start>, <latent_end>, "
            f"<latent_pad>, <action_0..{num_bins - 1}>) to the tokenizer and {new_rows} rows to the "
            f"embedding (now {rows + new_rows} rows)"
        )
    return added, new_rows


class LayoutTokens(nn.Module):
    """Our float32 copy of the rows of ``<latent_start>``, ``<latent_end>`` and the ``<action_i>``
    tokens (row order), with the readouts and inputs the reference layout needs (see module doc).

    ``rows`` holds the input-embedding rows; ``rows_out`` the ``lm_head`` rows when the model's
    embeddings are not tied (None when they are: then ``rows`` is both)."""

    def __init__(self, model: nn.Module, tokenizer: Any, num_bins: int) -> None:
        super().__init__()
        names = [LATENT_START, LATENT_END, *(action_token(i) for i in range(num_bins))]
        ids = [token_id(tokenizer, n) for n in names]
        if any(i is None for i in ids):
            raise ValueError(
                "LayoutTokens needs the layout's tokens in the tokenizer: call add_layout_tokens"
            )
        object.__setattr__(self, "_model", model)  # not registered: the backbone owns it
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        w_in, w_out = self._weights()
        self.rows = nn.Parameter(w_in.detach()[self.ids].float().clone())
        self.rows_out = None if w_out is w_in else nn.Parameter(w_out.detach()[self.ids].float().clone())

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        model = self._model
        w_in = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
        w_out = out.weight if out is not None else w_in
        return w_in, (w_in if w_out.data_ptr() == w_in.data_ptr() else w_out)

    def _out(self) -> torch.Tensor:
        return self.rows if self.rows_out is None else self.rows_out

    def start(self, b: int) -> torch.Tensor:
        """``<latent_start>``'s input embedding ``(b, 1, D)``."""
        return self.rows[0].expand(b, 1, -1)

    def end(self, b: int) -> torch.Tensor:
        """``<latent_end>``'s input embedding ``(b, 1, D)``."""
        return self.rows[1].expand(b, 1, -1)

    def stop_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, G, D)`` hidden states at the groups' last latents -> the ``lm_head`` logit of
        ``<latent_end>`` ``(B, G)``."""
        return hidden.float() @ self._out()[1]

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` -> the ``lm_head`` logits of the ``<action_i>`` tokens ``(B, N, num_bins)``."""
        return hidden.float() @ self._out()[2:].T

    @torch.no_grad()
    def writes(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(model weight, row ids, rows)`` to put into the backbone's weights when it is saved."""
        w_in, w_out = self._weights()
        out = [(w_in, self.ids, self.rows.detach())]
        if self.rows_out is not None:
            out.append((w_out, self.ids, self.rows_out.detach()))
        return out
