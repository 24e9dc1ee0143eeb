from __future__ import annotations

import pytest
import torch
from helpers import CAT_AND_DOG

from initno.optimize import Denoiser
from initno.tiny import TinyTextEncoder, apply_unet, build_unet

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_unet():
    return build_unet(seed=0)


@pytest.fixture(scope="session")
def text_encoder():
    return TinyTextEncoder(dim=32, seed=0)


@pytest.fixture(scope="session")
def cat_and_dog(text_encoder):
    return text_encoder([CAT_AND_DOG])


@pytest.fixture
def apply(tiny_unet):
    return apply_unet(tiny_unet)


@pytest.fixture
def denoiser(tiny_unet, apply):
    """The tiny UNet as InitNO's denoiser at the official first timestep (PNDM's first of 50)."""
    return Denoiser(unet=tiny_unet, apply=apply, timestep=981)
