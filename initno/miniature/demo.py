"""`python -m initno demo`: one prompt and seed on the miniature, plain and with InitNO, side by side with
the diagnostic image, the scores printed pass by pass.

The default prompt and seed are the first of the benchmark's (prompts in order, seeds 0–7) where the plain
image misses a subject and the InitNO image shows both: a case picked to show what InitNO does, not a
typical one. `python -m initno eval` says how often that happens.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from ..params import InitNOParams
from . import WEIGHTS
from .detect import detect
from .evaluate import Miniworld, initial_noise
from .model import Miniature

TILE = 256


def _verdict(detection, subjects) -> str:
    found = [s.text for s, present in zip(subjects, detection.present) if present]
    missing = [s.text for s, present in zip(subjects, detection.present) if not present]
    text = "all subjects present" if not missing else f"missing: {', '.join(missing)}"
    if found and missing:
        text += f" (found: {', '.join(found)})"
    return text + ("; fused" if detection.fused else "")


def run_demo(prompt: str, seed: int, params: InitNOParams, output: Path, weights: Path | None = None) -> int:
    model = Miniature.load(weights or WEIGHTS)
    mini = Miniworld(model)
    subjects, positions = mini.subjects_of(prompt)
    cond = model.encode([prompt])
    noise = initial_noise(seed, mini.latent_shape)
    print("model: the miniature (64×64 coloured shapes, trained here on a CPU; not Stable Diffusion)")
    print(f"prompt: {prompt!r}, seed {seed}; subjects (nouns): {', '.join(s.shape for s in subjects)} at {positions}")
    print(f"valid when cross < {params.cross_threshold} and self < {params.conflict_threshold}")

    def progress(image, round_index, step, scores):
        phase = "fallback" if round_index == params.max_rounds else f"round {round_index + 1}/{params.max_rounds}"
        print(
            f"  {phase:<12} step {step + 1:>2}  cross {scores.cross:.4f}  self {scores.conflict:.4f}"
            f"  clean {scores.clean:.4f}  joint {scores.joint:.4f}"
        )

    result = mini.optimise(noise, seed, cond, positions, params, progress=progress)
    outcome = "reached the valid region" if result.valid else "did not reach the valid region"
    print(
        f"{outcome} after {result.rounds} round(s){' and the fallback run' if result.fallback else ''}, "
        f"{result.steps} UNet passes; cross {result.initial.cross:.4f} -> {result.final.cross:.4f}, "
        f"self {result.initial.conflict:.4f} -> {result.final.conflict:.4f}; KL {result.kl:.2e}"
    )
    import torch

    plain, optimised = mini.sample(torch.stack([noise, result.latent.reshape(noise.shape)]), cond)
    verdicts = [_verdict(detect(image, subjects), subjects) for image in (plain, optimised)]
    print(f"plain:  {verdicts[0]}\nInitNO: {verdicts[1]}")

    from ..diagnostics import render_diagnostics

    diagnostics = render_diagnostics(result, [s.shape for s in subjects], params)
    picture = side_by_side(prompt, seed, [("plain", plain, verdicts[0]), ("InitNO", optimised, verdicts[1])],
                           diagnostics.image if diagnostics else None)  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(output)
    print(f"picture: {output}")
    return 0


def side_by_side(prompt: str, seed: int, images, diagnostic: Image.Image | None) -> Image.Image:
    """The generated images (upscaled, nearest) over their verdicts, then the diagnostic image."""
    label = 44
    height = max(TILE + label + 30, diagnostic.height if diagnostic else 0)
    width = len(images) * (TILE + 16) + 16 + (diagnostic.width if diagnostic else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((16, 8), f"{prompt!r}, seed {seed}", fill="black")
    for index, (title, image, verdict) in enumerate(images):
        left = 16 + index * (TILE + 16)
        draw.text((left, 24), title, fill="black")
        canvas.paste(Image.fromarray(image).resize((TILE, TILE), Image.NEAREST), (left, label))
        draw.text((left, label + TILE + 6), verdict, fill="#2a2" if verdict.startswith("all") else "#d22")
    if diagnostic:
        canvas.paste(diagnostic, (len(images) * (TILE + 16) + 16, 0))
    return canvas
