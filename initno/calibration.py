"""Thresholds calibrated to the loaded model: where its own scores of random noises lie.

The official thresholds (response loss < 0.2, conflict < 0.3) encode SD1.4's attention statistics; other
families, fine-tunes and the miniature have others, and there the official valid region is never reached.
A calibration scores random noises for a few fixed two-subject prompts (forward passes only, batched) and
sets each threshold at a quantile of its scores: "as good as the best quarter of random noises" means the
same on every model. It is cached per model (`CalibrationCache`), so it is paid once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .optimize import BatchScorer, Denoiser, ImageRequest, frozen_parameters
from .params import InitNOParams
from .selection import NoiseScores, Thresholds

QUANTILE = 0.25
"""Each threshold is this quantile of the model's scores of random noises."""
CALIBRATED, OFFICIAL = "calibrated", "official"
"""Where the noise optimisation's validity thresholds come from: this calibration of the loaded model, or
fixed numbers (the official SD1.4 ones, 0.2 and 0.3, unless changed). The WebUI and `eval` default to
calibrated."""
THRESHOLD_PARAMS = ("cross_threshold", "conflict_threshold")
"""InitNO's parameters that a calibration replaces."""
NOISES_PER_PROMPT = 8
CALIBRATION_SEED = 0
VERSION = 1
"""Bump when the procedure changes, so that cached calibrations are made anew."""


@dataclass(frozen=True)
class Calibration:
    key: str
    cross: float
    conflict: float
    quantile: float
    samples: int
    version: int = VERSION

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.cross, self.conflict, f"calibrated (q{self.quantile:g} of {self.samples} noises)")


def with_thresholds(params: InitNOParams, calibrated: Calibration | Thresholds) -> InitNOParams:
    """`params` with the calibrated validity thresholds in place of its own."""
    return params.replace(cross_threshold=calibrated.cross, conflict_threshold=calibrated.conflict)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation (numpy's default), in plain Python."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to take a quantile of")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def calibrate(
    denoiser: Denoiser,
    prompts: Sequence[ImageRequest],
    key: str,
    *,
    noises_per_prompt: int = NOISES_PER_PROMPT,
    q: float = QUANTILE,
    batch_size: int = 8,
) -> Calibration:
    """Scores `noises_per_prompt` random noises (shaped like each request's noise; fixed seed) for each
    prompt and takes the q-quantile of the response losses and of the (ungated) conflicts."""
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    if any(len(p.subjects) < 2 for p in prompts):
        raise ValueError("calibration prompts need two subjects or more (the conflict score compares subjects)")
    generator = torch.Generator(device="cpu").manual_seed(CALIBRATION_SEED)
    jobs = [(p, torch.randn(p.noise.shape, generator=generator)) for p in prompts for _ in range(noises_per_prompt)]
    capture = denoiser.capture(backward=False)
    scorer = BatchScorer(denoiser, capture)
    scores: list[NoiseScores] = []
    with frozen_parameters(denoiser.unet), capture, torch.no_grad():
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first : first + batch_size]
            device = chunk[0][0].noise.device
            latents = torch.stack([noise.to(device=device, dtype=p.noise.dtype) for p, noise in chunk])
            evaluations = scorer.score(latents, [p for p, _ in chunk])
            scores += [NoiseScores.of(e) for e in evaluations]
    return Calibration(
        key=key,
        cross=quantile([s.cross for s in scores], q),
        conflict=quantile([s.conflict for s in scores], q),
        quantile=q,
        samples=len(scores),
    )


class CalibrationCache:
    """Calibrations by key (model hash, grid, procedure), in memory and, given a path, in a JSON file.

    The file is only a cache: a damaged one, or entries of another version or with impossible values, are
    ignored (calibrated again), and it is replaced whole, never left half written."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, Calibration] = {}
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, ValueError):
                stored = None
            if isinstance(stored, dict):
                read = {key: _stored_calibration(value) for key, value in stored.items()}
                self.entries = {key: entry for key, entry in read.items() if entry is not None}

    def get(self, key: str) -> Calibration | None:
        return self.entries.get(key)

    def put(self, calibration: Calibration) -> None:
        """Keeps `calibration`; OSError if the file cannot be written (it is kept in memory all the same)."""
        self.entries[calibration.key] = calibration
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            written = self.path.with_name(self.path.name + ".tmp")
            written.write_text(json.dumps({k: asdict(v) for k, v in self.entries.items()}, indent=1))
            written.replace(self.path)


def _stored_calibration(value) -> Calibration | None:
    """A stored entry of this version whose thresholds are scores a calibration can give (the response
    loss is in [0, 1], the conflict in [0, 0.5]); None for anything else."""
    if not isinstance(value, dict) or value.get("version") != VERSION:
        return None
    try:
        calibration = Calibration(**value)
    except TypeError:
        return None
    numbers = (calibration.cross, calibration.conflict, calibration.quantile)
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in numbers):
        return None
    if not isinstance(calibration.key, str) or isinstance(calibration.samples, bool):
        return None
    in_range = 0 <= calibration.cross <= 1 and 0 <= calibration.conflict <= 0.5
    return calibration if in_range and isinstance(calibration.samples, int) else None
