"""Forge 2 (lllyasviel/stable-diffusion-webui-forge, `backend/`). Facts, with file:line citations and
measurements on the real Forge 2, are in docs/notes/forge.md; this adapter and reForge's (which shares most of
it) are the only code that knows them.

- the UNet: `p.sd_model.forge_objects.unet` is a patcher; its `model.diffusion_model` is the module whose
  attention InitNO reads. Its patches (LoRA merged into the weights, patcher options) are applied by the
  host's own `sampling_prepare`, which also moves the model where the pass needs it; InitNO calls it first
  and then runs the UNet itself, cond branch only, as the host's `apply_model` would.
- inference mode: the host samples inside `torch.inference_mode()`, and even builds its weights there.
  Autograd cannot save an inference tensor for backward, so during InitNO's passes every inference-tensor
  weight is swapped for a normal tensor viewing the same storage (no copy: measured 0 bytes), and the
  inputs of the layers that Forge 2 later updates in place (`x += n` in its transformer block, after
  `norm1`/`norm2` saved `x`) are cloned: the clone is what the norm keeps, so no memory beyond A1111's.
- text: Forge 2 has no `cond_stage_model`; its `text_processing_engine` (SDXL: `_l`, `_g`) has the same
  `tokenize` / `process_texts` API and chunking as A1111's hijacked encoders.
- noise: the sampler starts from `p.modified_noise` when it is set, not from the hook's `x`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ...optimize import Denoiser
from .. import faults
from .base import Host

ENGINES = ("text_processing_engine", "text_processing_engine_l", "text_processing_engine_g")
"""Forge 2's text engines (backend/diffusion_engine/sd15.py:39, sdxl.py:44-70), CLIP-L's first."""

EXCLUDED_PATCHES = ("attn1_patch", "attn2_patch")
"""Patcher patches that rewrite the queries, keys and values of attention (e.g. IP-Adapter-like tools). In
InitNO's passes they would make self-attention look like cross-attention (they pass `context` to attn1),
and replace patches (`patches_replace`) bypass the attention modules altogether, so the capture would
miss their layers: InitNO's passes run without both. Block-level patches (FreeU's) stay."""


PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}
"""Forge 2's prediction types that lookahead's DDIM takes, by its name for them."""


class Forge2(Host):
    name = "Forge"
    unet_class = "IntegratedUNet2DConditionModel"
    """backend/nn/unet.py."""

    @property
    def patcher(self):
        return self.model.forge_objects.unet

    def unet(self) -> nn.Module:
        model = self.model
        families = ("is_sd1", "is_sd2", "is_sdxl")
        if not any(getattr(model, family, False) for family in families):  # SD3: refused before (checks.unet_of)
            raise faults.not_a_unet_checkpoint(type(model).__name__)
        unet = getattr(getattr(self.patcher, "model", None), "diffusion_model", None)
        if type(unet).__name__ != self.unet_class:
            raise faults.unknown_network(type(unet).__name__)
        if getattr(model, "is_inpaint", False) or getattr(unet, "in_channels", 4) != 4:
            raise faults.Unsupported(faults.INPAINTING)
        return unet

    def text_encoders(self) -> list:
        """Forge 2's text engines (SDXL base: CLIP-L, OpenCLIP-G; its refiner: G only)."""
        return [getattr(self.model, name) for name in ENGINES if getattr(self.model, name, None) is not None]

    def text_model(self):
        return self.text_encoders()[0]

    def compute_dtype(self) -> torch.dtype:
        inner = self.patcher.model
        dtype = getattr(inner, "computation_dtype", None) or getattr(inner, "manual_cast_dtype", None)
        if dtype is None:
            dtype = inner.get_dtype() if hasattr(inner, "get_dtype") else next(inner.diffusion_model.parameters()).dtype
        return dtype

    def sampling_functions(self):
        """The host's `sampling_prepare` and `sampling_cleanup`."""
        from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

        return sampling_prepare, sampling_cleanup

    @contextlib.contextmanager
    def prepared(self, latent: torch.Tensor) -> Iterator[None]:
        """The UNet loaded, its LoRA applied and its device chosen, as for sampling a batch like `latent`."""
        prepare, cleanup = self.sampling_functions()
        unet = self.patcher
        prepare(unet, latent)
        try:
            yield
        finally:
            cleanup(unet)

    def schedule(self) -> tuple[torch.Tensor, str]:
        """Forge 2's models have no `alphas_cumprod`: its noise predictor holds the schedule and the kind of
        prediction (backend/modules/k_prediction.py `Prediction`)."""
        predictor = self.patcher.model.predictor
        kind = getattr(predictor, "prediction_type", None)
        if kind not in PREDICTIONS or not hasattr(predictor, "alphas_cumprod"):
            raise faults.unsupported_prediction(kind)
        return predictor.alphas_cumprod, PREDICTIONS[kind]

    def transformer_options(self, timesteps: torch.Tensor) -> dict:
        """What the host's sampling passes the UNet for the cond branch (Forge 2 sampling_function.py:238-273),
        from the patcher's options, without the attention patches InitNO cannot read through."""
        unet = self.patcher
        options = dict(unet.model_options.get("transformer_options", {}))
        options.pop("patches_replace", None)
        options["patches"] = {k: v for k, v in options.get("patches", {}).items() if k not in EXCLUDED_PATCHES}
        schedule = getattr(unet.model, "predictor", None) or getattr(unet.model, "model_sampling", None)
        if schedule is not None:  # the sigma of each pass: the guidance's passes run at later timesteps
            options["sigmas"] = schedule.sigma(timesteps.detach().float().cpu()).to(timesteps.device)
        options["cond_or_uncond"] = [0]
        return options

    def denoiser(self, unet: nn.Module, timestep: float, checkpoint_blocks: bool) -> Denoiser:
        dtype = self.compute_dtype()

        def apply(latent: torch.Tensor, timesteps: torch.Tensor, cond) -> torch.Tensor:
            device = next(unet.parameters()).device
            context, extra = (cond["crossattn"], {"y": cond["vector"]}) if isinstance(cond, dict) else (cond, {})
            extra = {name: value.to(device, dtype) for name, value in extra.items()}
            pass_options = self.transformer_options(timesteps.to(device))
            return unet(
                latent.to(device, dtype),
                timesteps.to(device).float(),
                context=context.to(device, dtype),
                transformer_options=pass_options,
                **extra,
            )

        return Denoiser(unet=unet, apply=apply, timestep=timestep, checkpoint_blocks=checkpoint_blocks)

    def differentiable(self, unet: nn.Module) -> contextlib.AbstractContextManager:
        return differentiable(unet)

    def use_noise(self, p, noise: torch.Tensor) -> None:
        p.modified_noise = noise


@contextlib.contextmanager
def differentiable(unet: nn.Module) -> Iterator[None]:
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
                        raise faults.Unsupported(faults.QUANTIZED.format(kind=type(tensor).__name__))
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
