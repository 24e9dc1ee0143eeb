"""The subject-presence benchmark on the miniature: `python -m initno eval`.

Protocol (fixed before the methods were measured with it): prompts "a <colour> <shape> and a <colour>
<shape>" from the held-out pairs (and, on the three-subject miniature, the held-out triples), split into a
study half (where anything is chosen) and a confirm half (where claims are reported; `Split`); DDIM 50
steps, guidance 7.5; the shape words as subjects (the nouns, as Attend-and-Excite's prompts name them).
For each prompt and seed the same initial noise (`torch.randn` of a CPU generator seeded with the seed)
goes to every method:
- plain: as it is;
- best-of-n: n candidates (the seed's noise and the restarts InitNO draws) scored once each, the best
  kept, no optimisation; n defaults to the mean UNet passes of `lookahead` or else `select` in the same run
  (equal passes);
- lookahead: the WebUI's Fast, the candidate whose attention is best after a few sampling steps
  (`select_by_lookahead`);
- select: the early study's selection-first InitNO (`select_and_polish`: the best of many candidates
  by first-pass scores, then a short polish) with thresholds calibrated to the model (`initno.calibration`,
  on training-pair prompts, never the evaluated ones); not the WebUI's Fast, which is `lookahead`;
- initno: the official InitNO (`initno.optimize`), with the calibrated thresholds as in the WebUI
  (`--set thresholds=official`: the official ones); the seeds' passes batched, each image with its own
  rounds and early stop (one by one until Confirm 7's runs: the same within float tolerance);
- ae: the seed's noise with Attend-and-Excite's guidance during sampling;
- initno+ / select+ / lookahead+: InitNO's / select's / lookahead's noise with InitNO+'s guidance during
  sampling.
The images are sampled under bf16 autocast (fixed before the lookahead default was measured; the methods'
own passes stay float32); `--fp32-sampling` gives the protocol of the earlier tables.
The detector (`detect`) judges every image. Seeds of one prompt share UNet calls (batches); an image's
result depends on its neighbours only within float tolerance. Each row has a Wilson 95 % interval, and
each method is compared with plain and with best-of-n on the same (prompt, seed) pairs: exact McNemar test
and a bootstrap over prompts. Time per image is the method's own work plus the sampling, as measured in this run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import calibration
from ..guidance import GuidanceSettings, ImageGuidance
from ..optimize import Denoiser, ImageRequest, optimize_noise
from ..params import InitNOParams
from ..selection import (
    LookaheadParams,
    SelectionParams,
    Thresholds,
    select_and_polish,
    select_by_lookahead,
)
from . import EVAL_METHODS, detect, stats, world
from .model import Miniature, fused_attention
from .sampling import GUIDANCE, STEPS, ddim_timesteps, first_timestep, sample


@dataclass(frozen=True)
class Split:
    """Prompts and seeds: anything chosen is chosen on the study split, and claims are reported on the
    confirm split, which nothing was chosen on. The held-out pairs split by their first subject's shape
    (circle/triangle first: study; square/cross first: confirm), so every subject is in one pair of each."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]


STUDY = Split(tuple(world.evaluation_prompts()[0::2]), tuple(range(0, 32)))
CONFIRM = Split(tuple(world.evaluation_prompts()[1::2]), tuple(range(20_000, 20_064)))
"""Seeds 10000–10063 were spent on the first confirm run (lookahead 4 × 4 steps, docs/selection-study.md);
a claim about a setting chosen after it gets fresh seeds."""
SPLITS = {"study": STUDY, "confirm": CONFIRM}
# The three-subject miniature: the same halves of the pairs plus the same halves of the triples, with
# half the seeds, so a split has as many images as on the first miniature (study 320, confirm 640).
STUDY_3 = Split(STUDY.prompts + tuple(world.triple_prompts()[0::2]), tuple(range(0, 16)))
CONFIRM_3 = Split(CONFIRM.prompts + tuple(world.triple_prompts()[1::2]), tuple(range(10_000, 10_032)))


