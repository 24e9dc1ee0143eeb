"""The diagnostic images: one per optimised or guided image, after the generated ones."""

from __future__ import annotations

from modules import images, shared

from ..diagnostics import diagnostic_image
from ..params import InitNOParams
from .infotext import ImageOutcome


def add_diagnostics(p, processed, outcomes: dict[int, ImageOutcome], params: InitNOParams) -> None:
    """Appends one diagnostic image per optimised or guided image after the generated ones (UI gallery
    and API response), saves each like the generated images, and lists their indices in `info`."""
    added = []
    for index in sorted(outcomes):
        outcome = outcomes[index]
        labels = [s.text for s in outcome.subjects]
        trace = outcome.guide.trace if outcome.guide is not None else None
        calibrated = outcome.calibration
        thresholds = params if calibrated is None else (calibrated.cross, calibrated.conflict)
        image = diagnostic_image(outcome.result, labels, thresholds, guidance=trace)
        if image is None:
            continue
        seed = p.all_seeds[index]
        text = f"InitNO diagnostics for image {index + 1} (seed {seed}): {outcome.status}"
        text += f"; {outcome.scores}" if outcome.scores else ""
        text += f"; guidance: {outcome.guidance}" if outcome.guidance else ""
        image.info["parameters"] = text
        added.append(len(processed.images))
        processed.images.append(image)
        processed.infotexts.append(text)
        if p.save_samples():
            images.save_image(
                image,
                p.outpath_samples,
                "",
                seed,
                p.all_prompts[index],
                shared.opts.samples_format,
                info=text,
                p=p,
                suffix="-initno",
            )
    if added:
        processed.extra_generation_params["InitNO diagnostic images"] = added  # indices into `images`
