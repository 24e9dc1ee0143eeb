"""Lookahead selection on the host (the method "Fast"): each image's initial noise chosen among candidates
by their attention a few sampling steps ahead (`initno.selection.select_by_lookahead`).

The host's sampler cannot be run a few steps and stopped from a script (it owns its state, callbacks and
random draws), so a DDIM stand-in (`initno.ddim`) runs the steps ahead: over the model's own schedule and
prediction (eps or v), p.steps' timesteps, p.cfg_scale and each image's negative prompt, through the same
cond-only `Denoiser.apply` that InitNO's scores use, so the host's casts, LoRA, hypernetworks, ControlNet
and attention optimisations apply. The uncond and cond rows run as two calls, since their contexts may
differ in length. The hook's noise is unit variance, DDIM's z_T itself (the k-diffusion samplers hold
x = noise·σ_max, i.e. z_T = x / sqrt(1 + σ_max²) ≈ 0.998·noise). Forward passes only; explicit attention
only in the scoring pass, where the capture puts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from .. import ddim
from ..optimize import Denoiser, ImageRequest, batch_conds
from ..selection import LookaheadParams, SelectionResult, select_by_lookahead
from . import faults, progress
from .hosts import Host
from .progress import counted


def params_for(requested: LookaheadParams, steps: int) -> LookaheadParams:
    """The settings for a generation of `steps` sampling steps: at most steps − 1 steps ahead, where the
    scores are read at a timestep of the sampler's own schedule (0 steps ahead: any generation)."""
    if requested.steps == 0:
        return requested
    if steps < 2:
        raise faults.too_few_steps(steps)
    return replace(requested, steps=min(requested.steps, steps - 1))


class HostAdvance:
    """`selection.Advance` for one image on the host: DDIM with classifier-free guidance against its
    negative prompt's conditioning `uncond`."""

    def __init__(self, p, host: Host, apply: Callable[[torch.Tensor, torch.Tensor, Any], Any], uncond):
        self.alphas, self.prediction = host.schedule()
        self.timesteps = ddim.timesteps(p.steps, len(self.alphas))
        self.guidance = float(p.cfg_scale)
        self.apply = apply
        self.uncond = uncond

    def __call__(self, latents: torch.Tensor, conds, steps: int) -> tuple[torch.Tensor, int]:
        cond = batch_conds(conds)
        uncond = batch_conds([self.uncond] * len(latents))

        def model(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            timesteps = torch.full((len(x),), float(t), device=x.device)
            return self.apply(x, timesteps, uncond), self.apply(x, timesteps, cond)

        # float32 state: MPS has no float64, and the ranking needs no more
        ahead = ddim.sample(
            model,
            latents,
            self.alphas,
            self.timesteps,
            guidance=self.guidance,
            prediction=self.prediction,
            until=steps,
            dtype=torch.float32,
        )
        return ahead.to(latents.dtype), self.timesteps[steps]


def _never_advance(latents, conds, steps):
    raise AssertionError("0 steps ahead: the noises are scored as they are")


def select(
    p,
    host: Host,
    denoiser: Denoiser,
    request: ImageRequest,
    uncond,
    params: LookaheadParams,
    shown: progress.LookaheadProgress,
) -> SelectionResult:
    """One image's chosen noise; its candidates share each UNet call, so the result does not depend on the
    other images of the batch."""
    denoiser = replace(denoiser, apply=counted(denoiser.apply, shown))
    # 0 steps ahead samples nothing, so any prediction type will do
    advance = HostAdvance(p, host, denoiser.apply, uncond) if params.steps else _never_advance
    (result,) = select_by_lookahead(denoiser, advance, [request], params, batch_size=params.candidates)
    return result