def splits_of(model: Miniature) -> dict[str, Split]:
    """The study and confirm splits for this miniature (with triples where it was trained on them)."""
    return {"study": STUDY_3, "confirm": CONFIRM_3} if model.design.triple_share else SPLITS


def initial_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


GUIDANCE_OF = {"ae": "ae", "initno+": "initno+", "select+": "initno+", "lookahead+": "initno+"}
"""Methods that guide the sampling, and with which guidance."""
GUIDANCE_SETTINGS = {"guided_fraction": float, "step_scale": float, "max_refinement": int}
"""The guidance settings a run may change (`--set guidance_step_scale=5`), with their types."""
NOISE_OF = {"plain": "plain", "ae": "plain", "initno+": "initno", "select+": "select", "lookahead+": "lookahead"}
"""Methods whose initial noise is another method's."""
CALIBRATION_PROMPTS = tuple(world.pair_caption(a, b) for a, b in world.TRAINING_PAIRS[::13][:8])
"""Two-subject prompts of pairs the model was trained on: a calibration never sees the evaluated prompts."""
DEFAULT_BEST_OF = 5
THRESHOLD_SOURCES = (calibration.CALIBRATED, calibration.OFFICIAL)


@dataclass(frozen=True)
class EvalSettings:
    """Everything a run can change: InitNO's parameters, selection's, the calibration quantile, best-of-n's
    n (None: equal passes to `lookahead` or `select` in the same run, else 5), the lookahead's."""

    params: InitNOParams = field(default_factory=InitNOParams)
    selection: SelectionParams = field(default_factory=SelectionParams)
    quantile: float = calibration.QUANTILE
    n: int | None = None
    lookahead: LookaheadParams = field(default_factory=LookaheadParams)
    bf16_sampling: bool = True
    """The protocol since the lookahead default (issue 19): sampling under bf16 autocast (`Miniworld`)."""
    guidance: dict[str, float] = field(default_factory=dict)
    """The guided methods' settings other than the official ones (`GUIDANCE_SETTINGS`)."""
    thresholds: str = calibration.CALIBRATED
    """Where initno's and initno+'s validity thresholds come from, as in the WebUI: the calibration (the
    default since issue 19) or `params` (`--set thresholds=official`: 0.2 and 0.3 unless changed)."""

    def guidance_of(self, method: str) -> GuidanceSettings:
        return GuidanceSettings(GUIDANCE_OF[method], **self.guidance)

    @classmethod
    def from_assignments(
        cls, assignments: Sequence[str], n: int | None = None, bf16_sampling: bool = True
    ) -> EvalSettings:
        """`NAME=VALUE` for any field of InitNOParams or SelectionParams, `lookahead_` and a field of
        LookaheadParams, `guidance_` and one of `GUIDANCE_SETTINGS`, `quantile`, or `thresholds`; validated."""
        initno_names = {f.name for f in dataclasses.fields(InitNOParams)}
        selection_names = {f.name for f in dataclasses.fields(SelectionParams)}
        lookahead_names = {f"lookahead_{f.name}" for f in dataclasses.fields(LookaheadParams)}
        guidance_names = {f"guidance_{name}": kind for name, kind in GUIDANCE_SETTINGS.items()}
        initno, selection, lookahead, guidance, quantile = [], {}, {}, {}, calibration.QUANTILE
        thresholds = calibration.CALIBRATED
        for assignment in assignments:
            name, equals, text = assignment.partition("=")
            name = name.strip()
            if name == "thresholds" and equals:
                thresholds = text.strip()
                if thresholds not in THRESHOLD_SOURCES:
                    raise ValueError(f"thresholds must be one of {', '.join(THRESHOLD_SOURCES)}, got {thresholds!r}")
            elif name in guidance_names:
                value = _parse(name, text, guidance_names[name])
                if value < 0:
                    raise ValueError(f"parameter {name!r} must not be negative, got {value}")
                guidance[name.removeprefix("guidance_")] = value
            elif name in lookahead_names:
                lookahead[name.removeprefix("lookahead_")] = _parse(name, text, int)
            elif name in selection_names or name == "quantile":
                value = _parse(name, text, float)
                if name == "quantile":
                    if not 0 < value < 1:
                        raise ValueError(f"quantile must be between 0 and 1, got {value}")
                    quantile = value
                else:
                    if value != int(value):
                        raise ValueError(f"selection parameter {name!r} must be a whole number, got {value}")
                    selection[name] = int(value)
            elif equals and name in initno_names:
                initno.append(assignment)
            else:
                known = [initno_names, selection_names, lookahead_names, guidance_names, {"quantile", "thresholds"}]
                names = ", ".join(name for group in known for name in sorted(group))
                raise ValueError(f"{assignment!r}: expected NAME=VALUE with NAME one of {names}")
        if n is not None and n < 1:
            raise ValueError(f"--n must be at least 1, got {n}")
        params = InitNOParams.from_assignments(initno)
        default = InitNOParams()
        fixed = [name for name in calibration.THRESHOLD_PARAMS if getattr(params, name) != getattr(default, name)]
        if fixed and thresholds == calibration.CALIBRATED:
            # As in the WebUI, a calibration replaces them; silently ignoring a set value would mislead.
            raise ValueError(f"{fixed[0]!r} is used with fixed thresholds: add --set thresholds=official")
        return cls(
            params,
            SelectionParams(**selection),
            quantile,
            n,
            LookaheadParams(**lookahead),
            bf16_sampling,
            guidance,
            thresholds,
        )

    def changed(self) -> dict:
        """What differs from the defaults, for the report."""
        changes = {}
        groups = ((self.params, InitNOParams(), ""), (self.selection, SelectionParams(), ""),
                  (self.lookahead, LookaheadParams(), "lookahead_"))  # fmt: skip
        for current, default, prefix in groups:
            for spec in dataclasses.fields(current):
                if getattr(current, spec.name) != getattr(default, spec.name):
                    changes[prefix + spec.name] = getattr(current, spec.name)
        if self.quantile != calibration.QUANTILE:
            changes["quantile"] = self.quantile
        if self.n is not None:
            changes["n"] = self.n
        if not self.bf16_sampling:
            changes["bf16_sampling"] = False
        if self.thresholds != calibration.CALIBRATED:
            changes["thresholds"] = self.thresholds
        changes.update({f"guidance_{name}": value for name, value in self.guidance.items()})
        return changes


