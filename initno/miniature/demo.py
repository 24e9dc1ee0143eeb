"""`python -m initno demo`: one prompt and seed on the miniature: plain, the default method (Fast: the
best of a few noises by their attention a few sampling steps ahead) and InitNO as the WebUI runs it
(thresholds calibrated to the model; `--thresholds official`: SD1.4's), side by side with InitNO's
diagnostic image; the candidates' scores and InitNO's, pass by pass, printed.

The default prompt and seed are the first of the study split's (prompts in order, seeds from 0) where the
plain image misses a subject and both Fast's and InitNO's images show every subject, chosen when InitNO
ran the official thresholds (with the calibrated ones it still does): a case picked to show what the
methods do, not a typical one. `python -m initno eval` says how often that happens.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from .. import calibration
from ..optimize import ImageRequest
from ..params import InitNOParams
from ..selection import LookaheadParams, select_by_lookahead
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


def run_demo(
    prompt: str,
    seed: int,
    params: InitNOParams,
    output: Path,
    weights: Path | None = None,
    lookahead: LookaheadParams | None = None,
    thresholds: str = calibration.CALIBRATED,
) -> int:
    import torch

    model = Miniature.load(weights or WEIGHTS)
    mini = Miniworld(model)
    subjects, positions = mini.subjects_of(prompt)
    cond = model.encode([prompt])
    noise = initial_noise(seed, mini.latent_shape)
    print(f"model: {model.design.name} (64×64 coloured shapes, trained here on a CPU; not Stable Diffusion)")
    print(f"prompt: {prompt!r}, seed {seed}; subjects (nouns): {', '.join(s.shape for s in subjects)} at {positions}")

    lookahead = lookahead or LookaheadParams()
    (chosen,) = select_by_lookahead(mini.denoiser, mini.advance, [ImageRequest(noise, seed, cond, positions)],
                                    lookahead)  # fmt: skip
    when = f"after {lookahead.steps} sampling steps" if lookahead.steps else "as it is, as InitNO's first pass"
    print(f"Fast: {lookahead.candidates} noises, each scored {when}:")
    for index, scores in enumerate(chosen.candidates):  # counted from 1, as the WebUI's infotext
        own = "the seed's own noise" if index == 0 else f"restart draw {index}"
        mark = "  <- chosen" if index == chosen.chosen else ""
        print(f"  {index + 1}: cross {scores.cross:.4f}  self {scores.conflict:.4f}  ({own}){mark}")
    print(f"  {chosen.passes} UNet passes (forward only)")

    source = "official (SD1.4's)"
    if thresholds == calibration.CALIBRATED:
        calibrated = mini.calibrate().thresholds
        params, source = calibration.with_thresholds(params, calibrated), calibrated.source
    print(f"InitNO: valid when cross < {params.cross_threshold:.3f} and self < {params.conflict_threshold:.3f} "
          f"(thresholds: {source})")  # fmt: skip

    def progress(image, round_index, step, scores):
        phase = "fallback" if round_index == params.max_rounds else f"round {round_index + 1}/{params.max_rounds}"
        print(
            f"  {phase:<12} step {step + 1:>2}  cross {scores.cross:.4f}  self {scores.conflict:.4f}"
            f"  clean {scores.clean:.4f}  joint {scores.joint:.4f}"
        )

    (result,) = mini.optimise([noise], [seed], cond, positions, params, progress=progress)
    outcome = "reached the valid region" if result.valid else "did not reach the valid region"
    print(
        f"{outcome} after {result.rounds} round(s){' and the fallback run' if result.fallback else ''}, "
        f"{result.steps} UNet passes; cross {result.initial.cross:.4f} -> {result.final.cross:.4f}, "
        f"self {result.initial.conflict:.4f} -> {result.final.conflict:.4f}; KL {result.kl:.2e}"
    )
    latents = torch.stack([noise, chosen.latent.reshape(noise.shape), result.latent.reshape(noise.shape)])
    images = mini.sample(latents, cond)
    verdicts = [_verdict(detect(image, subjects), subjects) for image in images]
    print(f"plain:  {verdicts[0]}\nFast:   {verdicts[1]}\nInitNO: {verdicts[2]}")

    from ..diagnostics import render_diagnostics

    diagnostics = render_diagnostics(result, [s.shape for s in subjects], params)
    titles = ["plain", f"Fast ({chosen.passes} passes)", f"InitNO ({result.steps} passes)"]
    picture = side_by_side(
        prompt, seed, list(zip(titles, images, verdicts)), diagnostics.image if diagnostics else None
    )
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
