"""DDIM (η = 0) with classifier-free guidance, in one place: the miniature's sampler
(`initno.miniature.sampling`) and the WebUI's stand-in for the host's sampler in lookahead selection
(`initno.webui.lookahead`). Host-independent: torch only.

Timesteps are spaced as diffusers' DDIMScheduler spaces them by default ("leading", offset 1) and as A1111's
DDIM does when the steps divide 1000: 50 steps of 1000 are 981, 961, …, 1. The last step goes to ᾱ_0 (diffusers'
`set_alpha_to_one=False`, A1111's DDIM alike)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Model = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
"""(z_t (B, C, H, W) in float32, timestep) -> the model's outputs without and with the prompt (uncond, cond),
each (B, C, H, W): eps, or v with `prediction="v"`."""

Guide = Callable[[int, torch.Tensor, int], torch.Tensor]
"""(step, one image's z_t (1, C, H, W), timestep) -> that z_t moved (attention guidance)."""

PREDICTIONS = ("eps", "v")


def timesteps(steps: int, train_timesteps: int = 1000) -> list[int]:
    """The sampler's timesteps, first (noisiest) first: `steps` of them, "leading" spacing, offset 1."""
    if steps < 1 or steps > train_timesteps:
        raise ValueError(f"DDIM steps must be between 1 and {train_timesteps}, got {steps}")
    ratio = train_timesteps // steps
    return [index * ratio + 1 for index in reversed(range(steps))]


def eps_of_v(v: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A v-prediction as eps: eps = sqrt(ᾱ_t)·v + sqrt(1 − ᾱ_t)·x_t."""
    return alpha.sqrt() * v + (1 - alpha).sqrt() * x


def step(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """One DDIM step (η = 0) from z_t at ᾱ_t to z at ᾱ_prev, given the (guided) eps."""
    x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


@torch.no_grad()
def sample(
    model: Model,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    schedule: Sequence[int],
    *,
    guidance: float,
    prediction: str = "eps",
    until: int | None = None,
    guides: Sequence[Guide | None] | None = None,
    observe: Callable[[int, torch.Tensor, int], None] | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """z_0 from the initial noise (B, C, H, W) over the timesteps `schedule` (first first), as float32.

    The state, the guidance's mix and the step run in `dtype` (the model sees float32). `guides` (one per
    image, or None) move an image's z_t at the start of a step; `observe(step, z_t, timestep)` sees the batch
    there. With `until`, returns z_t before step `until` (at `schedule[until]`) instead: the first `until`
    steps only. Each image is computed independently of its batch neighbours (up to float rounding)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    alphas = alphas_cumprod.to(device=noise.device, dtype=dtype)
    x = noise.to(dtype)
    for index, t in enumerate(schedule):
        if index == until:
            break
        if observe is not None:
            observe(index, x.float(), t)
        for image, guide in enumerate(guides or ()):
            if guide is not None:
                x[image] = guide(index, x[image : image + 1].float(), t)[0].to(dtype)
        uncond, cond = (output.to(dtype) for output in model(x.float(), t))
        alpha = alphas[t]
        if prediction == "v":  # per branch, as A1111's v denoiser converts each before the mix
            uncond, cond = eps_of_v(uncond, x, alpha), eps_of_v(cond, x, alpha)
        eps = uncond + guidance * (cond - uncond)
        previous = alphas[schedule[index + 1]] if index + 1 < len(schedule) else alphas[0]
        x = step(x, eps, alpha, previous)
    return x.float()