def _parse(name: str, text: str, kind: type) -> float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"parameter {name!r} must be {what}, got {text.strip()!r}") from None


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in EVAL_METHODS]
    renamed = {"fast": "select", "fast+": "select+"}
    if unknown and unknown[0] in renamed:
        raise ValueError(f"method {unknown[0]!r} is now {renamed[unknown[0]]!r} (select and polish); "
                         "the WebUI's Fast is 'lookahead'")  # fmt: skip
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; methods: {', '.join(EVAL_METHODS)}")
    if not methods:
        raise ValueError("no method to run")


@dataclass(kw_only=True)
class NoiseInfo:
    """What a method's noise cost and reached."""

    passes: int = 0
    rounds: int = 0
    chosen: int | None = None
    valid_at_start: bool | None = None
    valid_at_end: bool | None = None


@dataclass(kw_only=True)
class Sample(NoiseInfo):
    prompt: str
    seed: int
    method: str
    image: np.ndarray
    detection: detect.Detection
    seconds: float


@dataclass(kw_only=True)
class _Noise(NoiseInfo):
    """A method's initial noise for one image, and what to report about it."""

    latent: torch.Tensor
    key: tuple | None = None
    """Same key, same noise: the image is sampled once (e.g. a candidate chosen by two methods)."""


@dataclass
class _Prompt:
    text: str
    subjects: list
    positions: list
    cond: torch.Tensor
    noises: list[torch.Tensor]


