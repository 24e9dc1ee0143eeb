"""The one DDIM loop (`initno.ddim`): timesteps, a step worked by hand for eps and v prediction, the last step
to ᾱ_0, stopping after k steps, guides and observers."""

from __future__ import annotations

import math

import pytest
import torch

from initno import ddim

# Four training timesteps with round square roots: sqrt(ᾱ_3) = 0.6, sqrt(1 − ᾱ_3) = 0.8, sqrt(ᾱ_1) = 0.8,
# sqrt(1 − ᾱ_1) = 0.6. Two steps over them are timesteps 3 and 1.
ALPHAS = torch.tensor([0.9, 0.64, 0.5, 0.36], dtype=torch.float64)
SCHEDULE = ddim.timesteps(2, train_timesteps=4)


def constant_model(uncond: float, cond: float, seen: list | None = None):
    def model(x, t):
        if seen is not None:
            seen.append((t, x.dtype, x.clone()))
        return torch.full_like(x, uncond), torch.full_like(x, cond)

    return model


def test_timesteps_are_leading_with_offset_one():
    assert SCHEDULE == [3, 1]
    assert ddim.timesteps(4) == [751, 501, 251, 1]  # A1111's DDIM at 4 steps: range(0, 1000, 250) + 1
    fifty = ddim.timesteps(50)
    assert fifty[:2] == [981, 961] and fifty[-1] == 1 and len(fifty) == 50
    with pytest.raises(ValueError, match="between 1 and 1000"):
        ddim.timesteps(0)


def test_one_step_by_hand_eps():
    """x = 1, eps_uncond = 0.5, eps_cond = 1, guidance 3: eps = 0.5 + 3·0.5 = 2; x0 = (1 − 0.8·2) / 0.6 = −1;
    z = 0.8·(−1) + 0.6·2 = 0.4."""
    seen = []
    x = ddim.sample(constant_model(0.5, 1.0, seen), torch.ones(1, 1, 1, 1), ALPHAS, SCHEDULE, guidance=3.0, until=1)
    assert x.dtype == torch.float32
    assert x.item() == pytest.approx(0.4, abs=1e-7)
    assert [(t, dtype) for t, dtype, _ in seen] == [(3, torch.float32)]  # the model sees float32


def test_one_step_by_hand_v():
    """v_uncond = 0.5, v_cond = 1 at x = 1: eps = 0.6·v + 0.8·x per branch = 1.1 and 1.4; guided 1.1 + 3·0.3 = 2,
    so the same step as the eps case: 0.4."""
    x = ddim.sample(
        constant_model(0.5, 1.0), torch.ones(1, 1, 1, 1), ALPHAS, SCHEDULE, guidance=3.0, prediction="v", until=1
    )
    assert x.item() == pytest.approx(0.4, abs=1e-7)
    eps = ddim.eps_of_v(torch.tensor(1.0), torch.tensor(1.0), ALPHAS[3])
    assert eps.item() == pytest.approx(1.4)


def test_the_last_step_goes_to_alpha_zero():
    """From 0.4 at ᾱ_1 with eps 2: x0 = (0.4 − 0.6·2) / 0.8 = −1; z = sqrt(0.9)·(−1) + sqrt(0.1)·2 = −sqrt(0.1)."""
    x = ddim.sample(constant_model(0.5, 1.0), torch.ones(1, 1, 1, 1), ALPHAS, SCHEDULE, guidance=3.0)
    assert x.item() == pytest.approx(-math.sqrt(0.1), abs=1e-7)
    assert ddim.step(torch.tensor(0.4), torch.tensor(2.0), ALPHAS[1], ALPHAS[0]).item() == pytest.approx(-(0.1**0.5))


def test_until_zero_returns_the_noise_and_guides_and_observers_see_each_step():
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ddim.sample(constant_model(0.5, 1.0), noise, ALPHAS, SCHEDULE, guidance=3.0, until=0), noise)
    observed, guided = [], []

    def guide(step, z, t):
        guided.append((step, t, z.shape))
        return z * 0  # the first image's z_t set to 0 at each step's start

    ddim.sample(
        constant_model(0.0, 0.0),
        noise,
        ALPHAS,
        SCHEDULE,
        guidance=3.0,
        guides=[guide, None],
        observe=lambda step, x, t: observed.append((step, t, x.clone())),
    )
    assert [(step, t) for step, t, _ in observed] == [(0, 3), (1, 1)]
    assert guided == [(0, 3, (1, 1, 2, 2)), (1, 1, (1, 1, 2, 2))]
    assert torch.equal(observed[0][2], noise)
    # eps = 0: each step scales z by sqrt(ᾱ_prev / ᾱ_t); the guided image was set to 0 first
    assert observed[1][2][0].abs().max() == 0
    torch.testing.assert_close(observed[1][2][1], noise[1] * (0.64 / 0.36) ** 0.5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        ddim.sample(constant_model(0.0, 0.0), noise, ALPHAS, SCHEDULE, guidance=1.0, prediction="x0")
