"""ActionTokenizer: normalisation, binning, round trip, gripper handling and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lastr1.models.action_tokenizer import ActionTokenizer, identity_action_stats


def _stats() -> dict:
    q01 = [-0.5, -0.2, 0.0, -1.0, -0.1, -0.3, -1.0]
    q99 = [0.5, 0.4, 2.0, 1.0, 0.1, 0.9, 1.0]
    return {"action": {"q01": q01, "q99": q99, "mean": [0.0] * 7, "std": [1.0] * 7, "min": q01, "max": q99}}


def test_round_trip_within_half_bin_in_normalised_space() -> None:
    tok = ActionTokenizer(_stats(), num_bins=256, chunk=8, binarize_gripper=False)
    gen = torch.Generator().manual_seed(0)
    q01, q99 = torch.tensor(_stats()["action"]["q01"]), torch.tensor(_stats()["action"]["q99"])
    actions = q01 + (q99 - q01) * torch.rand(64, 8, 7, generator=gen)
    tokens = tok.encode(actions)
    assert tokens.shape == (64, 56) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 256
    decoded = tok.decode(tokens)
    err = (tok.normalize(decoded) - tok.normalize(actions)).abs().max().item()
    assert err <= tok.bin_width / 2 + 1e-6
    # and in raw units the error is half a bin scaled by each dimension's half-range
    raw_err = (decoded - actions).abs().amax(dim=(0, 1))
    scale = torch.where(tok.mask, (q99 - q01) / 2, torch.ones(7))
    assert torch.all(raw_err <= scale * tok.bin_width / 2 + 1e-5)


def test_normalisation_formula_and_clipping() -> None:
    tok = ActionTokenizer(_stats(), binarize_gripper=False)
    a = torch.tensor([[0.5, -0.2, 1.0, 0.0, 10.0, -5.0, 0.3]])
    n = tok.normalize(a)[0]
    expected = torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.3])  # dim 6 (gripper) only clipped
    torch.testing.assert_close(n, expected)
    assert tok.normalize(torch.tensor([[0.0] * 6 + [4.0]]))[0, 6] == 1.0


def test_tokens_are_time_major() -> None:
    tok = ActionTokenizer(identity_action_stats(), chunk=2, binarize_gripper=False)
    a = torch.full((1, 2, 7), -1.0)
    a[0, 1, 3] = 1.0
    tokens = tok.encode(a)[0]
    assert tokens[1 * 7 + 3] == 255 and int(tokens.sum()) == 255


def test_gripper_binarised_on_decode() -> None:
    tok = ActionTokenizer(identity_action_stats(), chunk=1, binarize_gripper=True)
    a = torch.tensor([[[0.0] * 6 + [0.2]], [[0.0] * 6 + [-0.2]]])
    out = tok.decode(tok.encode(a))
    assert out[0, 0, 6] == 1.0 and out[1, 0, 6] == -1.0


def test_constant_dimension_has_no_nan() -> None:
    stats = _stats()
    stats["action"]["q01"][2] = stats["action"]["q99"][2] = 0.7
    tok = ActionTokenizer(stats, chunk=1)
    a = torch.tensor([[[0.1, 0.1, 0.7, 0.1, 0.0, 0.2, 1.0]]])
    out = tok.decode(tok.encode(a))
    assert torch.isfinite(out).all()
    assert out[0, 0, 2].item() == pytest.approx(0.7)


def test_numpy_input_and_custom_mask() -> None:
    stats = _stats()
    stats["action"]["q01"][6], stats["action"]["q99"][6] = 0.0, 2.0
    tok = ActionTokenizer(stats, chunk=1, normalize_mask=[True] * 7, binarize_gripper=False)
    a = np.zeros((3, 1, 7), dtype=np.float64)
    assert tok.encode(a).shape == (3, 7)
    assert tok.normalize(torch.zeros(1, 7))[0, 6].item() == pytest.approx(-1.0)  # gripper now normalised
    default = ActionTokenizer(stats, chunk=1, binarize_gripper=False)
    assert default.normalize(torch.zeros(1, 7))[0, 6].item() == pytest.approx(0.0)  # default: left as is


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="q01"):
        ActionTokenizer({"action": {"mean": [0.0]}})
    with pytest.raises(ValueError, match="normalize_mask"):
        ActionTokenizer(_stats(), normalize_mask=[True] * 3)
    tok = ActionTokenizer(_stats(), chunk=8)
    with pytest.raises(ValueError, match=r"\(B, 8, 7\)"):
        tok.encode(torch.zeros(2, 4, 7))
    with pytest.raises(ValueError, match="tokens must lie"):
        tok.decode(torch.full((1, 56), 256))
    with pytest.raises(ValueError, match=r"\(B, 56\)"):
        tok.decode(torch.zeros(1, 55, dtype=torch.long))
