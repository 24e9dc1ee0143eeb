"""Attention guidance inside the host's sampler (A1111 v1.10's samplers, which the Forge family keeps; facts,
with file:line citations, in docs/notes/a1111-samplers.md): at the start of each guided step, every image's
latent is moved in place, on the very tensor the sampler keeps using, before the sampler's own model call at
that step.

Where: `p.sampler.model_wrap_cfg.forward` (the CFG denoiser every sampler calls with its state x) and
`p.sampler.callback_state` (called once per step), both overridden on that sampler instance only; the host
creates a new sampler for every batch and for the hires pass, so nothing can outlive the batch, and
`remove()` takes both off again after sampling.

Which call carries the sampler's state at step i: the first call of all, then the first call after each
callback, except for second-order samplers (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, Restart), whose
callback comes between the state call and the call on their intermediate latent: there it is the second
call after the callback. k-diffusion samplers hold x = z·sqrt(1 + σ²) and get `kdiffusion_guide`;
DDIM, DDIM CFG++ and PLMS hold z itself and are called with the timestep. UniPC (its later calls see the
predictor's temporary, never the state), DPM fast and DPM adaptive (no step per callback) are refused
(`faults.REFUSED_SAMPLERS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..guidance import ImageGuidance, kdiffusion_guide
from .passes import sigma_to_timestep


class SamplerGuidance:
    """Guides each image of one batch while the host samples it.

    `guides[b]` guides image b of the batch (None: that image is not guided); `on_fault(error)` is called
    once if a guidance pass fails, after which the batch samples on unguided; `on_finished()` once when no
    guided step is left (or at `remove()`); `around()` is entered around each step's guidance passes."""

    def __init__(
        self,
        sampler,
        guides: list[ImageGuidance | None],
        on_fault: Callable[[BaseException], None],
        *,
        on_finished: Callable[[], None] | None = None,
        around: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        self.sampler = sampler
        self.guides = guides
        self.on_fault = on_fault
        self.on_finished = on_finished or (lambda: None)
        self.around = around or contextlib.nullcontext
        self.guided_steps = max((guide.plan.guided for guide in guides if guide is not None), default=0)
        self.finished = False
        self.cfg_denoiser = sampler.model_wrap_cfg
        options = getattr(getattr(sampler, "config", None), "options", None) or {}
        self.state_call_offset = 1 if options.get("second_order") else 0
        self.kdiffusion_wrap = getattr(sampler, "model_wrap", None) if hasattr(sampler, "get_sigmas") else None
        self.callbacks = 0
        self.calls_since_callback = 0
        self._installed: list[tuple[object, str, object]] = []

    # -- installing -------------------------------------------------------------------------------------

    def install(self) -> SamplerGuidance:
        """Both overrides or neither: a half-installed hook would guide while the infotext says it stopped."""
        try:
            self._override(self.cfg_denoiser, "forward", self._forward(self.cfg_denoiser.forward))
            self._override(self.sampler, "callback_state", self._callback(self.sampler.callback_state))
        except BaseException:
            self.remove()
            raise
        return self

    def _override(self, owner, name: str, value) -> None:
        self._installed.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, value)

    def remove(self) -> None:
        for owner, name, previous in reversed(self._installed):
            if previous is _ABSENT:
                owner.__dict__.pop(name, None)
            else:
                setattr(owner, name, previous)
        self._installed.clear()
        self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.on_finished()

    # -- the overrides ----------------------------------------------------------------------------------

    def _callback(self, original):
        def callback_state(d):
            self.callbacks += 1
            self.calls_since_callback = 0
            return original(d)

        return callback_state

    def _forward(self, original):
        def forward(x, sigma, *args, **kwargs):
            state_call = self.calls_since_callback == (0 if self.callbacks == 0 else self.state_call_offset)
            self.calls_since_callback += 1
            if state_call and not self.finished:
                if self.callbacks < self.guided_steps:
                    self._guide(x, sigma)
                if self.callbacks + 1 >= self.guided_steps:
                    self._finish()
            return original(x, sigma, *args, **kwargs)

        return forward

    def _guide(self, x: torch.Tensor, sigma: torch.Tensor) -> None:
        step = self.callbacks
        try:
            moved = []
            with self.around():
                for index, guide in enumerate(self.guides):
                    if guide is None:
                        continue
                    latent, level = x[index : index + 1], float(sigma[index])
                    if self.kdiffusion_wrap is not None:  # k-diffusion: sigma in, the UNet's timestep for the pass
                        timestep = sigma_to_timestep(self.kdiffusion_wrap, level)
                        new = kdiffusion_guide(guide.guide, step, latent, level, timestep)
                    else:  # DDIM, PLMS: the sampler holds z_t and passes the timestep itself
                        new = guide.guide(step, latent, level)
                    moved.append((index, new))
        except Exception as error:  # the image generates unguided from here on; the infotext says why
            self.on_fault(error)
            self._finish()
            return
        with torch.no_grad():
            for index, new in moved:  # in place: the sampler's own tensor, after every image succeeded
                x[index].copy_(new[0].to(dtype=x.dtype, device=x.device))


_ABSENT = object()