@dataclass
class Miniworld:
    """The model with what every method needs: its UNet call, the empty prompt, the InitNO denoiser."""

    model: Miniature
    steps: int = STEPS
    guidance: float = GUIDANCE
    bf16_sampling: bool = False
    """The images' sampler runs its UNet passes under bf16 autocast (CPUs with bf16 units: about 1.7×
    faster; the eval's protocol). The methods' own passes (scores, optimisation, lookahead, guidance) stay
    in float32."""

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

    def optimise(self, noises, seeds, cond, positions, params: InitNOParams, progress=None, batch_size: int = 16):
        """InitNO for one prompt's noises: their passes batched (results as one by one within float
        tolerance, `optimize_noise`)."""
        requests = [ImageRequest(noise, seed, cond, positions) for noise, seed in zip(noises, seeds)]
        return optimize_noise(self.denoiser, requests, params, progress=progress, batch_size=batch_size)

    def calibrate(self, q: float = calibration.QUANTILE) -> calibration.Calibration:
        requests = []
        for prompt in CALIBRATION_PROMPTS:
            _, positions = self.subjects_of(prompt)
            requests.append(ImageRequest(torch.zeros(self.latent_shape), 0, self.model.encode([prompt]), positions))
        return calibration.calibrate(self.denoiser, requests, "miniature", q=q)

    def guides(self, count: int, cond, positions, settings: GuidanceSettings | None) -> list[ImageGuidance] | None:
        if settings is None:
            return None
        plan = settings.plan(self.steps)
        return [ImageGuidance(self.denoiser, cond, positions, plan) for _ in range(count)]

    def advance(self, latents: torch.Tensor, conds, steps: int) -> tuple[torch.Tensor, int]:
        """The sampler's first `steps` steps (with guidance), for `select_by_lookahead`."""
        cond = torch.cat([c.expand(1, *c.shape[1:]) for c in conds])
        with fused_attention(self.model.unet):
            ahead = sample(self.model.apply, latents, cond, self.uncond, steps=self.steps, guidance=self.guidance,
                           until=steps)  # fmt: skip
        return ahead, ddim_timesteps(self.steps)[steps]

    def sample(self, latents: torch.Tensor, cond: torch.Tensor, guides=None, batch: int = 64, observe=None):
        """Images of `latents` (B, C, H, W) for one prompt; unguided in batches of `batch`."""
        if guides is None and observe is None and len(latents) > batch:
            return np.concatenate([self.sample(latents[i : i + batch], cond) for i in range(0, len(latents), batch)])
        with fused_attention(self.model.unet):
            x0 = sample(
                self._sampling_apply,
                latents,
                cond.expand(len(latents), -1, -1),
                self.uncond,
                steps=self.steps,
                guidance=self.guidance,
                guides=[g.guide for g in guides] if guides else None,
                observe=observe,
            )
        return self.model.design.to_pixels(x0)

    def _sampling_apply(self, latent, timesteps, cond):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_sampling):
            return self.model.apply(latent, timesteps, cond).float()


