"""backend/sampling/sampling_function.py: `sampling_prepare` (:366-400) loads the patcher's model for a
batch shaped like `x` (`memory_management.load_models_gpu`, which moves it inside the caller's inference
mode) and applies its LoRA; `sampling_cleanup` (:402-408) undoes what sampling left behind. Each call is
counted on the patcher, so tests can see that InitNO's passes ran on a prepared model."""

from __future__ import annotations


def sampling_prepare(unet, x):
    unet.events.append(("prepare", tuple(x.shape)))


def sampling_cleanup(unet):
    unet.events.append(("cleanup",))
