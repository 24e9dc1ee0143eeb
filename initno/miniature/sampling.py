"""DDIM (η = 0) with classifier-free guidance, as SD samples with diffusers' DDIMScheduler: "leading"
timestep spacing with an offset of 1 (50 steps: 981, 961, …, 1), ᾱ of the final step taken as ᾱ_0.
The paper's protocol: 50 steps, guidance 7.5."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .model import TRAIN_TIMESTEPS, alphas_cumprod

STEPS = 50
GUIDANCE = 7.5


def ddim_timesteps(steps: int = STEPS) -> list[int]:
    ratio = TRAIN_TIMESTEPS // steps
    return [index * ratio + 1 for index in reversed(range(steps))]


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
    schedule = alphas_cumprod()
    timesteps = ddim_timesteps(steps)
    x = noise.double()
    uncond = uncond.expand(cond.shape[0], -1, -1)
    context = torch.cat([uncond, cond])
    for index, t in enumerate(timesteps):
        if index == until:
            break
        if observe is not None:
            observe(index, x.float(), t)
        for image, guide in enumerate(guides or ()):
            if guide is not None:
                x[image] = guide(index, x[image : image + 1].float(), t)[0].double()
        model_input = torch.cat([x, x]).float()
        eps_uncond, eps_cond = apply(model_input, torch.full((len(model_input),), t), context).double().chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        signal = schedule[t]
        previous = schedule[timesteps[index + 1]] if index + 1 < len(timesteps) else schedule[0]
        x0 = (x - (1 - signal).sqrt() * eps) / signal.sqrt()
        x = previous.sqrt() * x0 + (1 - previous).sqrt() * eps
    return x.float()
