"""reForge (Panchovix/stable-diffusion-webui-reForge, `ldm_patched/`): Forge 2's way of running the UNet
(a patcher prepared by the host's `sampling_prepare`, the UNet called with `transformer_options`, weights
that turn into inference tensors when the host moves them inside inference mode, the sampler starting from
`p.modified_noise`) with A1111's model object and hijacked text encoders. Facts: docs/notes/forge.md.

Its transformer block adds out of place (`x = n + x`), so the clones Forge 2 needs do nothing harmful here.
"""

from __future__ import annotations

import torch

from .a1111 import ldm_schedule, ldm_text_encoders, ldm_text_model
from .forge import Forge2


class ReForge(Forge2):
    name = "reForge"
    unet_class = "UNetModel"
    """ldm_patched/ldm/modules/diffusionmodules/openaimodel.py."""

    def text_encoders(self) -> list:
        return ldm_text_encoders(self.model)

    def text_model(self):
        return ldm_text_model(self.model)

    def schedule(self) -> tuple[torch.Tensor, str]:
        return ldm_schedule(self.model)  # A1111's model object keeps A1111's flags

    def sampling_functions(self):
        from modules_forge.forge_sampler import sampling_cleanup, sampling_prepare

        return sampling_prepare, sampling_cleanup
