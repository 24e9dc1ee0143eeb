"""Attention guidance during sampling (docs/method.md, "Sampling guidance"): at the start of each early sampling
step, a cond-only UNet pass with gradients scores the attention of the current latent, and the latent
moves down the gradient of that score before the sampler takes its step from it.

Two methods, each as its official code computes it:

- **InitNO+** (the official InitNO script, `run_sd=False`): every guided step, z ← z − α_i ∇_z L_cross.
  At 10 and 20 of 50 steps, while L_cross > 0.2 or L_self > 0.3, iterative refinement on the augmented
  loss L_cross + L_self (not gated) + 0.1 L_clean + 0.1 L_align, at most 20 updates. L_align compares each
  subject's map with an exponential moving average of its maps over the calls so far (reset per image).
- **Attend-and-Excite**: the same per-step update on L_cross alone, with refinement at 0, 10 and 20 of
  50 steps while L_cross > 0.95, 0.5 and 0.2.

Step size α_i = 20·sqrt(1 − 0.5·i/N) (the official `sqrt(linspace(1, 0.5))`), guided steps i < N/2 (25 of
50); "step k of 50" is the same fraction of the user's N steps, rounded to the nearest step.

Everything happens in the unit-variance space z_t of a DDPM scheduler, in which the references step
(`scheduler.step` on z_t); the host glue maps its sampler's latent in and out.

Deliberate savings, numbers unchanged:
- The official refinement's first iteration runs the UNet again on the latent just scored; here the pass
  just made is reused. For InitNO+ that repeated pass updates the alignment cache a second time with the
  same maps, which is repeated here without the pass.
- The official code runs a scoring pass at every one of the 50 steps, also where nothing is changed; here
  only the guided steps are scored (the later passes only fed a cache nothing reads any more).
- The reference refinement also runs two unused no-grad UNet passes per iteration (Attend-and-Excite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .methods import ATTEND_AND_EXCITE, GUIDED, INITNO_PLUS, method_of
from .optimize import Denoiser, frozen_parameters
from .scores import clean_loss, conflict_loss, response_loss, smooth, subject_token_maps

REFERENCE_STEPS = 50
"""The step count the official schedules are written for."""
ALIGNMENT_DECAY = 0.9
CLEAN_WEIGHT = 0.1
ALIGNMENT_WEIGHT = 0.1


@dataclass(frozen=True)
class Refinement:
    """Iterative refinement at `step` of 50: while L_cross > `cross` (or L_self > `conflict`, if given)."""

    step: int
    cross: float
    conflict: float | None = None

    def reached(self, losses: GuidanceLosses) -> bool:
        if losses.cross > self.cross:
            return False
        return self.conflict is None or losses.conflict <= self.conflict


OFFICIAL_REFINEMENTS = {
    INITNO_PLUS: (Refinement(10, 0.2, 0.3), Refinement(20, 0.2, 0.3)),
    ATTEND_AND_EXCITE: (Refinement(0, 1 - 0.05), Refinement(10, 1 - 0.5), Refinement(20, 1 - 0.8)),
}
"""InitNO+: `(i == 10 or i == 20)`, cross ≤ 1 − 0.8 and self ≤ 0.3; Attend-and-Excite: its `thresholds`
{0: 0.05, 10: 0.5, 20: 0.8} on the attention, i.e. cross ≤ 1 − threshold."""

NO_REFINEMENT = "none"
SCHEDULE_FORMAT = (
    "'step:cross' or 'step:cross:self' entries separated by commas (e.g. '10:0.2:0.3, 20:0.2:0.3'): at step "
    f"0–{REFERENCE_STEPS} of {REFERENCE_STEPS}, refine while the cross loss is above `cross` (0–1) or the self "
    f"loss above `self` (0–1); empty: the method's official schedule; '{NO_REFINEMENT}': no refinement"
)


def parse_refinements(text: str) -> tuple[Refinement, ...] | None:
    """A refinement schedule as written in the WebUI ("10:0.2:0.3, 20:0.2:0.3"): None for empty text (the
    method's official schedule), () for "none"; ValueError saying what is wrong otherwise."""
    text = text.strip()
    if not text:
        return None
    if text.lower() == NO_REFINEMENT:
        return ()
    refinements = []
    for entry in text.replace(";", ",").split(","):
        fields = [field.strip() for field in entry.strip().split(":")]
        try:
            if len(fields) not in (2, 3):
                raise ValueError
            step = int(fields[0])
            cross = float(fields[1])
            conflict = float(fields[2]) if len(fields) == 3 else None
        except ValueError:
            raise ValueError(f"cannot read {entry.strip()!r}; expected {SCHEDULE_FORMAT}") from None
        if not 0 <= step <= REFERENCE_STEPS:
            raise ValueError(f"step {step} in {entry.strip()!r} is not between 0 and {REFERENCE_STEPS}")
        for value in (cross, conflict):
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"threshold {value:g} in {entry.strip()!r} is not between 0 and 1")
        if any(r.step == step for r in refinements):
            raise ValueError(f"step {step} appears twice")
        refinements.append(Refinement(step, cross, conflict))
    return tuple(sorted(refinements, key=lambda r: r.step))


