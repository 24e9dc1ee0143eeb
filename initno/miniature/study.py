"""Which first-pass scores predict a good image, and how many candidates are worth scoring:
`python -m initno study`.

For each prompt and seed it draws the candidates selection-first InitNO would score (the seed's noise and
its restarts), scores each at two attention grids (1/4 of the input, as the method reads SD1; 1/2) and
samples every candidate plainly, so that any selection rule can then be replayed offline: choosing
candidate j of N costs no new image. Besides the first pass (InitNO's scores, on the noise itself) it also
scores each candidate's latent after a few of its own sampling steps (`LOOKAHEAD`): how much better the
attention predicts the image once the layout has begun to form. Run it on the study split only.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..attention import AttentionCapture
from ..optimize import BatchScorer, Denoiser, frozen_parameters
from ..selection import NoiseScores, candidate_noises
from . import detect
from .evaluate import Miniworld, initial_noise

GRIDS = {"quarter": 4, "half": 2}
LOOKAHEAD = (2, 3, 4, 7, 10)
"""Sampling steps (of 50) after which the candidates are scored again."""


def collect(world_: Miniworld, prompts: Sequence[str], seeds: Sequence[int], candidates: int, log=None) -> list[dict]:
    records = []
    for index, prompt in enumerate(prompts):
        began = time.perf_counter()
        subjects, positions = world_.subjects_of(prompt)
        cond = world_.model.encode([prompt])
        noises = torch.cat(
            [candidate_noises(initial_noise(seed, world_.latent_shape), seed, candidates) for seed in seeds]
        )
        features = {name: _scores(world_, noises, cond, positions, downsample) for name, downsample in GRIDS.items()}
        later: dict[str, list[NoiseScores]] = {}

        def observe(step, x, timestep, cond=cond, positions=positions, later=later):
            if step in LOOKAHEAD:
                for name, downsample in GRIDS.items():
                    later[f"step{step}_{name}"] = _scores(world_, x, cond, positions, downsample, timestep)

        images = world_.sample(noises, cond, observe=observe)
        for n, image in enumerate(images):
            detection = detect.detect(image, subjects)
            records.append(
                {
                    "prompt": prompt,
                    "seed": seeds[n // candidates],
                    "candidate": n % candidates,
                    "all_present": bool(detection.all_present),
                    "present": [bool(p) for p in detection.present],
                    "fused": bool(detection.fused),
                    **{
                        f"{grid}_{key}": getattr(scores[n], key)
                        for grid, scores in features.items()
                        for key in ("cross", "conflict", "clean")
                    },
                    **{name: list(dataclasses.astuple(scores[n])) for name, scores in later.items()},
                }
            )
        if log:
            log(f"[{index + 1}/{len(prompts)}] {prompt}: {time.perf_counter() - began:.1f} s")
    return records


def _scores(world_: Miniworld, noises, cond, positions, downsample: int, timestep=None, batch=32) -> list[NoiseScores]:
    timestep = world_.denoiser.timestep if timestep is None else timestep
    denoiser = Denoiser(world_.denoiser.unet, world_.denoiser.apply, timestep, downsample=downsample)
    capture = AttentionCapture(denoiser.unet, downsample=downsample)
    scorer = BatchScorer(denoiser, capture)
    scores = []
    with frozen_parameters(denoiser.unet), capture, torch.no_grad():
        for first in range(0, len(noises), batch):
            chunk = noises[first : first + batch]
            count = len(chunk)
            evaluations = scorer(chunk, [cond] * count, [positions] * count, [None] * count)
            scores += [NoiseScores.of(e) for e in evaluations]
    return scores


RULES: dict[str, Callable[[dict, str], float]] = {
    "official rank": lambda r, g: r[f"{g}_cross"] + (r[f"{g}_conflict"] if r[f"{g}_cross"] <= 0.5 else 1.0),
    "cross": lambda r, g: r[f"{g}_cross"],
    "conflict": lambda r, g: r[f"{g}_conflict"],
    "cross + conflict": lambda r, g: r[f"{g}_cross"] + r[f"{g}_conflict"],
    "cross + conflict + clean": lambda r, g: r[f"{g}_cross"] + r[f"{g}_conflict"] + r[f"{g}_clean"],
}


def _groups(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for record in records:
        groups.setdefault((record["prompt"], record["seed"]), []).append(record)
    for group in groups.values():
        group.sort(key=lambda r: r["candidate"])
    return groups


def replay(records: list[dict], rank: Callable[[dict], float], count: int) -> float:
    """Share of (prompt, seed) whose best-ranked of the first `count` candidates shows every subject."""
    groups = _groups(records)
    hits = [min(group[:count], key=lambda r: (rank(r), r["candidate"]))["all_present"] for group in groups.values()]
    return float(np.mean(hits))


def standardised(records: list[dict], grid: str, weights: tuple[float, float, float]) -> Callable[[dict], float]:
    """A rank from each score divided by its spread over these records (what a calibration can know)."""
    spreads = [float(np.std([r[f"{grid}_{k}"] for r in records])) or 1.0 for k in ("cross", "conflict", "clean")]
    keys = ("cross", "conflict", "clean")
    return lambda r: sum(w * r[f"{grid}_{k}"] / s for w, k, s in zip(weights, keys, spreads))


def table(records: list[dict], counts: Sequence[int] = (1, 2, 3, 4, 6, 8)) -> str:
    counts = [c for c in counts if c <= 1 + max(r["candidate"] for r in records)]
    groups = _groups(records)
    lines = ["| rule | grid | " + " | ".join(f"N={c}" for c in counts) + " |", "|---|---|" + "---|" * len(counts)]
    oracle = [float(np.mean([any(r["all_present"] for r in g[:c]) for g in groups.values()])) for c in counts]
    lines.append("| any candidate (oracle) | – | " + " | ".join(f"{v:.1%}" for v in oracle) + " |")
    for grid in GRIDS:
        rules = {name: (lambda r, rule=rule, grid=grid: rule(r, grid)) for name, rule in RULES.items()}
        for ratio in (0.5, 1.0, 2.0):
            rules[f"std cross + {ratio}·std conflict"] = standardised(records, grid, (1.0, ratio, 0.0))
        for name, rule in rules.items():
            values = [replay(records, rule, c) for c in counts]
            lines.append(f"| {name} | {grid} | " + " | ".join(f"{v:.1%}" for v in values) + " |")
    return "\n".join(lines)


def lookahead_table(records: list[dict], counts: Sequence[int] = (1, 2, 3, 4, 6, 8)) -> str:
    """Selection by the scores after k sampling steps (cross + conflict), and each score's AUC."""
    counts = [c for c in counts if c <= 1 + max(r["candidate"] for r in records)]
    outcome = np.asarray([r["all_present"] for r in records])
    lines = ["| scored after | grid | AUC cross | AUC conflict | " + " | ".join(f"N={c}" for c in counts) + " |",
             "|---|---|---|---|" + "---|" * len(counts)]  # fmt: skip
    for step in (0, *LOOKAHEAD):
        for grid in GRIDS:
            if step == 0:
                values = [(r[f"{grid}_cross"], r[f"{grid}_conflict"]) for r in records]
            elif f"step{step}_{grid}" in records[0]:
                values = [tuple(r[f"step{step}_{grid}"][:2]) for r in records]
            else:
                continue
            for record, value in zip(records, values):
                record["_rank"] = sum(value)
            aucs = [auc(np.asarray([v[i] for v in values]), outcome) for i in (0, 1)]
            shares = [replay(records, lambda r: r["_rank"], c) for c in counts]
            lines.append(f"| {step} steps | {grid} | {aucs[0]:.3f} | {aucs[1]:.3f} | "
                         + " | ".join(f"{v:.1%}" for v in shares) + " |")  # fmt: skip
    for record in records:
        record.pop("_rank", None)
    return "\n".join(lines)


def auc(scores: np.ndarray, success: np.ndarray) -> float:
    """Probability that a successful noise scores lower (better) than a failed one (ties count half)."""
    good, bad = scores[success], scores[~success]
    if not len(good) or not len(bad):
        return float("nan")
    return float((good[:, None] < bad[None, :]).mean() + 0.5 * (good[:, None] == bad[None, :]).mean())


def write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
