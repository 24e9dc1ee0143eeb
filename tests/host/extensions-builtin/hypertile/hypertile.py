"""The WebUI's built-in Hypertile (A1111 v1.10.1 extensions-builtin/hypertile/hypertile.py:269-337):
`hypertile_hook_model` keeps each self-attention module's forward and puts an instance-level wrapper in
its place, for good; the wrapper cuts the (B, h·w, C) input into nh×nw tiles, runs the kept forward on
them as a bigger batch, and puts the tiles back. Here: 2×2 tiles whenever the grid divides, on every
attn1 (the host picks them per depth), and a count of the wrapper's calls."""

from __future__ import annotations

import math

from einops import rearrange


class Hypertile:
    def __init__(self):
        self.calls = 0

    def hook_model(self, unet) -> None:
        for name, module in unet.named_modules():
            if name.endswith("attn1"):
                module.forward = self.self_attn_forward(module.forward)

    def unhook_model(self, unet) -> None:
        for name, module in unet.named_modules():
            if name.endswith("attn1"):
                del module.forward

    def self_attn_forward(self, forward):
        def wrapper(x, *args, **kwargs):
            self.calls += 1
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1] or side % 2:
                return forward(x, *args, **kwargs)
            tiles = rearrange(x, "b (nh h nw w) c -> (b nh nw) (h w) c", nh=2, nw=2, h=side // 2, w=side // 2)
            out = forward(tiles, *args, **kwargs)
            return rearrange(out, "(b nh nw) (h w) c -> b (nh h nw w) c", nh=2, nw=2, h=side // 2, w=side // 2)

        return wrapper
