"""reForge's modules_forge/forge_sampler.py (3b56b268): `sampling_prepare` (:116-141) loads the patcher's
model for a batch shaped like `x` and applies its LoRA; `sampling_cleanup` (:143-147) cleans up the control
models. Recorded on the patcher as the Forge 2 stand-in's (tests/host/backend/sampling) are."""

from __future__ import annotations


def sampling_prepare(unet, x):
    unet.events.append(("prepare", tuple(x.shape)))


def sampling_cleanup(unet):
    unet.events.append(("cleanup",))
