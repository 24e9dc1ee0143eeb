"""What differs on the Forge family of hosts: Forge 2 (lllyasviel/stable-diffusion-webui-forge, `backend/`)
and reForge (Panchovix/stable-diffusion-webui-reForge, `ldm_patched/`). Facts, with file:line citations
and measurements on the real Forge 2, are in docs/notes/forge.md; this is the only module that knows them.

Both keep A1111's script and sampler API, and `host` uses them as it uses A1111, except for:

- the UNet: `p.sd_model.forge_objects.unet` is a patcher; its `model.diffusion_model` is the module whose
  attention InitNO reads. Its patches (LoRA merged into the weights, patcher options) are applied by the
  host's own `sampling_prepare`, which also moves the model where the pass needs it; InitNO calls it first
  and then runs the UNet itself, cond branch only, as the host's `apply_model` would.
- inference mode: both sample inside `torch.inference_mode()`, and Forge 2 even builds its weights there.
  Autograd cannot save an inference tensor for backward, so during InitNO's passes every inference-tensor
  weight is swapped for a normal tensor viewing the same storage (no copy: measured 0 bytes), and the
  inputs of the layers that Forge 2 later updates in place (`x += n` in its transformer block, after
  `norm1`/`norm2` saved `x`) are cloned: the clone is what the norm keeps, so no memory beyond A1111's.
- text: Forge 2 has no `cond_stage_model`; its `text_processing_engine` (SDXL: `_l`, `_g`) has the same
  `tokenize` / `process_texts` API and chunking as A1111's hijacked encoders. reForge keeps A1111's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..optimize import Denoiser

ENGINES = ("text_processing_engine", "text_processing_engine_l", "text_processing_engine_g")
"""Forge 2's text engines (backend/diffusion_engine/sd15.py:39, sdxl.py:44-70), CLIP-L's first."""

UNET_CLASSES = ("IntegratedUNet2DConditionModel", "UNetModel")
"""Forge 2's UNet (backend/nn/unet.py) and reForge's (ldm_patched/ldm/modules/diffusionmodules/openaimodel.py)."""

EXCLUDED_PATCHES = ("attn1_patch", "attn2_patch")
"""Patcher patches that rewrite the queries, keys and values of attention (e.g. IP-Adapter-like tools). In
InitNO's passes they would make self-attention look like cross-attention (they pass `context` to attn1),
and replace patches (`patches_replace`) bypass the attention modules altogether, so the capture would
miss their layers: InitNO's passes run without both. Block-level patches (FreeU's) stay."""


def is_forge(model) -> bool:
    return hasattr(model, "forge_objects")


def patcher(model):
    return model.forge_objects.unet


def unet_of(model, unsupported: type[Exception]) -> nn.Module:
    """The Forge UNet InitNO can read, or `unsupported` naming what is in the way."""
    if getattr(model, "is_sd3", False) or not any(getattr(model, f, False) for f in ("is_sd1", "is_sd2", "is_sdxl")):
        raise unsupported(
            f"this model ({type(model).__name__}) is not an SD1, SD2 or SDXL UNet checkpoint; "
            "InitNO reads a UNet's attention (Flux, SD3 and other transformer models have none)"
        )
    unet = getattr(getattr(patcher(model), "model", None), "diffusion_model", None)
    if type(unet).__name__ not in UNET_CLASSES:
        raise unsupported(f"the loaded model's network ({type(unet).__name__}) is not a UNet InitNO knows")
    if getattr(model, "is_inpaint", False) or getattr(unet, "in_channels", 4) != 4:
        raise unsupported("inpainting models are not supported (the UNet takes extra input channels)")
    return unet


def text_engines(model) -> list | None:
    """Forge 2's text engines (SDXL base: CLIP-L, OpenCLIP-G; its refiner: G only); None on reForge,
    whose text encoders are A1111's."""
    engines = [getattr(model, name) for name in ENGINES if getattr(model, name, None) is not None]
    return engines or None


def _sampling_functions():
    try:  # Forge 2
        from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
    except ImportError:  # reForge
        from modules_forge.forge_sampler import sampling_cleanup, sampling_prepare
    return sampling_prepare, sampling_cleanup


@contextlib.contextmanager
def prepared(model, latent: torch.Tensor) -> Iterator[None]:
    """The UNet loaded, its LoRA applied and its device chosen, as for sampling a batch like `latent`."""
    prepare, cleanup = _sampling_functions()
    unet = patcher(model)
    prepare(unet, latent)
    try:
        yield
    finally:
        cleanup(unet)


