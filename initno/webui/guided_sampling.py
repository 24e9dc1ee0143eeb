"""Putting the sampling guidance (InitNO+, Attend-and-Excite) on a batch's sampler, and taking it off.

The guidance hooks live on the batch's sampler (`sampler_hook.SamplerGuidance`) and are taken off in
`post_sample`. What keeps them from outliving the batch is that the host creates a new sampler for every
batch: if sampling raises, A1111 ends the generation with the sampler (no next batch, no `postprocess`).
They are also taken off at the next batch's hook and at `postprocess`, for forks that skip `post_sample`
when sampling returns nothing. The attention capture and the frozen parameters never outlive one
guidance step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch

from ..guidance import GuidanceSettings, ImageGuidance
from ..optimize import Denoiser, ImageRequest
from . import faults, progress
from .hosts import Host
from .infotext import ImageOutcome, comment
from .passes import differentiable_passes
from .sampler_hook import SamplerGuidance


def start(
    p,
    host: Host,
    settings: GuidanceSettings,
    denoiser: Denoiser,
    requests: list[ImageRequest],
    outcomes: list[ImageOutcome | None],
) -> SamplerGuidance | None:
    """Puts one `ImageGuidance` per requested image on the batch's sampler (`outcomes[b]`: image b of the
    batch, None for one that is not guided); it runs while the host samples. A fault here stops only the
    guidance: the noise may be optimised already."""
    guided = [outcome for outcome in outcomes if outcome is not None]
    try:
        sampler_name = getattr(getattr(p.sampler, "config", None), "name", None) or p.sampler_name
        reason = faults.sampler_refusal(sampler_name)
        if reason is not None:
            stop(p, guided, reason, skipped=True)
            return None
        plan = settings.plan(p.steps)
        shown = progress.GuidanceProgress(plan, len(requests))
        guides: list[ImageGuidance | None] = [None] * len(outcomes)
        batch_positions = [i for i, outcome in enumerate(outcomes) if outcome is not None]
        for n, (i, request) in enumerate(zip(batch_positions, requests)):
            guides[i] = ImageGuidance(
                denoiser,
                request.cond,
                request.subjects,
                plan,
                softmax_positions=request.softmax_positions,
                progress=partial(shown, n),
                cancel=progress.cancelled,
            )
            outcomes[i].guide = guides[i]
        return SamplerGuidance(
            p.sampler,
            guides,
            on_fault=lambda error: stop(p, guided, faults.reason(error)),
            on_finished=progress.done,
            around=partial(_guidance_pass, p, host, denoiser.unet),
        ).install()
    except Exception as error:
        stop(p, guided, faults.reason(error))
        return None


def end(hook: SamplerGuidance) -> None:
    """Takes the guidance off the sampler (again: harmless). Guided steps left undone because the user
    stopped the sampling count as interrupted."""
    if not hook.finished and progress.cancelled():
        for guide in hook.guides:
            if guide is not None:
                guide.trace.cancelled = True
    hook.remove()


def stop(p, outcomes: list[ImageOutcome], reason: str, skipped: bool = False) -> None:
    """The guidance of these images did not run (`skipped`) or stopped, for `reason`."""
    for outcome in outcomes:
        outcome.guidance_stop = reason
    comment(p, f"InitNO guidance {'skipped' if skipped else 'stopped'}: {reason}")


@contextlib.contextmanager
def _guidance_pass(p, host: Host, unet: torch.nn.Module) -> Iterator[None]:
    """Around each step's guidance passes: still the model sampling started with (the Refiner switch can
    load another checkpoint mid-sampling), and differentiable (`passes.differentiable_passes`)."""
    if p.sd_model is not host.model:
        raise faults.Unsupported(faults.REFINER_SWITCH)
    with differentiable_passes(host, unet):
        yield
