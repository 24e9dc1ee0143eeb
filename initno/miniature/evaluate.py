"""The subject-presence benchmark on the miniature: `python -m initno eval`.

Protocol (fixed before InitNO was measured with it): the 20 held-out pairs as "a <colour> <shape> and a
<colour> <shape>", seeds 0–7, DDIM 50 steps, guidance 7.5, InitNO at its default settings with the two
shape words as subjects (the nouns, as Attend-and-Excite's prompts name them). For each prompt and seed,
the same initial noise (`torch.randn` of a CPU generator seeded with the seed) is sampled:
- plain: as it is;
- best-of-n: InitNO's rounds without optimisation: the seed's noise and the restarts InitNO would draw,
  each scored once (one UNet pass), the first valid one or else the best-scored kept; how much of the gain
  is selection alone;
- initno: InitNO's optimised noise;
- ae: the seed's noise, with Attend-and-Excite's guidance during sampling;
- initno+: InitNO's optimised noise, with InitNO+'s guidance during sampling (the official script's setup).
The detector (`detect`) judges every image. Time is wall time per image, relative to plain sampling.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..guidance import GuidanceSettings, ImageGuidance
from ..optimize import Denoiser, ImageRequest, optimize_noise
from ..params import InitNOParams
from . import EVAL_METHODS, detect, world
from .model import Miniature, to_pixels
from .sampling import GUIDANCE, STEPS, first_timestep, sample

DEFAULT_SEEDS = range(0, 8)
METHODS = EVAL_METHODS


def initial_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def method_settings(method: str, params: InitNOParams) -> tuple[InitNOParams | None, GuidanceSettings | None]:
    """What a method runs: InitNO's settings (None: the noise as drawn) and the sampling guidance (None:
    plain sampling)."""
    noise = {
        "plain": None,
        "best-of-n": params.replace(steps_per_round=1, fallback_steps=0),  # one scored pass per round, no update
        "initno": params,
        "ae": None,
        "initno+": params,
    }
    if method not in noise:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    guidance = GuidanceSettings(method) if method in ("ae", "initno+") else None
    return noise[method], guidance


@dataclass
class Sample:
    prompt: str
    seed: int
    method: str
    image: np.ndarray
    detection: detect.Detection
    seconds: float
    passes: int = 0
    rounds: int = 0
    valid_at_start: bool | None = None
    valid_at_end: bool | None = None


@dataclass
class Miniworld:
    """The model with what every method needs: its UNet call, the empty prompt, the InitNO denoiser."""

    model: Miniature
    steps: int = STEPS
    guidance: float = GUIDANCE

    def __post_init__(self):
        self.uncond = self.model.encode([""])
        self.denoiser = Denoiser(unet=self.model.unet, apply=self.model.apply, timestep=first_timestep(self.steps))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        config = self.model.unet
        size = config.image_size
        return (config.in_channels, size, size)

    def subjects_of(self, prompt: str) -> tuple[list[world.Subject], list[list[int]]]:
        """The prompt's subjects and the token positions of their nouns (the shape words)."""
        from ..offline import read_prompt

        subjects = world.parse_caption(prompt)
        read = read_prompt(prompt, ", ".join(s.shape for s in subjects), tokenizer=self.model.tokenizer)
        return subjects, [list(s.positions) for s in read.subjects]

    def optimise(self, noise, seed, cond, positions, params: InitNOParams, progress=None):
        request = ImageRequest(noise, seed, cond, positions)
        (result,) = optimize_noise(self.denoiser, [request], params, progress=progress)
        return result

    def guides(self, count: int, cond, positions, settings: GuidanceSettings | None) -> list[ImageGuidance] | None:
        if settings is None:
            return None
        plan = settings.plan(self.steps)
        return [ImageGuidance(self.denoiser, cond, positions, plan) for _ in range(count)]

    def sample(self, latents: torch.Tensor, cond: torch.Tensor, guides=None) -> np.ndarray:
        x0 = sample(
            self.model.apply,
            latents,
            cond.expand(len(latents), -1, -1),
            self.uncond,
            steps=self.steps,
            guidance=self.guidance,
            guides=[g.guide for g in guides] if guides else None,
        )
        return to_pixels(x0)


def run_prompt(world_: Miniworld, prompt: str, seeds: Sequence[int], methods: Sequence[str], params: InitNOParams):
    """Every method on every seed of one prompt."""
    subjects, positions = world_.subjects_of(prompt)
    cond = world_.model.encode([prompt])
    noises = [initial_noise(seed, world_.latent_shape) for seed in seeds]
    samples = []
    for method in methods:
        settings, guidance = method_settings(method, params)
        began = time.perf_counter()
        latents, results = [], []
        for seed, noise in zip(seeds, noises):
            if settings is None:
                latents.append(noise)
                results.append(None)
                continue
            result = world_.optimise(noise, seed, cond, positions, settings)
            latents.append(result.latent.reshape(noise.shape))
            results.append(result)
        guides = world_.guides(len(seeds), cond, positions, guidance)
        images = world_.sample(torch.stack(latents), cond, guides)
        seconds = (time.perf_counter() - began) / len(seeds)
        for index, (seed, image, result) in enumerate(zip(seeds, images, results)):
            item = Sample(prompt, seed, method, image, detect.detect(image, subjects), seconds)
            if result is not None:
                item.passes, item.rounds = result.steps, result.rounds
                item.valid_at_start = result.trace[0].scores.is_valid(params.cross_threshold, params.conflict_threshold)
                item.valid_at_end = result.valid
            if guides:
                item.passes += guides[index].trace.passes
            samples.append(item)
    return samples


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def summarise(samples: Sequence[Sample], methods: Sequence[str]) -> list[dict]:
    plain_seconds = _mean(s.seconds for s in samples if s.method == "plain")
    rows = []
    for method in methods:
        mine = [s for s in samples if s.method == method]
        seconds = _mean(s.seconds for s in mine)
        rows.append(
            {
                "method": method,
                "images": len(mine),
                "all_present": _mean(s.detection.all_present for s in mine),
                "subject_present": _mean(p for s in mine for p in s.detection.present),
                "fused": _mean(s.detection.fused for s in mine),
                "valid_at_start": _mean(s.valid_at_start for s in mine),
                "valid_at_end": _mean(s.valid_at_end for s in mine),
                "rounds": _mean(s.rounds for s in mine) if method not in ("plain", "ae") else None,
                "passes": _mean(s.passes for s in mine),
                "seconds": seconds,
                "time_ratio": round(seconds / plain_seconds, 2) if plain_seconds and seconds else None,
            }
        )
    return rows


