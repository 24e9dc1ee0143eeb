"""Thresholds calibrated to the loaded model (`thresholds: calibrated`, the default), on the host.

InitNO's official validity thresholds (response loss < 0.2, conflict < 0.3) encode SD1.4's attention
statistics: on other models the valid region is never reached and every image pays the worst case.
`initno.calibration` sets each threshold where the loaded model's own scores of random noises lie. Here it
runs as InitNO's passes run: through the batch's cond-only `Denoiser` (the host's model call, at the sampler's
first timestep), forward only, with latents of the generation's grid, on a few fixed two-subject prompts
tokenised and encoded by the loaded model's own text encoders through the host's conditioning path (SDXL: the
dict with its pooled vector, at the generation's size).

A calibration is kept per checkpoint (its sha256), family, latent grid (the maps' size changes the scores),
first timestep, active extra networks (a LoRA changes the model) and procedure version, in memory and in
`calibrations.json` in the extension's folder, so each is paid once and the same settings give the same image.
For that same reason, one made while another extension runs inside the UNet (ControlNet's residuals come from
the generation's control image) is used for its batch only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from modules import devices, prompt_parser

from ..calibration import NOISES_PER_PROMPT, VERSION, Calibration, CalibrationCache, calibrate
from ..optimize import Denoiser, ImageRequest
from ..subjects import SubjectError, choose_subjects
from . import faults, progress
from .checks import unet_forward_owner
from .conditioning import read_prompt_text, softmax_positions
from .hosts import Host
from .passes import family_of

PROMPTS = (
    ("a cat and a dog", "cat, dog"),
    ("a horse and a bear", "horse, bear"),
    ("a red apple and a blue clock", "apple, clock"),
    ("a turtle and a yellow bowl", "turtle, bowl"),
)
"""(prompt, subjects): two subjects each, animals and objects, as in the prompts InitNO is made for."""
PASSES = len(PROMPTS) * NOISES_PER_PROMPT
BATCH_SIZE = 4
"""Latents per UNet call, fixed whatever Fast's setting: the batch Fast runs with 4 noises to choose from,
about the activation memory of sampling a batch of 2 with CFG."""
CACHE_FILE = Path(__file__).resolve().parents[2] / "calibrations.json"
"""Beside the extension's code (ignored by git): writable wherever the extension could be installed."""

_cache: CalibrationCache | None = None


def cache() -> CalibrationCache:
    """The calibrations kept so far, read from `CACHE_FILE` at first use."""
    global _cache
    if _cache is None or _cache.path != CACHE_FILE:
        _cache = CalibrationCache(CACHE_FILE)
    return _cache


def calibration_for(p, host: Host, denoiser: Denoiser, latent: torch.Tensor) -> Calibration:
    """The loaded model's calibration for a batch like `latent` at `denoiser`'s timestep: kept, or made now
    (progress.Interrupted if Interrupt or Skip stops it; nothing is kept then)."""
    key = cache_key(p, latent, denoiser.timestep)
    not_kept = _why_not_kept(key, denoiser.unet)
    kept = cache().get(key) if not_kept is None else None
    if kept is not None:
        return kept
    made = _calibrate(p, host, denoiser, latent, key or "unnamed checkpoint")
    print(f"InitNO: thresholds calibrated: cross {made.cross:.3f}, self {made.conflict:.3f} ({not_kept or key})")
    if not_kept is None:
        try:
            cache().put(made)
        except OSError as error:  # kept in memory all the same
            print(faults.calibration_not_saved(CACHE_FILE, error))
    return made


def _why_not_kept(key: str | None, unet: torch.nn.Module) -> str | None:
    """Why this calibration would not hold for another generation of the same model, or None. Then it is made
    for each batch, so that the same settings still give the same image."""
    if key is None:
        return "not kept: the host names no checkpoint"
    owner = unet_forward_owner(unet)
    if owner is not None:
        return f"not kept: {owner} runs inside the UNet, with this generation's inputs"
    return None


def cache_key(p, latent: torch.Tensor, timestep: float) -> str | None:
    """What the calibration depends on; None when the checkpoint is not known (then it is not kept)."""
    model = p.sd_model
    checkpoint = checkpoint_of(model)
    if checkpoint is None:
        return None
    height, width = latent.shape[-2:]
    parts = [family_of(model), checkpoint, f"latent {height}x{width}", f"t {timestep}"]
    return " | ".join([*parts, *extra_networks_of(p), f"v{VERSION}"])


def checkpoint_of(model) -> str | None:
    """The checkpoint's hash as the host knows it (`sd_checkpoint_info.sha256`, its short form, the model's
    `sd_model_hash`), else its title or file name; None if the host says nothing of it."""
    info = getattr(model, "sd_checkpoint_info", None)
    hashes = (getattr(info, "sha256", None), getattr(info, "shorthash", None), getattr(model, "sd_model_hash", None))
    known = next((value for value in hashes if value), None)
    if known is not None:
        return f"hash {known}"
    filename = getattr(info, "filename", None)
    name = getattr(info, "title", None) or (Path(filename).name if filename else None)
    return f"checkpoint {name}" if name else None


def extra_networks_of(p) -> list[str]:
    """The batch's active extra networks (`<lora:name:0.8>` and the like), as their prompt tags say."""
    networks = getattr(p, "extra_network_data", None) or {}
    return sorted(
        f"<{kind}:{':'.join(map(str, params.items))}>" for kind, entries in networks.items() for params in entries
    )


def _calibrate(p, host: Host, denoiser: Denoiser, latent: torch.Tensor, key: str) -> Calibration:
    with torch.inference_mode(False):  # normal tensors, even where the host samples in inference mode
        requests = calibration_requests(p, host, latent)
    shown = progress.CalibrationProgress(PASSES)
    counting = replace(denoiser, apply=progress.counted(denoiser.apply, shown))
    with host.prepared(latent.new_zeros((BATCH_SIZE, *latent.shape[1:]))):
        return calibrate(counting, requests, key, batch_size=BATCH_SIZE)


def calibration_requests(p, host: Host, latent: torch.Tensor) -> list[ImageRequest]:
    """The calibration's prompts as the loaded model reads and encodes them; their noise only gives the
    shape, device and dtype of the generation's latents."""
    model = p.sd_model
    texts = [text for text, _ in PROMPTS]
    batch = prompt_parser.SdConditioning(texts, width=p.width, height=p.height)
    with devices.autocast():  # as the host encodes the generation's prompts (get_conds_with_caching)
        schedules = prompt_parser.get_learned_conditioning(model, batch, p.steps)
    requests = []
    for (text, subjects_text), schedule in zip(PROMPTS, schedules):
        prompt = read_prompt_text(host, text, p.steps)
        try:
            subjects = choose_subjects(prompt.tokens, subjects_text, prompt.encode)
        except SubjectError as error:  # e.g. an embedding named like a subject word
            raise faults.Unsupported(faults.calibration_prompt(text, error)) from None
        cond = prompt_parser.reconstruct_cond_batch([schedule], 0)
        cond = {k: v.clone() for k, v in cond.items()} if isinstance(cond, dict) else cond.clone()
        noise = latent.new_zeros(latent.shape[1:])
        positions = [list(s.positions) for s in subjects]
        requests.append(ImageRequest(noise, 0, cond, positions, softmax_positions(model, prompt.tokens)))
    return requests
