"""DDIM (η = 0) with classifier-free guidance, as SD samples with diffusers' DDIMScheduler: "leading"
timestep spacing with an offset of 1 (50 steps: 981, 961, …, 1), ᾱ of the final step taken as ᾱ_0.
The paper's protocol: 50 steps, guidance 7.5. The loop is `initno.ddim`'s, run in float64 here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .. import ddim
from .model import TRAIN_TIMESTEPS, alphas_cumprod

STEPS = 50
GUIDANCE = 7.5


def ddim_timesteps(steps: int = STEPS) -> list[int]:
    return ddim.timesteps(steps, TRAIN_TIMESTEPS)


def first_timestep(steps: int = STEPS) -> int:
    """The timestep InitNO scores the noise at: the sampler's first (981 for 50 steps, as the official)."""
    return ddim_timesteps(steps)[0]


@torch.no_grad()
def sample(
    apply: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    guides: Sequence[Callable[[int, torch.Tensor, float], torch.Tensor] | None] | None = None,
    observe: Callable[[int, torch.Tensor, int], None] | None = None,
    until: int | None = None,
) -> torch.Tensor:
    """x_0 from the initial noise (B, C, H, W); `cond` (B, T, D), `uncond` (1 or B, T, D). Each image is
    computed independently of its batch neighbours (up to float rounding).

    `guides` (one per image, or None): `guide(step, z, timestep)` returns image's latent moved at the start
    of a step (attention guidance, `initno.guidance.ImageGuidance.guide`); DDIM's x is z_t itself.
    `observe(step, x, timestep)` sees the whole batch at the start of each step (the study's lookahead).
    With `until`, returns z_t before step `until` instead (at `ddim_timesteps(steps)[until]`)."""
    context = torch.cat([uncond.expand(cond.shape[0], -1, -1), cond])

    def model(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([x, x])  # uncond and cond rows in one call
        return apply(both, torch.full((len(both),), t), context).chunk(2)

    return ddim.sample(
        model,
        noise,
        alphas_cumprod(),
        ddim_timesteps(steps),
        guidance=guidance,
        until=until,
        guides=guides,
        observe=observe,
        dtype=torch.float64,
    )
