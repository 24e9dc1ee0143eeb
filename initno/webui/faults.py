"""Every message InitNO gives the user when it cannot run, and the one exception that carries them.

A fault never stops a generation: the image is made without InitNO (or unguided), and the message goes to
the infotext (`InitNO: skipped: <reason>`), the text under the gallery and the console. Pure Python (no
host import), so the host adapters and the shared glue all raise from here.
"""

from __future__ import annotations

import traceback

import torch


class Unsupported(Exception):
    """InitNO cannot run for this generation; the message says why, for the user."""


# -- the model -------------------------------------------------------------------------------------------

SD3 = "SD3 models have no UNet; InitNO needs a UNet checkpoint (SD1, SD2, SDXL)"
SDXL_REFINER = (
    "SDXL refiner checkpoints are not supported; load an SDXL base checkpoint "
    "(the refiner can still finish the image through txt2img's Refiner option)"
)
INPAINTING = "inpainting models are not supported (the UNet takes extra input channels)"
QUANTIZED = "quantized UNet weights ({kind}) are not supported; load an fp16/bf16/fp32 checkpoint"
NO_MODEL = "no model is loaded yet"


def alternative_unet(option: str) -> Unsupported:
    return Unsupported(
        f"an alternative UNet is active ({option}); InitNO needs the checkpoint's own UNet (set SD Unet to None)"
    )


def edit_model(conditioning_key: str) -> Unsupported:
    return Unsupported(f"inpainting and edit models are not supported (conditioning {conditioning_key!r})")


def no_unet(what: str) -> Unsupported:
    return Unsupported(f"the loaded model ({what}) has no ldm/sgm UNet")


def not_a_unet_checkpoint(what: str) -> Unsupported:
    return Unsupported(
        f"this model ({what}) is not an SD1, SD2 or SDXL UNet checkpoint; "
        "InitNO reads a UNet's attention (Flux, SD3 and other transformer models have none)"
    )


def unknown_network(what: str) -> Unsupported:
    return Unsupported(f"the loaded model's network ({what}) is not a UNet InitNO knows")


def unsupported_prediction(what) -> Unsupported:
    return Unsupported(f"Fast (lookahead) needs an eps- or v-prediction model; this one predicts {what!r}")


# -- the settings and the sampler -----------------------------------------------------------------------

TOKEN_MERGING = "token merging is on; set Settings → Optimizations → Token merging ratio to 0"
NEEDS_NEWER_HOST = (
    "InitNO needs AUTOMATIC1111 WebUI 1.10 or newer: this version has no `process_before_every_sampling` "
    "hook to replace the initial noise."
)


def unknown_sampler(what: str) -> Unsupported:
    return Unsupported(f"unknown sampler type {what}: cannot tell its first timestep")


REFUSED_SAMPLERS = {
    "UniPC": "its model calls after the first see the predictor's temporary latent, never the sampler's own",
    "DPM fast": "it has no one-to-one sampling steps to guide",
    "DPM adaptive": "it has no one-to-one sampling steps to guide",
}
"""Samplers the guidance cannot move the state of (see `sampler_hook`), and why."""


def too_few_steps(steps: int) -> Unsupported:
    return Unsupported(
        f"Fast (lookahead) needs at least 2 sampling steps (it looks ahead of the first), got {steps}; "
        "with Steps ahead 0 it scores the noises themselves"
    )


def sampler_refusal(sampler_name: str) -> str | None:
    """Why sampling guidance cannot run with this sampler, or None."""
    reason = REFUSED_SAMPLERS.get(sampler_name)
    return f"sampling guidance does not support the {sampler_name} sampler: {reason}" if reason else None


REFINER_SWITCH = "the Refiner switched to another checkpoint during the guided steps"


# -- other extensions -------------------------------------------------------------------------------------

ANIMATEDIFF = (
    "AnimateDiff is on: its motion modules make the batch one video, and optimising each frame's "
    "noise on its own would break the frames' coherence; the video is generated without InitNO"
)


def cross_attention_replaced(owner: str, layer: str) -> Unsupported:
    # Regional Prompter's Latent mode leaves the attention alone: say so when its attention mode is the cause.
    hint = "; its Latent mode works with InitNO" if "regional-prompter" in owner else ""
    return Unsupported(
        f"{owner} replaces the UNet's cross-attention ({layer}), and InitNO's passes (one image, outside "
        f"the sampler) would run through it; turn it off to use InitNO{hint}"
    )


# -- faults while running ---------------------------------------------------------------------------------


def calibration_prompt(prompt: str, error: Exception) -> str:
    return (
        f"the thresholds could not be calibrated: the calibration prompt {prompt!r} does not read as expected "
        f"({error}); choose Thresholds: Official"
    )


def calibration_not_saved(path, error: OSError) -> str:
    return f"InitNO: the calibration could not be saved to {path} ({error}); it is kept until the WebUI restarts"


OUT_OF_MEMORY = "out of memory; try a smaller image, fewer subjects or --medvram"


def reason(error: BaseException) -> str:
    """What the user is told about `error`, raised while InitNO ran; unexpected ones also go to the console
    with their traceback."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return OUT_OF_MEMORY
    if isinstance(error, Unsupported):
        return str(error)
    if isinstance(error, FloatingPointError):  # NaN or inf in the scores
        return f"{error}; try --no-half or 'Upcast cross attention layer to float32'"
    traceback.print_exception(error)
    return f"internal error: {type(error).__name__}: {error}"
