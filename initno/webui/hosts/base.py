"""What InitNO needs from a host that differs between hosts: one small interface, one adapter per host.

Every supported host keeps A1111's script, processing and sampler API, so the shared glue (`checks`,
`conditioning`, `passes`, `job`) reads the prompt, the conditioning and the sampler the same way on all of
them; an adapter answers only where the hosts differ: where the UNet is and what of it InitNO can read, the
text encoders, the dtype the UNet computes in, the noise schedule and what the UNet predicts, how a cond-only
UNet pass is run, what the host's sampler does to the model first, what keeps InitNO's passes differentiable,
and where the sampler takes its noise from.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch

from ...optimize import Denoiser


class Host(ABC):
    """One host's access to the loaded model `model` (`p.sd_model` or `shared.sd_model`)."""

    name: str

    def __init__(self, model):
        self.model = model

    @abstractmethod
    def unet(self) -> torch.nn.Module:
        """The UNet whose attention InitNO reads, or `faults.Unsupported` naming what is in the way. Called
        after the checks every host shares (`checks.unet_of`)."""

    @abstractmethod
    def text_encoders(self) -> list:
        """The text encoders, each with A1111's `tokenize` / `process_texts` / `id_end`, CLIP-L's first
        (SDXL base: CLIP-L and OpenCLIP-G; its refiner: one). `[None]` (A1111) or `[]` (Forge 2) where none is
        loaded yet (`checks.is_loaded` reads both)."""

    @abstractmethod
    def text_model(self):
        """What tokenises and chunks a prompt as the host does for the conditioning (`tokenize`,
        `process_texts`)."""

    @abstractmethod
    def compute_dtype(self) -> torch.dtype:
        """The dtype the UNet computes in."""

    @abstractmethod
    def schedule(self) -> tuple[torch.Tensor, str]:
        """The model's ᾱ_t for t = 0..T−1 and what its UNet predicts ("eps" or "v"), for lookahead's sampler
        (`initno.ddim`); `faults.Unsupported` for anything else."""

    @abstractmethod
    def denoiser(self, unet: torch.nn.Module, timestep: float, checkpoint_blocks: bool) -> Denoiser:
        """The UNet's cond branch at `timestep`, as the host's sampler would run it."""

    @abstractmethod
    def prepared(self, latent: torch.Tensor) -> contextlib.AbstractContextManager:
        """Around InitNO's passes before sampling: what the host's sampler does to the model first, for a
        batch like `latent`."""

    @abstractmethod
    def differentiable(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Around each of InitNO's passes (entered with inference mode off): what the host's weights need
        for a backward pass to the latent."""

    @abstractmethod
    def use_noise(self, p, noise: torch.Tensor) -> None:
        """Makes the host's sampler start from `noise`, the batch's initial noise replaced in place."""
