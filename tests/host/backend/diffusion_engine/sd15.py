"""backend/diffusion_engine/sd15.py `StableDiffusion` (a `ForgeDiffusionEngine`, base.py), loaded as
backend/loader.py `forge_loader` does: **inside `torch.inference_mode()`** (:497-498), so every UNet
weight is an inference tensor (measured on the real Forge 2: 686/686), which autograd cannot save for a
backward pass. What Forge 2's A1111-compatible code and InitNO read:

- `forge_objects.unet` (the `UnetPatcher`), reset per sampling from `forge_objects_after_applying_lora`
  (modules/processing.py:1373) with `shallow_copy()` (the same patcher objects);
- `text_processing_engine` (sd15.py:39-51): the `ClassicTextProcessingEngine`, with A1111's
  `tokenize` / `process_texts` / `id_start` / `id_end` and chunking (the A1111 stand-in's encoder has that
  API); there is no `cond_stage_model` (None);
- `get_learned_conditioning` (sd15.py:63-67, itself under inference mode), `decode_first_stage`, the
  `is_sd1` / `is_sd2` / `is_sdxl` / `is_sd3` / `is_inpaint` flags (base.py:28, :57-67);
- the UNet call of sampling: `KModel.apply_model` (backend/modules/k_model.py:25-46) runs
  `diffusion_model(x, t, context=..., transformer_options=...)` in the computation dtype; the stand-in's
  CompVis-style samplers reach it through `apply_model(x, t, cond)` below."""

from __future__ import annotations

import copy

import torch

from backend.nn.unet import forge_layout
from backend.patcher.unet import KModel, UnetPatcher


class ForgeObjects:
    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        return ForgeObjects(self.unet)


class StableDiffusion:
    is_sd1, is_sd2, is_sdxl, is_sd3, is_inpaint = True, False, False, False, False
    latent_channels = 4
    parameterization = "eps"
    cond_stage_model = None

    def __init__(self, a1111_model):
        """The same checkpoint as an A1111 stand-in model (`modules.sd_models.StandInSD1Model`), loaded
        the Forge 2 way: its UNet copied inside inference mode, in Forge 2's layout."""
        with torch.inference_mode():
            unet = forge_layout(copy.deepcopy(a1111_model.model.diffusion_model))
            self.alphas_cumprod = a1111_model.alphas_cumprod.clone()
        self.forge_objects_after_applying_lora = ForgeObjects(UnetPatcher(KModel(unet, self.alphas_cumprod)))
        self.forge_objects = self.forge_objects_after_applying_lora.shallow_copy()
        self.text_processing_engine = a1111_model.cond_stage_model
        # modules/sd_models.py forge_model_reload (:509-511): the checkpoint's info and short hash
        self.sd_checkpoint_info = a1111_model.sd_checkpoint_info
        self.sd_model_hash = a1111_model.sd_model_hash

    def get_learned_conditioning(self, texts):
        with torch.inference_mode():
            return self.text_processing_engine(texts)

    def apply_model(self, x, t, cond):
        patcher = self.forge_objects.unet
        patcher.events.append(("sample",))
        context = cond["c_crossattn"][0] if isinstance(cond, dict) else cond
        options = dict(patcher.model_options["transformer_options"])
        model = patcher.model
        dtype = model.computation_dtype
        out = model.diffusion_model(x.to(dtype), t.float(), context=context.to(dtype), transformer_options=options)
        return out.float()

    def decode_first_stage(self, z):
        return torch.nn.functional.interpolate(torch.tanh(z[:, :3]), scale_factor=8, mode="nearest")

    def ema_scope(self):
        import contextlib

        return contextlib.nullcontext()
