"""Every reason to skip InitNO that is known before its first pass: the model, the settings, and what other
extensions put on the UNet for this generation. Each raises `faults.Unsupported` with the user's message."""

from __future__ import annotations

from pathlib import Path

import torch
from modules import sd_unet

from ..attention import is_attention_module
from . import faults
from .hosts import Host, host_of


def unet_of(host: Host) -> torch.nn.Module:
    """The checkpoint's UNet, or Unsupported naming what is in the way."""
    model = host.model
    if getattr(model, "is_sd3", False):
        raise faults.Unsupported(faults.SD3)
    if getattr(sd_unet, "current_unet", None) is not None:
        raise faults.alternative_unet(getattr(sd_unet.current_unet, "option", "e.g. TensorRT"))
    if getattr(model, "is_sdxl", False) and len(host.text_encoders()) == 1:
        # The refiner (one text encoder, OpenCLIP-G) is trained for the last, low-noise steps only: its
        # attention at the first step says nothing about the composition.
        raise faults.Unsupported(faults.SDXL_REFINER)
    return host.unet()


def is_loaded(model) -> bool:
    """Whether `model` is a checkpoint with its text encoders (a host may hold a placeholder until the first
    generation loads the checkpoint)."""
    return any(encoder is not None for encoder in host_of(model).text_encoders())


def check_before_generating(host: Host, token_merging_ratio: float) -> torch.nn.Module:
    """Every reason to skip InitNO that is known before a generation starts (the model, the settings):
    raises Unsupported with it; else returns the UNet. The token view asks this too, so that it warns
    before the user generates."""
    if token_merging_ratio > 0:
        # ToMe merges the tokens the attention maps are made of: the maps would no longer be a grid.
        raise faults.Unsupported(faults.TOKEN_MERGING)
    return unet_of(host)


MOTION_MODULES = ("VanillaTemporalModule",)
"""AnimateDiff's motion modules (continue-revolution/sd-webui-animatediff a88e889, motion_module.py:110),
which `AnimateDiffMM.inject` adds to the UNet's blocks for the whole generation (scripts/animatediff_mm.py:62-110)."""


def check_other_extensions(unet: torch.nn.Module) -> None:
    """Reasons to skip InitNO that other extensions put on the UNet for this generation: a batch made one
    video, or a replaced cross-attention."""
    for module in unet.modules():
        if type(module).__name__ in MOTION_MODULES:
            raise faults.Unsupported(faults.ANIMATEDIFF)
    for name, module in unet.named_modules():
        forward = module.__dict__.get("forward")
        # Cross-attention only: what ties the prompt's tokens to the image, the maps InitNO reads. A
        # replaced self-attention (the WebUI's Hypertile tiles it) keeps running outside the read layers.
        if forward is None or not name.endswith("attn2") or not is_attention_module(module):
            continue
        # E.g. Regional Prompter's attention (and prompt) mode, sd-webui-regional-prompter be62345
        # scripts/attention.py:119-125: splits every batch by the generation's batch size and counts its
        # calls to tell prompts apart; InitNO's one-image passes break both.
        raise faults.cross_attention_replaced(_extension_of(forward), name)


def unet_forward_owner(unet: torch.nn.Module) -> str | None:
    """The extension that replaced the UNet's own forward for this generation (ControlNet does: its residuals
    come from the generation's control image), or None."""
    forward = unet.__dict__.get("forward")
    return _extension_of(forward) if forward is not None else None


def _extension_of(function) -> str:
    """The extension (its folder) whose file defines `function`, else that file's name."""
    function = getattr(function, "func", function)  # functools.partial
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    path = Path(code.co_filename) if code is not None else Path("another extension")
    parts = path.parts
    for marker in ("extensions", "extensions-builtin"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1]
    return path.name