def format_refinements(refinements: Sequence[Refinement]) -> str:
    """The text `parse_refinements` reads back ("none" for no refinement)."""
    if not refinements:
        return NO_REFINEMENT
    return ", ".join(
        f"{r.step}:{r.cross:g}" + (f":{r.conflict:g}" if r.conflict is not None else "") for r in refinements
    )


@dataclass(frozen=True)
class GuidanceSettings:
    method: str = INITNO_PLUS
    guided_fraction: float = 0.5
    """Steps i < fraction·N are guided (official: `max_iter_to_alter` 25 of 50)."""
    step_scale: float = 20.0
    max_refinement: int = 20
    refinements: tuple[Refinement, ...] | None = None
    """None: the method's official schedule."""

    def __post_init__(self):
        if self.method not in GUIDED:
            raise ValueError(f"unknown guidance method {self.method!r}; methods: {', '.join(GUIDED)}")

    @property
    def refinement_schedule(self) -> tuple[Refinement, ...]:
        return self.refinements if self.refinements is not None else OFFICIAL_REFINEMENTS[self.method]

    def plan(self, steps: int) -> GuidancePlan:
        return GuidancePlan.of(self, steps)


@dataclass(frozen=True)
class GuidancePlan:
    """What happens at each of a sampler's N steps."""

    method: str
    steps: int
    guided: int
    """Steps 0 .. guided − 1 are guided."""
    step_sizes: tuple[float, ...]
    refinements: dict[int, Refinement]
    max_refinement: int
    augmented: bool

    @classmethod
    def of(cls, settings: GuidanceSettings, steps: int) -> GuidancePlan:
        if steps < 1:
            raise ValueError(f"the sampler has {steps} steps")
        guided = min(steps, round(settings.guided_fraction * steps))
        sizes = tuple(settings.step_scale * (1 - 0.5 * i / steps) ** 0.5 for i in range(steps))
        refinements = {}
        for refinement in settings.refinement_schedule:
            index = round(refinement.step * steps / REFERENCE_STEPS)
            if index < guided:  # the official condition `i < max_iter_to_alter`
                refinements.setdefault(index, refinement)
        augmented = method_of(settings.method).augmented
        return cls(settings.method, steps, guided, sizes, refinements, settings.max_refinement, augmented)

    @property
    def max_passes(self) -> int:
        """UNet passes per image at worst: one per guided step, and `max_refinement` more per refinement."""
        return self.guided + self.max_refinement * len(self.refinements)


@dataclass
class GuidanceLosses:
    """The losses of one pass with their graphs; `augmented` is InitNO+'s refinement loss."""

    cross: torch.Tensor
    conflict: torch.Tensor
    clean: torch.Tensor
    alignment: torch.Tensor

    @property
    def augmented(self) -> torch.Tensor:
        return self.cross + self.conflict + CLEAN_WEIGHT * self.clean + ALIGNMENT_WEIGHT * self.alignment

    def values(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in ("cross", "conflict", "clean", "alignment")}


class AlignmentCache:
    """InitNO+'s moving average of the subjects' (unsmoothed) token-softmax maps, updated on every call of
    the augmented loss, before the loss is read: the first call stores the maps, later ones blend in 10 %."""

    def __init__(self):
        self.maps: torch.Tensor | None = None

    def update(self, maps: torch.Tensor) -> torch.Tensor:
        maps = maps.detach()
        self.maps = maps.clone() if self.maps is None else self.maps * ALIGNMENT_DECAY + maps * (1 - ALIGNMENT_DECAY)
        return self.maps


