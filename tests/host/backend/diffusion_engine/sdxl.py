"""backend/diffusion_engine/sdxl.py `StableDiffusionXL`, loaded inside inference mode as in sd15.py here:
two text engines, `text_processing_engine_l` (CLIP-L) and `text_processing_engine_g` (OpenCLIP-G, with
the pooled vector) (sdxl.py:44-70); `get_learned_conditioning` returns `crossattn` = L and G side by side
and `vector` = pooled G and the size embeddings (sdxl.py:85-121), which the stand-in takes from the A1111
SDXL stand-in of the same checkpoint; sampling's UNet call passes `vector` as `y` (k_model.py:25-46)."""

from __future__ import annotations

import torch

from backend.diffusion_engine.sd15 import StableDiffusion


class StableDiffusionXL(StableDiffusion):
    is_sd1, is_sd2, is_sdxl = False, False, True

    def __init__(self, a1111_model):
        super().__init__(a1111_model)
        self.a1111_model = a1111_model
        self.text_processing_engine = None
        self.text_processing_engine_l, self.text_processing_engine_g = a1111_model.conditioner.embedders

    def get_learned_conditioning(self, batch):
        with torch.inference_mode():
            return self.a1111_model.get_learned_conditioning(batch)

    def apply_model(self, x, t, cond):
        patcher = self.forge_objects.unet
        patcher.events.append(("sample",))
        model = patcher.model
        dtype = model.computation_dtype
        out = model.diffusion_model(
            x.to(dtype),
            t.float(),
            context=cond["crossattn"].to(dtype),
            y=cond["vector"].to(dtype),
            transformer_options=dict(patcher.model_options["transformer_options"]),
        )
        return out.float()
