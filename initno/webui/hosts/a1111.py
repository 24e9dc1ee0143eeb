"""AUTOMATIC1111 WebUI 1.10 (`modules/`): the loaded model is an ldm/sgm `LatentDiffusion`/`DiffusionEngine`
whose UNet is `model.diffusion_model`, called through the model's own `apply_model`, with the hijacked text
encoders; samplers start from the very noise tensor the hook replaces. Facts: docs/notes/a1111-samplers.md."""

from __future__ import annotations

import contextlib

import torch
from modules import devices, shared

from ...optimize import Denoiser
from .. import faults
from .base import Host


class A1111(Host):
    name = "AUTOMATIC1111"

    def unet(self) -> torch.nn.Module:
        wrapper = getattr(self.model, "model", None)
        unet = getattr(wrapper, "diffusion_model", None)
        if unet is None:
            raise faults.no_unet(type(self.model).__name__)
        conditioning_key = getattr(wrapper, "conditioning_key", "crossattn")
        if conditioning_key not in ("crossattn", None) or getattr(self.model, "is_sdxl_inpaint", False):
            raise faults.edit_model(conditioning_key)
        if getattr(unet, "in_channels", 4) != getattr(self.model, "latent_channels", 4):
            raise faults.Unsupported(faults.INPAINTING)
        return unet

    def text_encoders(self) -> list:
        return ldm_text_encoders(self.model)

    def text_model(self):
        return ldm_text_model(self.model)

    def compute_dtype(self) -> torch.dtype:
        return devices.dtype_unet

    def schedule(self) -> tuple[torch.Tensor, str]:
        return ldm_schedule(self.model)

    def denoiser(self, unet: torch.nn.Module, timestep: float, checkpoint_blocks: bool) -> Denoiser:
        return Denoiser(
            unet=unet,
            apply=self.model.apply_model,
            timestep=timestep,
            context_transform=hypernetwork_transform(),
            checkpoint_blocks=checkpoint_blocks,
            recompute_context=devices.autocast,  # apply_model's context: A1111's manual_cast patches layers there
        )

    def prepared(self, latent: torch.Tensor) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the model is ready when the hook runs

    def differentiable(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # normal weights, sampling under `no_grad` only

    def use_noise(self, p, noise: torch.Tensor) -> None:
        pass  # the sampler starts from the hook's `x`, replaced in place


def ldm_text_encoders(model) -> list:
    """The hijacked text encoders of an ldm/sgm model: SDXL base has two (CLIP-L, OpenCLIP-G), its refiner one."""
    conditioner = getattr(model, "conditioner", None)
    if conditioner is None:
        return [model.cond_stage_model]
    return [embedder for embedder in conditioner.embedders if hasattr(embedder, "process_texts")]


def ldm_text_model(model):
    """What tokenises for an ldm/sgm model's conditioning: its hijacked `cond_stage_model` (SDXL: the
    conditioner, delegating to CLIP-L), else its first text encoder."""
    text_model = getattr(model, "cond_stage_model", None)
    return text_model if text_model is not None else ldm_text_encoders(model)[0]


def ldm_schedule(model) -> tuple[torch.Tensor, str]:
    """A1111's model flags (ldm/sgm models; SDXL's set by sd_models_xl.extend_sdxl)."""
    parameterization = getattr(model, "parameterization", "eps")
    if parameterization not in ("eps", "v"):
        raise faults.unsupported_prediction(parameterization)
    return model.alphas_cumprod, parameterization


def hypernetwork_transform():
    """The host's hypernetwork hook for the captured attention layers, when hypernetworks are loaded."""
    if not getattr(shared, "loaded_hypernetworks", None):
        return None
    from modules.hypernetworks import hypernetwork

    return lambda context, module: hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context, module)
