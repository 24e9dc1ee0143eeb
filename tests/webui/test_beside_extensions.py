"""InitNO beside other extensions that change the UNet for a generation, through stand-ins of their
mechanisms (tests/host/extensions*/, each citing the files it mirrors): Regional Prompter's attention mode
and AnimateDiff's motion modules are refused with a message that names them, the images made as without
InitNO and their changes left in place; its latent mode and the WebUI's Hypertile work with InitNO.
ControlNet: tests/webui/test_controlnet.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK_INITNO, SIZE, initno_status, pixels
from helpers import instance_forwards

HOST = Path(__file__).resolve().parents[1] / "host"
ON = {"enabled": True, **QUICK_INITNO}


def _load(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, HOST / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def unet(webui):
    return webui.model.model.diffusion_model


def test_regional_prompter_attention_mode_is_refused_by_name(webui, unet, optimisations):
    regional = _load("extensions/sd-webui-regional-prompter/scripts/attention.py").RegionalPrompter(batch_size=2)
    regional.hook_forwards(unet)
    hooked = instance_forwards(unet)
    try:
        without = webui.txt2img(batch_size=2, **SIZE)
        calls_without, regional.calls = regional.calls, 0
        processed = webui.txt2img(ON, batch_size=2, **SIZE)
        after = instance_forwards(unet)
    finally:
        regional.hook_forwards(unet, remove=True)
    for index in (0, 1):
        status = initno_status(processed, index)
        assert status.startswith("skipped: sd-webui-regional-prompter replaces the UNet's cross-attention")
        assert "its Latent mode works with InitNO" in status
    assert optimisations.calls == []
    assert after == hooked  # its forwards as it set them
    # Sampling ran through them exactly as without InitNO, and no pass of InitNO did.
    assert regional.calls == calls_without > 0
    assert all(np.array_equal(a, b) for a, b in zip(pixels(processed), pixels(without), strict=True))


def test_regional_prompter_latent_mode_leaves_initno_running(webui, unet, optimisations):
    regional = _load("extensions/sd-webui-regional-prompter/scripts/attention.py").RegionalPrompter(batch_size=2)
    regional.hook_forwards(unet, remove=True)  # latent mode takes its forwards off (scripts/rp.py:598)
    processed = webui.txt2img(ON, batch_size=2, **SIZE)
    assert all(initno_status(processed, i).startswith(("valid", "not valid")) for i in (0, 1))
    ((_, requests, _, results),) = optimisations.calls
    assert len(results) == 2
    assert all(not torch.equal(r.latent, q.noise) for q, r in zip(requests, results))  # each noise moved


def test_animatediff_is_refused_and_its_frames_made_as_without_initno(webui, unet, optimisations):
    animatediff = _load("extensions/sd-webui-animatediff/motion_module.py")
    animatediff.inject(unet)
    try:
        without = webui.txt2img(batch_size=2, **SIZE)
        processed = webui.txt2img(ON, batch_size=2, **SIZE)
    finally:
        animatediff.restore(unet)
    assert initno_status(processed).startswith(
        "skipped: AnimateDiff is on: its motion modules make the batch one video"
    )
    assert optimisations.calls == []
    assert len(processed.images) == 2
    assert all(np.array_equal(a, b) for a, b in zip(pixels(processed), pixels(without), strict=True))


def test_hypertile_keeps_tiling_and_initno_runs(webui, unet, optimisations):
    plain_run = webui.txt2img(ON, **SIZE)  # InitNO without Hypertile
    hypertile = _load("extensions-builtin/hypertile/hypertile.py").Hypertile()
    hypertile.hook_model(unet)
    wrappers = instance_forwards(unet)
    try:
        processed = webui.txt2img(ON, **SIZE)
        after = instance_forwards(unet)
    finally:
        hypertile.unhook_model(unet)
    assert initno_status(processed).startswith(("valid", "not valid"))
    assert after == wrappers
    (_, plain_requests, _, (plain,)), (_, requests, _, (tiled,)) = optimisations.calls
    assert not torch.equal(tiled.latent, requests[0].noise)  # InitNO moved the noise
    # The tiling acts in InitNO's passes too: the same noise scores differently through the tiled layers.
    assert torch.equal(requests[0].noise, plain_requests[0].noise)
    assert tiled.initial.joint != plain.initial.joint
    assert not np.array_equal(pixels(processed)[0], pixels(plain_run)[0])
