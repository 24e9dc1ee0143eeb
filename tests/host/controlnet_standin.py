"""A stand-in for how ControlNet (Mikubill/sd-webui-controlnet v1.1.455, commit 67271170) takes part in a
txt2img generation, written from its scripts/hook.py and scripts/controlnet.py:

- its always-on script's `process` hooks the UNet when a unit is enabled (`controlnet_main_entry`), and
  its `postprocess` restores it (`UnetHook.restore`);
- the hook wraps `p.sample` (`process_sample`), which marks every prompt's context in the conditioning
  before the host samples: one row in front of each `ScheduledPromptConditioning.cond` (SDXL: of its
  `crossattn`), +1024 everywhere for `conditioning` and `hr_c`, −1024 for the unconditional ones, through
  `MulticondLearnedConditioning` → `ComposableScheduledPromptConditioning` (every AND part) → schedules,
  in place in those lists; an already marked context is left alone (`mark_prompt_context`);
- it replaces the UNet's `forward` on the instance (`forward_webui`), which strips the marker again and
  reads it per batch row, 1 for a positive row, 0 for a negative one (`unmark_prompt_context`; an
  unmarked context is taken as all positive, as it is); then each unit's control model makes one
  residual per input block and one for the middle block from the latent and the hint, scaled by the
  unit's weight (and by the marker with "ControlNet is more important"); the time embedding, the encoder
  and the middle block run under `torch.no_grad()`; the residuals are added to the middle block's output
  and to each skip connection; an exception moves the control models to the CPU before it propagates;
- `restore` puts back the forward it saved, as an instance attribute (a bound method of the UNet).

The control model is a stand-in: a seeded 1×1 convolution per residual of the latent and the hint, each
pooled to the residual's grid (ControlNet's is a copy of the UNet's encoder). Guidance start/end (its
`on_cfg_denoiser` callback), T2I adapters, reference and inpaint units are not mirrored. The SDXL stand-in
passes ldm one context per transformer block (`initno.tiny.unet_context`) where sgm passes one tensor:
each copy is unmarked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from ldm.modules.diffusionmodules.util import timestep_embedding
from modules import prompt_parser, scripts
from modules.sd_hijack_unet import th  # ControlNet's hook.py has its own copy of the same resizing `cat`
from torch import nn

POSITIVE_MARK_TOKEN = 1024
NEGATIVE_MARK_TOKEN = -POSITIVE_MARK_TOKEN
MARK_EPS = 1e-3


def prompt_context_is_marked(x: torch.Tensor) -> bool:
    row = x[..., 0, :]
    return float(torch.mean(torch.abs(torch.abs(row) - POSITIVE_MARK_TOKEN))) < MARK_EPS


def mark_prompt_context(x, positive: bool):
    if isinstance(x, list):
        for i in range(len(x)):
            x[i] = mark_prompt_context(x[i], positive)
        return x
    if isinstance(x, prompt_parser.MulticondLearnedConditioning):
        x.batch = mark_prompt_context(x.batch, positive)
        return x
    if isinstance(x, prompt_parser.ComposableScheduledPromptConditioning):
        x.schedules = mark_prompt_context(x.schedules, positive)
        return x
    if isinstance(x, prompt_parser.ScheduledPromptConditioning):
        cond = x.cond["crossattn"] if isinstance(x.cond, dict) else x.cond
        if prompt_context_is_marked(cond):
            return x
        mark = POSITIVE_MARK_TOKEN if positive else NEGATIVE_MARK_TOKEN
        cond = torch.cat([torch.zeros_like(cond)[:1] + mark, cond], dim=0)
        if isinstance(x.cond, dict):
            cond = {"crossattn": cond, "vector": x.cond["vector"]}
        return prompt_parser.ScheduledPromptConditioning(end_at_step=x.end_at_step, cond=cond)
    return x


def unmark_prompt_context(x: torch.Tensor):
    """(cond_mark (B, 1, 1, 1), uncond rows, cond rows, context without the marker)."""
    if not prompt_context_is_marked(x):
        return torch.ones(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device), [], [], x
    mark = (torch.mean(torch.abs(x[:, 0, :] - NEGATIVE_MARK_TOKEN), dim=1) > MARK_EPS).float()
    rows = mark.tolist()
    uncond = [i for i, m in enumerate(rows) if m < 0.5]
    cond = [i for i, m in enumerate(rows) if m >= 0.5]
    return mark[:, None, None, None].to(x), uncond, cond, x[:, 1:, :]


def aligned_adding(base: torch.Tensor, x) -> torch.Tensor:
    if isinstance(x, float):
        return base if x == 0.0 else base + x
    if x.shape[-2:] != base.shape[-2:]:
        x = nn.functional.interpolate(x, size=base.shape[-2:], mode="nearest")
    return base + x


class StandInControlModel(nn.Module):
    """One residual per input block of `unet` and one for its middle block (ControlNet's 13 for SD1, 10 for
    SDXL), each of the block's width on the block's grid."""

    def __init__(self, unet: nn.Module, seed: int = 0):
        super().__init__()
        levels, widths, level = [], [], 0
        for block in unet.input_blocks:
            for layer in block:
                level += type(layer).__name__ == "Downsample"
            widths.append(next(layer.out_channels for layer in reversed(block) if hasattr(layer, "out_channels")))
            levels.append(level)
        levels.append(levels[-1])  # the middle block
        widths.append(widths[-1])
        generator = torch.Generator().manual_seed(seed)
        self.levels = levels
        self.weights = nn.ParameterList(
            nn.Parameter(0.1 * torch.randn(width, unet.in_channels + 3, 1, 1, generator=generator)) for width in widths
        )

    def forward(self, x, hint, timesteps=None, context=None, y=None):
        outputs = []
        for level, weight in zip(self.levels, self.weights):
            grid = (math.ceil(x.shape[-2] / 2**level), math.ceil(x.shape[-1] / 2**level))
            pooled_hint = nn.functional.adaptive_avg_pool2d(hint.to(x), grid).expand(x.shape[0], -1, -1, -1)
            features = torch.cat([nn.functional.adaptive_avg_pool2d(x, grid), pooled_hint], dim=1)
            outputs.append(nn.functional.conv2d(features, weight.to(x)))
        return outputs


@dataclass
class ControlNetUnit:
    """What the stand-in reads of a unit: enabled, its weight, its hint image (1, 3, H, W) in 0..1, and
    the control mode "ControlNet is more important" (`cfg_injection`: residuals on cond rows only)."""

    enabled: bool = True
    weight: float = 1.0
    hint: torch.Tensor | None = None
    cfg_injection: bool = False


@dataclass
class ControlParams:
    control_model: nn.Module
    hint_cond: torch.Tensor
    weight: float
    cfg_injection: bool
    guidance_stopped: bool = False


@dataclass
class UnetHook:
    model: nn.Module | None = None
    control_params: list[ControlParams] = field(default_factory=list)
    current_uc_indices: list[int] = field(default_factory=list)
    current_c_indices: list[int] = field(default_factory=list)
    moved_to_cpu: int = 0
    """How often an exception in the UNet forward made it move the control models to the CPU."""
    calls: list[dict] = field(default_factory=list)
    """Per UNet call: its batch size, whether gradients were on, the cond/uncond rows, the context length."""

    def hook(self, model: nn.Module, sd_ldm, control_params: list[ControlParams], process) -> None:
        self.model = model
        self.control_params = control_params
        model_is_sdxl = getattr(sd_ldm, "is_sdxl", False)
        outer = self

        def process_sample(*args, **kwargs):
            mark_prompt_context(kwargs.get("conditioning", []), positive=True)
            mark_prompt_context(kwargs.get("unconditional_conditioning", []), positive=False)
            mark_prompt_context(getattr(process, "hr_c", []), positive=True)
            mark_prompt_context(getattr(process, "hr_uc", []), positive=False)
            return process.sample_before_CN_hack(*args, **kwargs)

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            is_sdxl = y is not None and model_is_sdxl
            copies = context if isinstance(context, list) else [context]
            unmarked = [unmark_prompt_context(c) for c in copies]
            cond_mark, outer.current_uc_indices, outer.current_c_indices, _ = unmarked[0]
            context = [u[3] for u in unmarked] if isinstance(context, list) else unmarked[0][3]
            first_context = context[0] if isinstance(context, list) else context
            outer.calls.append(
                {
                    "batch": x.shape[0],
                    "grad": torch.is_grad_enabled(),
                    "cond": list(outer.current_c_indices),
                    "uncond": list(outer.current_uc_indices),
                    "context_length": first_context.shape[1],
                }
            )
            total = [0.0] * (len(self.input_blocks) + 1)
            for param in outer.control_params:
                if param.guidance_stopped:
                    continue
                control = param.control_model(x=x, hint=param.hint_cond, timesteps=timesteps, context=context, y=y)
                control = [c * param.weight for c in control]
                if param.cfg_injection:
                    control = [c * cond_mark for c in control]
                total = [c + t for c, t in zip(control, total)]

            hs = []
            with torch.no_grad():
                emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
                if is_sdxl:
                    emb = emb + self.label_emb(y)
                h = x
                for module in self.input_blocks:
                    h = module(h, emb, context)
                    hs.append(h)
                h = self.middle_block(h, emb, context)
            h = aligned_adding(h, total.pop())
            for module in self.output_blocks:
                h = th.cat([h, aligned_adding(hs.pop(), total.pop())], dim=1)
                h = module(h, emb, context)
            return self.out(h.type(x.dtype))

        def forward_webui(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            except Exception:
                outer.moved_to_cpu += 1  # move_all_control_model_to_cpu()
                raise

        if getattr(process, "sample_before_CN_hack", None) is None:
            process.sample_before_CN_hack = process.sample
        process.sample = process_sample
        model._original_forward = model.forward
        model.forward = forward_webui.__get__(model, type(model))

    def restore(self) -> None:
        self.control_params = None
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward


class ControlNetScript(scripts.Script):
    """The always-on "ControlNet" script, with its units given as `units` (the real one reads them from its
    UI arguments)."""

    def __init__(self, units: list[ControlNetUnit] | None = None):
        self.units = units or []
        self.latest_network: UnetHook | None = None
        self.networks: list[UnetHook] = []  # every hook made, for the tests to read
        self.control_model: StandInControlModel | None = None

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args, **kwargs):
        unet = p.sd_model.model.diffusion_model
        if self.latest_network is not None:
            self.latest_network.restore()
        enabled = [unit for unit in self.units if unit.enabled]
        if not enabled:
            self.latest_network = None
            return
        self.control_model = StandInControlModel(unet)  # the same seeded weights each time
        params = [ControlParams(self.control_model, unit.hint, unit.weight, unit.cfg_injection) for unit in enabled]
        self.latest_network = UnetHook()
        self.latest_network.hook(model=unet, sd_ldm=p.sd_model, control_params=params, process=p)
        self.networks.append(self.latest_network)

    def postprocess(self, p, processed, *args):
        if self.latest_network is None:
            return
        self.latest_network.restore()
        self.latest_network = None