COLUMNS = (
    ("method", "method", "{}"),
    ("all_present", "all present", "{:.1%}"),
    ("subject_present", "per subject", "{:.1%}"),
    ("fused", "fused", "{:.1%}"),
    ("valid_at_start", "valid at start", "{:.1%}"),
    ("valid_at_end", "valid at end", "{:.1%}"),
    ("rounds", "rounds", "{:.2f}"),
    ("passes", "UNet passes", "{:.1f}"),
    ("time_ratio", "time ×", "{:.2f}"),
)


def format_table(rows: Sequence[dict]) -> str:
    cells = [[label for _, label, _ in COLUMNS]]
    for row in rows:
        cells.append(["–" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(text.ljust(w) for text, w in zip(line, widths)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def comparison_grid(samples: Sequence[Sample], methods: Sequence[str], columns: int = 4, scale: int = 2):
    """A PNG-ready image: per prompt one row, per seed (up to `columns`) the methods side by side; a green
    frame where the detector found every subject, red where not (orange: fused)."""
    from PIL import Image, ImageDraw

    prompts = list(dict.fromkeys(s.prompt for s in samples))
    seeds = list(dict.fromkeys(s.seed for s in samples))[:columns]
    by_key = {(s.prompt, s.seed, s.method): s for s in samples}
    tile, frame, gap, label = world.IMAGE_SIZE * scale, 3, 6, 18
    cell_width = len(methods) * (tile + 2 * frame) + gap
    width = len(seeds) * cell_width + 10
    height = label + len(prompts) * (tile + 2 * frame + label)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((5, 3), "  ".join(f"{m}" for m in methods) + " per seed; frame: green all present, red not, orange fused",
              fill="black")  # fmt: skip
    for row, prompt in enumerate(prompts):
        top = label + row * (tile + 2 * frame + label)
        draw.text((5, top + 2), prompt, fill="black")
        for column, seed in enumerate(seeds):
            for m, method in enumerate(methods):
                item = by_key.get((prompt, seed, method))
                if item is None:
                    continue
                left = 5 + column * cell_width + m * (tile + 2 * frame)
                colour = "#2a2" if item.detection.all_present else "#e80" if item.detection.fused else "#d22"
                draw.rectangle([left, top + label, left + tile + 2 * frame - 1, top + label + tile + 2 * frame - 1],
                               fill=colour)  # fmt: skip
                picture = Image.fromarray(item.image).resize((tile, tile), Image.NEAREST)
                canvas.paste(picture, (left + frame, top + label + frame))
    return canvas


def evaluate(
    model: Miniature,
    prompts: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str] = METHODS,
    params: InitNOParams | None = None,
    *,
    log=None,
) -> list[Sample]:
    params = params or InitNOParams()
    world_ = Miniworld(model)
    samples = []
    for index, prompt in enumerate(prompts):
        began = time.perf_counter()
        samples += run_prompt(world_, prompt, seeds, methods, params)
        if log:
            log(f"[{index + 1}/{len(prompts)}] {prompt}: {time.perf_counter() - began:.1f} s")
    return samples


def parse_seeds(text: str) -> list[int]:
    """ "0-7" or "1,5,9" (or a mix: "0-3,10")."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, last = (int(v) for v in part.split("-", 1))
            if last < first:
                raise ValueError(f"seed range {part!r} runs backwards")
            seeds += range(first, last + 1)
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        return world.evaluation_prompts()
    prompts = [
        line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for prompt in prompts:
        world.parse_caption(prompt)  # a clear error now rather than after minutes of sampling
    return prompts


def report(
    samples: Sequence[Sample], methods: Sequence[str], prompts: int, seeds: int, params: InitNOParams | None = None
) -> dict:
    """The table's rows, the InitNO parameters that differ from the official defaults, and every image's
    verdict (to find a case, or to compare two runs)."""
    params = params or InitNOParams()
    defaults = InitNOParams()
    changed = {
        spec.name: getattr(params, spec.name)
        for spec in dataclasses.fields(params)
        if getattr(params, spec.name) != getattr(defaults, spec.name)
    }
    images = [
        {
            "prompt": s.prompt,
            "seed": s.seed,
            "method": s.method,
            "present": [bool(p) for p in s.detection.present],
            "fused": bool(s.detection.fused),
            "valid_at_start": s.valid_at_start,
            "valid_at_end": s.valid_at_end,
            "passes": s.passes,
        }
        for s in samples
    ]
    return {
        "prompts": prompts,
        "seeds": seeds,
        "changed_params": changed,
        "rows": summarise(samples, methods),
        "images": images,
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