class Benchmark:
    """One run: every method over every prompt and seed (method by method, seeds batched)."""

    def __init__(self, model: Miniature, settings: EvalSettings, log=None):
        self.world = Miniworld(model, bf16_sampling=settings.bf16_sampling)
        self.settings = settings
        self.log = log or (lambda line: None)
        self.thresholds: Thresholds | None = None
        self.noises: dict[tuple[str, str], list[_Noise]] = {}
        self.images: dict[tuple, np.ndarray] = {}
        self.sampling_seconds: list[float] = []
        self.passes: dict[str, list[int]] = {}

    def run(self, prompts: Sequence[str], seeds: Sequence[int], methods: Sequence[str]) -> list[Sample]:
        check_methods(methods)
        calibrated = ("select", "select+", "best-of-n")
        if self.settings.thresholds == calibration.CALIBRATED:
            calibrated += ("initno", "initno+")
        if any(m in calibrated for m in methods):
            began = time.perf_counter()
            self.thresholds = self.world.calibrate(self.settings.quantile).thresholds
            self.log(f"calibration: {self.thresholds} ({time.perf_counter() - began:.1f} s)")
        contexts = [self._prompt(p, seeds) for p in prompts]
        samples = []
        for method in sorted(methods, key=lambda m: m == "best-of-n"):  # best-of-n matches the selection's passes
            began = time.perf_counter()
            for context in contexts:
                samples += self._method(method, context, seeds)
            self.log(f"{method}: {time.perf_counter() - began:.1f} s")
        order = {m: i for i, m in enumerate(methods)}
        return sorted(samples, key=lambda s: order[s.method])

    def _prompt(self, prompt: str, seeds: Sequence[int]) -> _Prompt:
        subjects, positions = self.world.subjects_of(prompt)
        noises = [initial_noise(seed, self.world.latent_shape) for seed in seeds]
        return _Prompt(prompt, subjects, positions, self.world.model.encode([prompt]), noises)

    def best_of(self) -> int:
        if self.settings.n is not None:
            return self.settings.n
        for method in ("lookahead", "select"):  # equal passes to the selection method of the run
            if self.passes.get(method):
                return max(1, round(float(np.mean(self.passes[method]))))
        return DEFAULT_BEST_OF

    def _method(self, method: str, context: _Prompt, seeds: Sequence[int]) -> list[Sample]:
        began = time.perf_counter()
        noises = self._noises(NOISE_OF.get(method, method), context, seeds)
        noise_seconds = (time.perf_counter() - began) / len(seeds)
        guidance = self.settings.guidance_of(method) if method in GUIDANCE_OF else None
        if guidance is None:
            images = self._unguided(context, noises)
            image_seconds = [noise_seconds + float(np.mean(self.sampling_seconds))] * len(seeds)
        else:
            began = time.perf_counter()
            guides = self.world.guides(len(seeds), context.cond, context.positions, guidance)
            images = self.world.sample(torch.stack([n.latent for n in noises]), context.cond, guides)
            image_seconds = [noise_seconds + (time.perf_counter() - began) / len(seeds)] * len(seeds)
        samples = []
        for index, (seed, noise, image) in enumerate(zip(seeds, noises, images)):
            info = {f.name: getattr(noise, f.name) for f in dataclasses.fields(NoiseInfo)}
            detection = detect.detect(image, context.subjects)
            item = Sample(prompt=context.text, seed=seed, method=method, image=image, detection=detection,
                          seconds=image_seconds[index], **info)  # fmt: skip
            if guidance is not None:
                item.passes += guides[index].trace.passes
            samples.append(item)
        self.passes.setdefault(method, []).extend(s.passes for s in samples)
        return samples

    def _unguided(self, context: _Prompt, noises: list[_Noise]) -> list[np.ndarray]:
        missing = [n for n in noises if n.key is None or n.key not in self.images]
        unique = list({id(n) if n.key is None else n.key: n for n in missing}.values())
        if unique:
            began = time.perf_counter()
            images = self.world.sample(torch.stack([n.latent for n in unique]), context.cond)
            self.sampling_seconds.append((time.perf_counter() - began) / len(unique))
            fresh = {id(n): image for n, image in zip(unique, images)}
            for n, image in zip(unique, images):
                if n.key is not None:
                    self.images[n.key] = image
        return [self.images[n.key] if n.key is not None else fresh[id(n)] for n in noises]

    def _noises(self, method: str, context: _Prompt, seeds: Sequence[int]) -> list[_Noise]:
        cached = self.noises.get((method, context.text))
        if cached is not None:
            return cached
        if method == "plain":
            noises = [_Noise(latent=n, key=(context.text, s, 0)) for s, n in zip(seeds, context.noises)]
        elif method in ("select", "best-of-n"):
            selection = self.settings.selection
            if method == "best-of-n":
                selection = SelectionParams(candidates=self.best_of(), polish_steps=0)
            requests = [ImageRequest(n, s, context.cond, context.positions) for s, n in zip(seeds, context.noises)]
            results = select_and_polish(self.world.denoiser, requests, selection, self.thresholds,
                                        self.settings.params, batch_size=32)  # fmt: skip
            noises = [
                _Noise(
                    latent=r.latent,
                    key=(context.text, s, r.chosen) if r.polish_steps == 0 else None,
                    passes=r.passes,
                    rounds=1,
                    chosen=r.chosen,
                    valid_at_start=self.thresholds.reached(r.candidates[0].cross, r.candidates[0].conflict),
                    valid_at_end=r.reached,
                )
                for s, r in zip(seeds, results)
            ]
        elif method == "lookahead":
            requests = [ImageRequest(n, s, context.cond, context.positions) for s, n in zip(seeds, context.noises)]
            results = select_by_lookahead(self.world.denoiser, self.world.advance, requests, self.settings.lookahead)
            noises = [
                _Noise(latent=r.latent, key=(context.text, s, r.chosen), passes=r.passes, rounds=1, chosen=r.chosen)
                for s, r in zip(seeds, results)
            ]
        elif method == "initno":
            params = self.settings.params
            if self.settings.thresholds == calibration.CALIBRATED:
                params = calibration.with_thresholds(params, self.thresholds)
            noises = []
            results = self.world.optimise(context.noises, seeds, context.cond, context.positions, params)
            for noise, result in zip(context.noises, results):
                start = result.trace[0].scores.is_valid(params.cross_threshold, params.conflict_threshold)
                latent = result.latent.reshape(noise.shape)
                noises.append(_Noise(latent=latent, passes=result.steps, rounds=result.rounds, valid_at_start=start,
                                     valid_at_end=result.valid))  # fmt: skip
        else:
            raise ValueError(f"unknown method {method!r}; methods: {', '.join(EVAL_METHODS)}")
        self.noises[(method, context.text)] = noises
        return noises


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _paired(mine: list[dict], other: list[dict]) -> dict | None:
    """`mine` against `other` on the (prompt, seed) pairs both have."""
    if not other or mine[0]["method"] == other[0]["method"]:
        return None
    by_key = {(r["prompt"], r["seed"]): all(r["present"]) for r in other}
    pairs = [(all(r["present"]), by_key[(r["prompt"], r["seed"])], r["prompt"]) for r in mine
             if (r["prompt"], r["seed"]) in by_key]  # fmt: skip
    if not pairs:
        return None
    a, b, prompts = zip(*pairs)
    wins, losses, p = stats.mcnemar_exact(a, b)
    difference, low, high = stats.bootstrap_difference(a, b, prompts)
    return {"difference": round(difference, 4), "interval": [round(low, 4), round(high, 4)], "wins": wins,
            "losses": losses, "p": p, "pairs": len(pairs)}  # fmt: skip


