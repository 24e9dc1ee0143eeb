"""InitNO's UNet passes on the host: the sampler's first timestep, the denoiser (cond branch only, as the
host's sampler would call the UNet), activation checkpointing when memory is short, and what keeps every
pass differentiable on the host's model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from modules import devices, shared

from ..optimize import Denoiser
from . import faults
from .checks import check_before_generating, check_other_extensions
from .hosts import Host


def first_timestep(p) -> float:
    """The timestep of the sampler's first step: k-diffusion samplers through their sigma schedule,
    DDIM/PLMS/UniPC through their timestep list (the official code uses PNDM's first, 981 of 50)."""
    sampler = p.sampler
    if hasattr(sampler, "get_sigmas") and hasattr(sampler, "model_wrap"):
        return sigma_to_timestep(sampler.model_wrap, sampler.get_sigmas(p, p.steps)[0])
    if hasattr(sampler, "get_timesteps"):
        return float(sampler.get_timesteps(p, p.steps).max())
    raise faults.unknown_sampler(type(sampler).__name__)


def sigma_to_timestep(model_wrap, sigma) -> float:
    """A k-diffusion sigma as the UNet's timestep, by the host's wrapper of the model (its own schedule)."""
    log_sigmas = getattr(model_wrap, "log_sigmas", None)
    device = log_sigmas.device if log_sigmas is not None else "cpu"
    return float(model_wrap.sigma_to_t(torch.as_tensor(sigma, device=device)))


def denoiser(p, host: Host) -> Denoiser:
    """The batch's denoiser at the first timestep, after every check that needs no prompt."""
    unet = check_before_generating(host, p.get_token_merging_ratio())
    check_other_extensions(unet)
    return host.denoiser(unet, first_timestep(p), checkpoint_blocks(p, host))


CHECKPOINTING = ("Automatic", "On", "Off")

ACTIVATION_BYTES_PER_PIXEL = {"sd1": 1624.0, "sd2": 1468.0, "sdxl": 4761.0}
"""What one InitNO step keeps for its backward pass, per image pixel, in a 2-byte dtype (fp16/bf16), without
checkpointing: the peaks of `python -m initno.bench --arch A --dtype bf16` divided by the pixels."""


def family_of(model) -> str:
    """The family, sd1, sd2 or sdxl, by the flags every host puts on its model."""
    return "sdxl" if getattr(model, "is_sdxl", False) else "sd2" if getattr(model, "is_sd2", False) else "sd1"


def activation_bytes(p, host: Host) -> float:
    """The memory an InitNO step needs above the loaded model, without checkpointing."""
    family = family_of(p.sd_model)
    return ACTIVATION_BYTES_PER_PIXEL[family] * p.width * p.height * host.compute_dtype().itemsize / 2


def free_device_memory() -> int | None:
    """Bytes the UNet's device can still give (CUDA: free plus what torch holds unused); None elsewhere."""
    if devices.device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(devices.device)
    return free + torch.cuda.memory_reserved(devices.device) - torch.cuda.memory_allocated(devices.device)


def checkpointing_automatic() -> bool:
    return getattr(shared.opts, "initno_checkpointing", "Automatic") == "Automatic"


def checkpoint_blocks(p, host: Host) -> bool:
    """Settings → InitNO → Memory. Automatic: checkpoint the transformer blocks when the step would not fit
    in the GPU's free memory with a margin (a CPU's memory is the system's: never); the job retries with
    checkpointing if the estimate was wrong and the step ran out of memory."""
    if not checkpointing_automatic():
        return shared.opts.initno_checkpointing == "On"
    free = free_device_memory()
    return free is not None and activation_bytes(p, host) > 0.8 * free


@contextlib.contextmanager
def differentiable_passes(host: Host, unet: torch.nn.Module) -> Iterator[None]:
    """Around InitNO's UNet passes (the noise optimisation, each guided step): gradients on, also under a
    host that samples in inference mode, and through every block whatever wraps them."""
    with torch.inference_mode(False), torch.enable_grad(), host.differentiable(unet), gradients_through_blocks(unet):
        yield


@contextlib.contextmanager
def gradients_through_blocks(unet: torch.nn.Module) -> Iterator[None]:
    """Keeps InitNO's passes differentiable through every block of the UNet, whatever wraps its forward.

    ControlNet (v1.1.455, scripts/hook.py) replaces the UNet's forward with its own, which runs the time
    embedding, the encoder and the middle block under `torch.no_grad()` (harmless while sampling, which
    runs without gradients anyway). In InitNO's passes that would leave the maps of those blocks without
    a gradient, and the noise would only be reached through ControlNet's residuals. Meanwhile, a pass that
    starts with gradients on switches them back on at each block; the enclosing `no_grad` restores the
    mode it found (on) when it exits, so nothing outlives the pass, and every hook is removed afterwards."""
    wanted = False

    def on_unet_input(_module, _args) -> None:
        nonlocal wanted
        wanted = torch.is_grad_enabled()

    def on_block_input(_module, _args) -> None:
        if wanted and not torch.is_grad_enabled():
            torch.set_grad_enabled(True)

    blocks = []
    for child in unet.children():  # ldm/sgm: time_embed, input_blocks[i], middle_block, output_blocks[i], out
        blocks.extend(child if isinstance(child, torch.nn.ModuleList) else [child])
    handles = [unet.register_forward_pre_hook(on_unet_input)]
    try:
        handles += [block.register_forward_pre_hook(on_block_input) for block in blocks]
        yield
    finally:
        for handle in handles:
            handle.remove()
