"""The shared RL building blocks (`rlhf_exp.rl`): masked statistics and KL estimators."""

from __future__ import annotations

import math

import pytest
import torch
from pytest import approx

from rlhf_exp import rl

LN2 = math.log(2)


def test_masked_whiten_mean_var_ignore_padding():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    assert rl.masked_mean(x, mask).item() == approx(2.0)
    assert rl.masked_var(x, mask).item() == approx(1.0)  # unbiased: (1 + 0 + 1) / 2
    assert rl.masked_whiten(x, mask).tolist() == approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    kept = rl.masked_whiten(x, mask, shift_mean=False)
    assert kept.tolist() == approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    assert rl.kl_estimate(logp, ref, "k1").tolist() == approx([LN2, -LN2])
    # k3 = (r - 1) - log r, r = pi_ref / pi: r = 0.5 -> -0.5 + ln 2; r = 2 -> 1 - ln 2
    assert rl.kl_estimate(logp, ref, "k3").tolist() == approx([LN2 - 0.5, 1 - LN2])
    assert (rl.kl_estimate(logp, ref, "k3") >= 0).all()
    assert rl.kl_estimate(logp, logp, "k1").abs().max() == 0
    # k2 = (log r)^2 / 2: both tokens have |log r| = ln 2
    assert rl.kl_estimate(logp, ref, "k2").tolist() == approx([LN2**2 / 2] * 2)
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        rl.kl_estimate(logp, ref, "k4")
