"""Mirrors modules/sd_hijack_unet.py's `TorchHijackForUnet`: the UNet's `th` with a `cat` that resizes the
skip connection's partner (nearest) when their grids differ, so that sizes that are multiples of 8 but
not of 64 work. modules/sd_hijack.py installs it as `ldm.modules.diffusionmodules.openaimodel.th`."""

from __future__ import annotations

import torch


class TorchHijackForUnet:
    def __getattr__(self, item):
        if item == "cat":
            return self.cat
        return getattr(torch, item)

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2 and tensors[0].shape[-2:] != tensors[1].shape[-2:]:
            tensors = (torch.nn.functional.interpolate(tensors[0], tensors[1].shape[-2:], mode="nearest"), tensors[1])
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()