def compute_dtype(model) -> torch.dtype:
    inner = patcher(model).model
    dtype = getattr(inner, "computation_dtype", None) or getattr(inner, "manual_cast_dtype", None)
    if dtype is None:
        dtype = inner.get_dtype() if hasattr(inner, "get_dtype") else next(inner.diffusion_model.parameters()).dtype
    return dtype


def transformer_options(model, timesteps: torch.Tensor) -> dict:
    """What the host's sampling passes the UNet for the cond branch (Forge 2 sampling_function.py:238-273),
    from the patcher's options, without the attention patches InitNO cannot read through."""
    unet = patcher(model)
    options = dict(unet.model_options.get("transformer_options", {}))
    options.pop("patches_replace", None)
    options["patches"] = {k: v for k, v in options.get("patches", {}).items() if k not in EXCLUDED_PATCHES}
    schedule = getattr(unet.model, "predictor", None) or getattr(unet.model, "model_sampling", None)
    if schedule is not None:  # the sigma of each pass: the guidance's passes run at later timesteps
        options["sigmas"] = schedule.sigma(timesteps.detach().float().cpu()).to(timesteps.device)
    options["cond_or_uncond"] = [0]
    return options


def denoiser(model, unet: nn.Module, timestep: float, checkpoint_blocks: bool) -> Denoiser:
    dtype = compute_dtype(model)

    def apply(latent: torch.Tensor, timesteps: torch.Tensor, cond) -> torch.Tensor:
        device = next(unet.parameters()).device
        context, extra = (cond["crossattn"], {"y": cond["vector"]}) if isinstance(cond, dict) else (cond, {})
        extra = {name: value.to(device, dtype) for name, value in extra.items()}
        pass_options = transformer_options(model, timesteps.to(device))
        return unet(
            latent.to(device, dtype),
            timesteps.to(device).float(),
            context=context.to(device, dtype),
            transformer_options=pass_options,
            **extra,
        )

    return Denoiser(unet=unet, apply=apply, timestep=timestep, checkpoint_blocks=checkpoint_blocks)


@contextlib.contextmanager
def differentiable(unet: nn.Module, unsupported: type[Exception]) -> Iterator[None]:
    """Makes `unet` differentiable with respect to its input for the duration (see the module docstring).
    Enter with inference mode off; every swapped tensor and hook is restored on exit."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    handles = []
    wrapped: list[tuple[nn.Module, object]] = []
    try:
        for module in unet.modules():
            for table in (module._parameters, module._buffers):
                for name, tensor in table.items():
                    if tensor is None or not tensor.is_inference():
                        continue
                    if isinstance(tensor, nn.Parameter) and type(tensor) is not nn.Parameter:
                        raise unsupported(
                            f"quantized UNet weights ({type(tensor).__name__}) are not supported; "
                            "load an fp16/bf16/fp32 checkpoint"
                        )
                    table[name] = _normal_view(tensor)
                    swapped.append((table, name, tensor))
        for name, module in unet.named_modules():
            # Forge 2's BasicTransformerBlock adds into what norm1/norm2 saved, and into its own input,
            # which a checkpointed block keeps: that clone goes inside the forward, where the
            # checkpoint's recomputation repeats it.
            if name.endswith((".norm1", ".norm2")):
                handles.append(module.register_forward_pre_hook(_clone_first_input))
            elif hasattr(module, "attn1") and hasattr(module, "norm1"):
                wrapped.append((module, module.__dict__.get("forward", _CLASS_FORWARD)))
                module.forward = _cloning_forward(module.forward)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in reversed(wrapped):
            if previous is _CLASS_FORWARD:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        for table, name, tensor in reversed(swapped):
            table[name] = tensor


def _normal_view(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor on the same storage: no copy, frozen."""
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    return nn.Parameter(view, requires_grad=False) if isinstance(tensor, nn.Parameter) else view


_CLASS_FORWARD = object()


def _cloning_forward(forward):
    def cloning_forward(x, *args, **kwargs):
        return forward(x.clone() if torch.is_grad_enabled() else x, *args, **kwargs)

    return cloning_forward


def _clone_first_input(_module: nn.Module, args: tuple):
    if args and isinstance(args[0], torch.Tensor) and torch.is_grad_enabled():
        return (args[0].clone(), *args[1:])
    return None
