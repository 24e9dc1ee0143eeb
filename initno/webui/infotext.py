"""What the infotext says: each image's outcome (`InitNO`, `InitNO tokens`, `InitNO scores`, `InitNO
calibration`, `InitNO guidance`), written as callables the host evaluates per image while generating, and as
per-image lists in the API's `info` afterwards; the comments under the gallery."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..calibration import Calibration
from ..guidance import ImageGuidance
from ..optimize import ImageResult
from ..selection import SelectionResult
from ..subjects import Subject
from .args import ScriptArgs

GUIDANCE_ONLY = "sampling guidance only"
"""The noise outcome of a method that leaves the noise as it is."""
INTERRUPTED_CALIBRATING = "interrupted while calibrating the thresholds"
"""The outcome of an image whose thresholds' calibration Interrupt or Skip stopped: it keeps its noise."""


@dataclass
class ImageOutcome:
    """What the infotext says about one image."""

    status: str
    subjects: list[Subject] = field(default_factory=list)
    result: ImageResult | None = None
    guide: ImageGuidance | None = None
    guidance_stop: str | None = None
    """Why the sampling guidance did not run, or stopped early."""
    selection: SelectionResult | None = None
    """Lookahead's choice, for the method that selects the noise."""
    calibration: Calibration | None = None
    """Where the optimisation's validity thresholds came from, when they were calibrated to the model."""

    @property
    def calibrated_thresholds(self) -> str | None:
        """E.g. "cross 0.412, self 0.538 (q0.25 of 32 noises)"."""
        c = self.calibration
        if c is None:
            return None
        return f"cross {c.cross:.3f}, self {c.conflict:.3f} (q{c.quantile:g} of {c.samples} noises)"

    @property
    def guidance(self) -> str | None:
        """E.g. "InitNO+, 10 steps, refined 2× (9 updates), 19 passes, cross 0.612 -> 0.104"."""
        guided = self.guide is not None and bool(self.guide.trace.steps)
        if self.guidance_stop is None:
            return self.guide.trace.summary() if self.guide is not None else None
        if not guided:
            return f"skipped: {self.guidance_stop}"
        return f"{self.guide.trace.summary()}; then stopped: {self.guidance_stop}"

    @property
    def scores(self) -> str | None:
        if self.selection is not None:  # the seed's own noise, then the chosen one, both scored ahead
            before, after = self.selection.candidates[0], self.selection.final
            return f"cross {before.cross:.3f} -> {after.cross:.3f}, self {before.conflict:.3f} -> {after.conflict:.3f}"
        if self.result is None or self.result.initial is None:
            return None
        before, after = self.result.initial, self.result.final
        return (
            f"cross {before.cross:.3f} -> {after.cross:.3f}, self {before.conflict:.3f} -> {after.conflict:.3f}, "
            f"joint {before.joint:.3f} -> {after.joint:.3f}"
        )

    @property
    def tokens(self) -> str | None:
        if not self.subjects:
            return None
        auto = " (auto)" if any(s.auto for s in self.subjects) else ""
        return "; ".join(f"{s.text} {' '.join(map(str, s.positions))}" for s in self.subjects) + auto


def skipped(reason: str) -> str:
    """The outcome of an image InitNO did not run for."""
    return f"skipped: {reason}"


def _count(number: int, noun: str) -> str:
    plural = "es" if noun.endswith("s") else "s"
    return f"{number} {noun}{'' if number == 1 else plural}"


def status_of(result: ImageResult) -> str:
    """E.g. "valid, 2 rounds, 15 steps", "not valid, 5 rounds + fallback, 91 steps", "interrupted after 7 steps"."""
    if result.cancelled:
        return f"interrupted after {_count(result.steps, 'step')}"
    rounds = _count(result.rounds, "round") + (" + fallback" if result.fallback else "")
    reached = "valid" if result.valid else "not valid"
    return f"{reached}, {rounds}, {_count(result.steps, 'step')}"


def status_of_selection(result: SelectionResult) -> str:
    """E.g. "chose noise 2 of 4, 20 passes"; counted from 1, as users count, so noise 1 is the seed's own
    and says so."""
    own = " (the seed's own)" if result.chosen == 0 else ""
    return f"chose noise {result.chosen + 1} of {len(result.candidates)}{own}, {_count(result.passes, 'pass')}"


def interrupted_selection(passes: int) -> str:
    return f"interrupted after {_count(passes, 'pass')}"


OUTCOME_KEYS = {
    "InitNO": lambda outcome: outcome.status,
    "InitNO tokens": lambda outcome: outcome.tokens,
    "InitNO scores": lambda outcome: outcome.scores,
    "InitNO calibration": lambda outcome: outcome.calibrated_thresholds,
    "InitNO guidance": lambda outcome: outcome.guidance,
}
"""The per-image infotext entries and how each is read from an image's outcome."""


def outcome_keys(args: ScriptArgs) -> list[str]:
    """The per-image entries that apply to the method, in infotext order."""
    keys = ["InitNO", "InitNO tokens"]
    keys += ["InitNO scores"] if args.optimises_noise or args.selects_noise else []
    keys += ["InitNO calibration"] if args.calibrated else []
    keys += ["InitNO guidance"] if args.guidance is not None else []
    return keys


def write(p, args: ScriptArgs, outcomes: dict[int, ImageOutcome]) -> None:
    """Every parameter now; the per-image outcome as callables the host evaluates per image."""
    params = own_generation_params(p)
    params["InitNO"] = _per_image(outcomes, OUTCOME_KEYS["InitNO"])
    params.update(args.infotext())
    for key in outcome_keys(args)[1:]:
        params[key] = _per_image(outcomes, OUTCOME_KEYS[key])


def _per_image(outcomes: dict[int, ImageOutcome], read):
    def value(p, index, **kwargs):
        # The host passes the index within the batch (create_infotext's `index`).
        outcome = outcomes.get(p.iteration * p.batch_size + index)
        return read(outcome) if outcome is not None else None

    return value


def write_lists(p, processed, args: ScriptArgs, outcomes: dict[int, ImageOutcome]) -> None:
    """After the last batch: the outcomes as per-image lists (indexed like `all_seeds`), so that the API's
    `info` shows them (callables serialise as null) and later infotexts still find them."""
    count = len(p.all_prompts)
    for key in outcome_keys(args):
        processed.extra_generation_params[key] = [
            OUTCOME_KEYS[key](outcomes[i]) if i in outcomes else None for i in range(count)
        ]


def own_generation_params(p) -> dict:
    """`p.extra_generation_params`, first copied if still shared: X/Y/Z cells are shallow copies of one
    `p`, and what one cell writes must not show up in the others' infotexts."""
    if getattr(p, "_initno_params_owner", None) is not p:
        p.extra_generation_params = dict(p.extra_generation_params)
        p.comments = dict(p.comments)
        p._initno_params_owner = p
    return p.extra_generation_params


def comment(p, message: str) -> None:
    """A message for the console and for the text under the gallery."""
    print(message)
    own_generation_params(p)
    p.comment(message)
