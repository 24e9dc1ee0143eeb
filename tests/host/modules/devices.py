"""Mirrors modules/devices.py: the device and dtype globals and the autocast helpers."""

import contextlib

import torch
from modules import shared

cpu = torch.device("cpu")
device = shared.device
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False


class NansException(Exception):
    pass


def autocast(disable=False):
    # The host returns a nullcontext for fp32 (`--no-half`) and torch.autocast("cuda") otherwise.
    if disable or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def without_autocast(disable=False):
    return (
        torch.autocast(device.type, enabled=False)
        if torch.is_autocast_enabled() and not disable
        else contextlib.nullcontext()
    )


gc_calls = 0


def torch_gc():
    global gc_calls
    gc_calls += 1


def test_for_nans(x, where):
    if not torch.isfinite(x).all():
        raise NansException(f"A tensor with NaNs was produced in {where}.")
