"""The progress bar while InitNO works, and the user's Interrupt and Skip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from modules import devices, shared

from ..guidance import GuidancePlan
from ..methods import method_of
from ..params import InitNOParams
from ..scores import Scores
from ..selection import LookaheadParams


def cancelled() -> bool:
    """Whether the user pressed Interrupt or Skip."""
    return bool(shared.state.interrupted or shared.state.skipped)


class Interrupted(Exception):
    """Interrupt or Skip was pressed during InitNO's forward passes (lookahead, calibration)."""


def counted(apply: Callable[[torch.Tensor, torch.Tensor, Any], Any], shown: Callable[[int], None]):
    """`apply` that stops on Interrupt or Skip before each UNet call and counts its passes with `shown` (before
    the call: a scoring pass ends inside the UNet, where the capture stops it)."""

    def counting_apply(latent: torch.Tensor, timesteps: torch.Tensor, cond):
        if cancelled():
            raise Interrupted
        shown(latent.shape[0])
        return apply(latent, timesteps, cond)

    return counting_apply


def done() -> None:
    """After InitNO's passes: the progress text cleared, the passes' memory given back."""
    shared.state.textinfo = None
    devices.torch_gc()


class NoiseProgress:
    """'InitNO round r/R · step s/S · loss …' in the progress bar while the noise is optimised."""

    def __init__(self, params: InitNOParams, image_count: int):
        self.params = params
        self.image_count = image_count
        self.total = params.max_passes
        self.done = 0

    def __call__(self, image: int, round_index: int, step: int, scores: Scores) -> None:
        p = self.params
        self.done += 1
        if round_index == p.max_rounds:
            where = f"fallback · step {step + 1}/{p.fallback_steps}"
        else:
            where = f"round {round_index + 1}/{p.max_rounds} · step {step + 1}/{p.steps_per_round}"
        which = f" image {image + 1}/{self.image_count} ·" if self.image_count > 1 else ""
        state = shared.state
        state.textinfo = (
            f"InitNO{which} {where} · loss {scores.joint:.3f} (cross {scores.cross:.3f}, self {scores.conflict:.3f})"
        )
        state.sampling_steps = self.total * self.image_count
        state.sampling_step = min(self.done, state.sampling_steps)


class LookaheadProgress:
    """'InitNO lookahead · pass p/P' in the progress bar while the candidates run ahead and are scored; counts
    each image's passes (a UNet call on n latents is n passes, as `LookaheadParams.passes` counts them)."""

    def __init__(self, params: LookaheadParams, image_count: int):
        self.params = params
        self.image_count = image_count
        self.image = 0
        self.passes = 0
        """The current image's passes so far."""
        self.done = 0

    def next_image(self, image: int) -> None:
        self.image, self.passes = image, 0

    def __call__(self, passes: int) -> None:
        self.passes += passes
        self.done += passes
        which = f" · image {self.image + 1}/{self.image_count}" if self.image_count > 1 else ""
        state = shared.state
        state.textinfo = f"InitNO lookahead{which} · pass {self.passes}/{self.params.passes}"
        state.sampling_steps = self.params.passes * self.image_count
        state.sampling_step = min(self.done, state.sampling_steps)


class CalibrationProgress:
    """'InitNO calibrating the thresholds · pass p/P' while the calibration's noises are scored."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def __call__(self, passes: int) -> None:
        self.done += passes
        state = shared.state
        state.textinfo = f"InitNO calibrating the thresholds · pass {self.done}/{self.total}"
        state.sampling_steps = self.total
        state.sampling_step = min(self.done, self.total)


class GuidanceProgress:
    """'InitNO+ guidance · step s/S · loss …' in the progress bar while the sampler's steps are guided."""

    def __init__(self, plan: GuidancePlan, image_count: int):
        self.plan = plan
        self.image_count = image_count
        self.last_step: tuple[int, int] | None = None
        self.refinement = 0

    def __call__(self, image: int, step: int, losses: dict[str, float]) -> None:
        self.refinement = self.refinement + 1 if self.last_step == (image, step) else 0
        self.last_step = (image, step)
        which = f" · image {image + 1}/{self.image_count}" if self.image_count > 1 else ""
        refining = f" · refinement {self.refinement}" if self.refinement else ""
        loss = f"loss {losses['cross']:.3f}"
        if self.plan.augmented:
            loss += f" (self {losses['conflict']:.3f})"
        name = method_of(self.plan.method).name
        shared.state.textinfo = f"{name} guidance{which} · step {step + 1}/{self.plan.guided}{refining} · {loss}"