def summarise(records: Sequence[dict], methods: Sequence[str], best_of: int | None = None,
              against: str | None = None) -> list[dict]:  # fmt: skip
    """A row per method from the images' verdicts (`verdicts`): its share with every subject and Wilson
    interval, its costs, and paired tests against plain, best-of-n, its noise's method (guided methods)
    and `against`, each where the run has it."""
    by_method: dict[str, list[dict]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    plain = by_method.get("plain", [])
    plain_seconds = _mean(r.get("seconds") for r in plain) or None
    rows = []
    for method in methods:
        mine = by_method.get(method, [])
        hits = sum(all(r["present"]) for r in mine)
        low, high = stats.wilson(hits, len(mine))
        seconds = _mean(r.get("seconds") for r in mine)
        row = {
            "method": method if method != "best-of-n" or best_of is None else f"best-of-{best_of}",
            "images": len(mine),
            "all_present": _mean(all(r["present"]) for r in mine),
            "interval": [round(low, 4), round(high, 4)],
            "subject_present": _mean(p for r in mine for p in r["present"]),
            "fused": _mean(r["fused"] for r in mine),
            "valid_at_start": _mean(r["valid_at_start"] for r in mine),
            "valid_at_end": _mean(r["valid_at_end"] for r in mine),
            "passes": _mean(r["passes"] for r in mine),
            "seconds": seconds,
            "time_ratio": round(seconds / plain_seconds, 2) if plain_seconds and seconds else None,
            "vs_plain": _paired(mine, plain),
            "vs_best_of_n": _paired(mine, by_method.get("best-of-n", [])),
            "vs_noise": _paired(mine, by_method.get(NOISE_OF[method], [])) if method in GUIDANCE_OF else None,
        }
        if against is not None:
            row["vs_against"] = _paired(mine, by_method.get(against, []))
        rows.append(row)
    return rows


def _share(row: dict) -> str:
    low, high = row["interval"]
    return f"{row['all_present']:.1%} [{low:.1%}, {high:.1%}]"


def _versus(comparison: dict | None) -> str:
    if comparison is None:
        return "–"
    low, high = comparison["interval"]
    p = comparison["p"]
    return (f"{comparison['difference'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] "
            f"{comparison['wins']}/{comparison['losses']} p={p:.2g}")  # fmt: skip


COLUMNS = (
    ("method", "method", lambda row: row["method"]),
    ("all_present", "all present [95 % CI]", _share),
    ("subject_present", "per subject", lambda row: f"{row['subject_present']:.1%}"),
    ("fused", "fused", lambda row: f"{row['fused']:.1%}"),
    ("valid_at_end", "thresholds reached", lambda row: f"{row['valid_at_end']:.1%}"),
    ("passes", "UNet passes", lambda row: f"{row['passes']:.1f}"),
    ("seconds", "s/image", lambda row: f"{row['seconds']:.2f}"),
    ("vs_plain", "vs plain: points [CI] won/lost p", lambda row: _versus(row["vs_plain"])),
    ("vs_best_of_n", "vs best-of-n", lambda row: _versus(row["vs_best_of_n"])),
    ("vs_noise", "guided vs its noise alone", lambda row: _versus(row["vs_noise"])),
)


def format_table(rows: Sequence[dict], against: str | None = None) -> str:
    columns = list(COLUMNS)
    if against is not None:
        columns.append(("vs_against", f"vs {against}", lambda row: _versus(row["vs_against"])))
    cells = [[label for _, label, _ in columns]]
    for row in rows:
        cells.append(["–" if row[key] is None else fmt(row) for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
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


def read_prompts(path: str) -> list[str]:
    """The prompts of a file, one a line (`#` starts a comment line), each checked against the world."""
    prompts = [
        line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for prompt in prompts:
        world.parse_caption(prompt)  # a clear error now rather than after minutes of sampling
    return prompts


def verdicts(samples: Sequence[Sample]) -> list[dict]:
    """Every image's verdict and costs: what a report keeps, the table is computed from, and `compare`
    pools across reports."""
    return [
        {
            "prompt": s.prompt,
            "seed": s.seed,
            "method": s.method,
            "present": [bool(p) for p in s.detection.present],
            "fused": bool(s.detection.fused),
            "valid_at_start": s.valid_at_start,
            "valid_at_end": s.valid_at_end,
            "passes": s.passes,
            "chosen": s.chosen,
            "seconds": round(s.seconds, 4),
        }
        for s in samples
    ]


def report(samples: Sequence[Sample], methods: Sequence[str], prompts: int, seeds: int, settings: EvalSettings,
           thresholds: Thresholds | None = None, best_of: int | None = None,
           model: str | None = None) -> dict:  # fmt: skip
    """The table's rows, the model, the settings that differ from the defaults, the calibrated thresholds,
    and every image's verdict (to find a case, to compare two runs, to pool runs over other seeds)."""
    images = verdicts(samples)
    return {
        "model": model,
        "prompts": prompts,
        "seeds": seeds,
        "changed_params": settings.changed(),
        "thresholds": dataclasses.asdict(thresholds) if thresholds else None,
        "best_of": best_of,
        "rows": summarise(images, methods, best_of),
        "images": images,
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
