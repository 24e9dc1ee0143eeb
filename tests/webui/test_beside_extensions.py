"""InitNO beside other extensions that change the UNet for a generation (issue 13), through stand-ins of
their mechanisms (tests/host/extensions*/, each citing the files it mirrors): Regional Prompter's
attention mode and AnimateDiff's motion modules are refused with a message that names them, the image
still made and their changes left in place; its latent mode and the WebUI's Hypertile work with InitNO.
ControlNet: tests/webui/test_controlnet.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from modules import infotext_utils

HOST = Path(__file__).resolve().parents[1] / "host"
ON = {"enabled": True, "subjects": "cat, dog", "max_rounds": 1, "steps_per_round": 2, "fallback_steps": 0}
SIZE = {"width": 128, "height": 128}


def _load(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, HOST / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _status(processed, index=0):
    return infotext_utils.parse_generation_parameters(processed.infotexts[index])["InitNO"]


@pytest.fixture
def unet(webui):
    return webui.model.model.diffusion_model


def test_regional_prompter_attention_mode_is_refused_by_name(webui, unet):
    regional = _load("extensions/sd-webui-regional-prompter/scripts/attention.py").RegionalPrompter(batch_size=2)
    regional.hook_forwards(unet)
    hooked = {name: m.forward for name, m in unet.named_modules() if "forward" in m.__dict__}
    try:
        processed = webui.txt2img(ON, batch_size=2, **SIZE)
    finally:
        after = {name: m.forward for name, m in unet.named_modules() if "forward" in m.__dict__}
        regional.hook_forwards(unet, remove=True)
    assert len(processed.images) == 2
    for index in (0, 1):
        status = _status(processed, index)
        assert status.startswith("skipped: sd-webui-regional-prompter replaces the UNet's cross-attention")
        assert "its Latent mode works with InitNO" in status
    assert after == hooked  # its forwards as it set them, and sampling ran through them
    assert regional.calls > 0


def test_regional_prompter_latent_mode_leaves_initno_running(webui, unet):
    regional = _load("extensions/sd-webui-regional-prompter/scripts/attention.py").RegionalPrompter(batch_size=2)
    regional.hook_forwards(unet, remove=True)  # latent mode takes its forwards off (scripts/rp.py:598)
    processed = webui.txt2img(ON, batch_size=2, **SIZE)
    assert all(_status(processed, i).startswith(("valid", "not valid")) for i in (0, 1))


def test_animatediff_is_refused_and_its_frames_still_made(webui, unet):
    animatediff = _load("extensions/sd-webui-animatediff/motion_module.py")
    animatediff.inject(unet)
    try:
        processed = webui.txt2img(ON, batch_size=2, **SIZE)
    finally:
        animatediff.restore(unet)
    assert len(processed.images) == 2
    assert _status(processed).startswith("skipped: AnimateDiff is on: its motion modules make the batch one video")


def test_hypertile_keeps_tiling_and_initno_runs(webui, unet):
    hypertile = _load("extensions-builtin/hypertile/hypertile.py").Hypertile()
    hypertile.hook_model(unet)
    wrappers = {name: m.forward for name, m in unet.named_modules() if "forward" in m.__dict__}
    try:
        processed = webui.txt2img(ON, **SIZE)
        after = {name: m.forward for name, m in unet.named_modules() if "forward" in m.__dict__}
    finally:
        hypertile.unhook_model(unet)
    assert _status(processed).startswith(("valid", "not valid"))
    assert after == wrappers
    assert hypertile.calls > 0