def alignment_loss(maps: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Σ over subjects of the mean absolute difference of the smoothed map and the smoothed cached map."""
    return (smooth(maps) - smooth(cached)).abs().flatten(1).mean(dim=1).sum()


@dataclass
class ScoredPass:
    """One pass's token maps (with their graph), peaks and what the losses need to be (re)computed."""

    maps: torch.Tensor
    smoothed: torch.Tensor
    cross: torch.Tensor
    peaks: torch.Tensor
    self_maps: torch.Tensor | None


def score_pass(cross_attention, self_attention_rows, subjects, positions, *, with_self: bool) -> ScoredPass:
    with torch.autocast(device_type=cross_attention.device.type, enabled=False):
        maps = subject_token_maps(cross_attention.float(), subjects, positions)
        smoothed = smooth(maps)
        if not torch.isfinite(smoothed).all():
            raise FloatingPointError("the cross-attention maps contain NaN or inf: the UNet pass overflowed")
        cross, peaks = response_loss(smoothed)
        self_maps = smooth(self_attention_rows(peaks).float()) if with_self else None
    return ScoredPass(maps, smoothed, cross, peaks, self_maps)


def guidance_losses(scored: ScoredPass, cache: AlignmentCache | None) -> GuidanceLosses:
    """The losses of a scored pass. With a cache (InitNO+), the cache is updated first, as the official
    `fn_augmented_compute_losss` does on every call; the conflict loss is not gated here (docs/method.md)."""
    zero = scored.cross.new_zeros(())
    if cache is None:
        return GuidanceLosses(scored.cross, zero, zero, zero)
    with torch.autocast(device_type=scored.cross.device.type, enabled=False):
        conflict = conflict_loss(scored.self_maps)
        clean = clean_loss(scored.smoothed, scored.peaks)
        alignment = alignment_loss(scored.maps, cache.update(scored.maps))
    return GuidanceLosses(scored.cross, conflict, clean, alignment)


@dataclass(frozen=True)
class GuidanceStep:
    """What one guided sampling step did: losses at its start and end, refinement updates, passes."""

    step: int
    timestep: float
    before: dict[str, float]
    after: dict[str, float]
    refinement_updates: int
    passes: int


@dataclass
class GuidanceTrace:
    method: str
    steps: list[GuidanceStep] = field(default_factory=list)
    cancelled: bool = False

    @property
    def passes(self) -> int:
        return sum(step.passes for step in self.steps)

    @property
    def refinement_updates(self) -> int:
        return sum(step.refinement_updates for step in self.steps)

    def summary(self) -> str:
        """E.g. "InitNO+, 25 steps, refined 2× (13 updates), 39 passes, cross 0.612 -> 0.104"."""
        if not self.steps:
            return f"{method_of(self.method).name}, no step guided" + (" (interrupted)" if self.cancelled else "")
        refined = [step for step in self.steps if step.refinement_updates]
        parts = [method_of(self.method).name, f"{len(self.steps)} step{'s' if len(self.steps) != 1 else ''}"]
        if refined:
            parts.append(f"refined {len(refined)}× ({self.refinement_updates} updates)")
        parts.append(f"{self.passes} pass{'es' if self.passes != 1 else ''}")
        parts.append(f"cross {self.steps[0].before['cross']:.3f} -> {self.steps[-1].after['cross']:.3f}")
        return ", ".join(parts) + (" (interrupted)" if self.cancelled else "")


PassCallback = Callable[[int, dict[str, float]], None]
"""(sampling step, losses) after each guidance pass."""


class ImageGuidance:
    """Guides one image through a sampler's steps: `guide(step, z, timestep)` at the start of each step.

    `z` is the unit-variance latent z_t (1, C, H, W); the returned latent is detached. Steps outside the
    guided range return `z` untouched without a UNet pass."""

    def __init__(
        self,
        denoiser: Denoiser,
        cond: Any,
        subjects: Sequence[Sequence[int]],
        plan: GuidancePlan,
        *,
        softmax_positions: Sequence[int] | None = None,
        progress: PassCallback | None = None,
        cancel: Callable[[], bool] | None = None,
    ):
        self.denoiser = denoiser
        self.cond = cond
        self.subjects = subjects
        self.plan = plan
        self.softmax_positions = softmax_positions
        self.progress = progress or (lambda *_: None)
        self.cancel = cancel or (lambda: False)
        self.cache = AlignmentCache() if plan.augmented else None
        self.trace = GuidanceTrace(plan.method)
        # One capture for all steps: it learns on the first pass where the UNet can stop early.
        self.capture = denoiser.capture(backward=True)

    def guide(self, step: int, z: torch.Tensor, timestep: float) -> torch.Tensor:
        if step >= self.plan.guided or self.trace.cancelled:
            return z
        with frozen_parameters(self.denoiser.unet), self.capture, torch.inference_mode(False), torch.enable_grad():
            # A copy: a normal tensor even where the host samples in inference mode (Forge).
            return self._guide(step, z.detach().to(torch.float32, copy=True), timestep)

    def _pass(self, z: torch.Tensor, timestep: float) -> tuple[torch.Tensor, ScoredPass] | None:
        if self.cancel():
            self.trace.cancelled = True
            return None
        z = z.detach().requires_grad_(True)
        timesteps = torch.full((1,), float(timestep), device=z.device)
        self.capture.run(self.denoiser.apply, z, timesteps, self.cond)
        scored = score_pass(
            self.capture.cross_attention()[0],
            lambda peaks: self.capture.self_attention_rows(peaks)[0],
            self.subjects,
            self.softmax_positions,
            with_self=self.plan.augmented,
        )
        self.capture.clear()
        return z, scored

    def _rescore(self, step: int, z: torch.Tensor, timestep: float):
        """A pass at `z` and its losses: (z, scored, losses), or None when the pass was cancelled."""
        scored = self._pass(z, timestep)
        if scored is None:
            return None
        z, current = scored
        return z, current, self._losses(current, step)

    def _losses(self, scored: ScoredPass, step: int) -> GuidanceLosses:
        losses = guidance_losses(scored, self.cache)
        self.progress(step, losses.values())
        return losses

    def _guide(self, step: int, z: torch.Tensor, timestep: float) -> torch.Tensor:
        size = self.plan.step_sizes[step]
        scored = self._pass(z, timestep)
        if scored is None:
            return z
        z, current = scored
        losses = self._losses(current, step)
        before, passes, updates = losses.values(), 1, 0
        refinement = self.plan.refinements.get(step)
        if refinement is not None and not refinement.reached(losses):
            # The official loop: score, update, and check the score of the latent *before* that update
            # (so one update more than needed), at most `max_refinement` updates; then score once more.
            reached = False
            while not reached:
                updates += 1
                if updates > 1:
                    rescored = self._rescore(step, z, timestep)
                    if rescored is None:
                        return z.detach()
                    z, current, losses = rescored
                    passes += 1
                elif self.cache is not None:  # the repeated pass's second cache update, without the pass
                    losses = self._losses(current, step)
                reached = refinement.reached(losses)
                objective = losses.augmented if self.plan.augmented else losses.cross
                if objective.detach() != 0:
                    (gradient,) = torch.autograd.grad(objective, [z])
                    z = (z - size * gradient).detach()
                if updates >= self.plan.max_refinement:
                    break
            rescored = self._rescore(step, z, timestep)
            if rescored is None:
                return z.detach()
            z, current, losses = rescored
            passes += 1
        if losses.cross.detach() != 0:
            (gradient,) = torch.autograd.grad(losses.cross, [z])
            z = z - size * gradient
        self.trace.steps.append(GuidanceStep(step, float(timestep), before, losses.values(), updates, passes))
        return z.detach()


def kdiffusion_guide(
    guide: Callable[[int, torch.Tensor, float], torch.Tensor], step: int, x: torch.Tensor, sigma: float, timestep: float
) -> torch.Tensor:
    """`guide` for a k-diffusion sampler, whose latent is x = x_0 + σ·ε rather than the references' z_t.

    With ᾱ_t = 1 / (1 + σ²) (the k-diffusion sigma of a DDPM timestep: σ² = (1 − ᾱ_t) / ᾱ_t),
    z_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε = x / sqrt(1 + σ²), which is also what the host feeds the UNet
    (k-diffusion's c_in, for eps and v models alike). The reference step z' = z − α·∇_z L(z) is therefore
    x' = sqrt(1 + σ²)·z' = x − α·sqrt(1 + σ²)·∇_z L = x − α·(1 + σ²)·∇_x L: the same move of the image,
    larger in x's units by sqrt(1 + σ²)."""
    scale = (1 + float(sigma) ** 2) ** 0.5
    return guide(step, x / scale, timestep) * scale
