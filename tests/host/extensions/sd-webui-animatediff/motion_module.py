"""AnimateDiff's motion modules (continue-revolution/sd-webui-animatediff a88e889): `AnimateDiffMM.inject`
(scripts/animatediff_mm.py:62-110) appends a `VanillaTemporalModule` (motion_module.py:110) to UNet blocks
in `before_process` and `restore` (:118-132) pops them in `postprocess` (scripts/animatediff.py:53-95).
A temporal module attends across the frames, i.e. across the batch (here: mixes each pixel with the
batch's mean, which changes nothing for one frame but ties the frames together)."""

from __future__ import annotations

from torch import nn


class VanillaTemporalModule(nn.Module):
    def forward(self, x, *args, **kwargs):
        return 0.5 * x + 0.5 * x.mean(dim=0, keepdim=True)


def inject(unet: nn.Module) -> None:
    for block in (unet.input_blocks[1], unet.output_blocks[-1]):
        block.append(VanillaTemporalModule())


def restore(unet: nn.Module) -> None:
    for block in (unet.input_blocks[1], unet.output_blocks[-1]):
        block.pop(-1)
