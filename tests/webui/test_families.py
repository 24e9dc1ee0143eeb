"""Checkpoint families through the stand-in: SD2 (eps and v prediction) with the real ldm UNet in the SD2
layout (linear projections, fixed-width heads) and its OpenCLIP-style padding; SDXL base with its
dictionary conditioning, two text encoders and the SDXL layout; the SDXL refiner, refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import QUICK_INITNO, assert_no_hooks_left, initno_status
from modules import devices, prompt_parser, shared
from modules.sd_models import StandInSD1Model
from modules.sd_models_xl import StandInSDXLModel

from initno import optimize as optimize_module
from initno.webui import job as job_module
from initno.webui import passes
from initno.webui.hosts import host_of

QUICK = {"enabled": True, **QUICK_INITNO}


@pytest.fixture(params=["eps", "v"])
def sd2(request, webui):
    previous = shared.sd_model
    shared.sd_model = StandInSD1Model.sd2(request.param)
    yield shared.sd_model
    shared.sd_model = previous


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = optimize_module.optimize_noise

    def spy(denoiser, requests, params, **kwargs):
        results = real(denoiser, requests, params, **kwargs)
        seen.append((denoiser, requests, results))
        return results

    monkeypatch.setattr(job_module, "optimize_noise", spy)
    return seen


def test_sd2_softmax_runs_over_the_prompts_own_tokens(webui, sd2, calls):
    processed = webui.txt2img(QUICK, prompt="a cat and a dog", width=128, height=128)
    (denoiser, (request,), (result,)) = calls[0]
    assert request.softmax_positions == [1, 2, 3, 4, 5]  # no end token, no padding (Attend-and-Excite's fix)
    assert request.subjects == [[2], [5]]
    assert denoiser.timestep == pytest.approx(999.0, abs=1e-3)
    assert result.maps_after.cross.shape == (2, 4, 4)
    assert "InitNO tokens: cat 2; dog 5" in processed.infotexts[0]


def test_sd1_keeps_the_official_softmax(webui, calls):
    webui.txt2img(QUICK, prompt="a cat and a dog", width=128, height=128)
    assert calls[0][1][0].softmax_positions is None


@pytest.fixture(scope="module")
def sdxl_model():
    return StandInSDXLModel()


@pytest.fixture
def sdxl(webui, sdxl_model):
    previous = shared.sd_model
    shared.sd_model = sdxl_model
    yield sdxl_model
    shared.sd_model = previous


@pytest.mark.parametrize(("size", "grid"), [((128, 128), (4, 4)), ((200, 136), (5, 7))])
def test_sdxl_runs_on_its_deepest_level_with_the_hosts_conditioning_dict(webui, sdxl, calls, size, grid):
    """200×136 is a multiple of 8, not of 64: latent 25×17, read at 7×5 (the host resizes the skips)."""
    width, height = size
    processed = webui.txt2img(QUICK, prompt="a cat and a dog", width=width, height=height)
    (denoiser, (request,), (result,)) = calls[0]
    assert initno_status(processed).startswith(("valid", "not valid"))
    assert result.maps_after.cross.shape == (2, *grid)
    assert set(request.cond) == {"crossattn", "vector"}
    assert request.cond["crossattn"].shape == (1, 77, 2048)  # CLIP-L 768 + OpenCLIP-G 1280, shared positions
    expected = sdxl.get_learned_conditioning(
        prompt_parser.SdConditioning(["a cat and a dog"], width=width, height=height)
    )
    torch.testing.assert_close(request.cond["vector"], expected["vector"])  # pooled G + sizes, this image's size
    torch.testing.assert_close(request.cond["crossattn"], expected["crossattn"])
    assert request.subjects == [[2], [5]]
    assert request.softmax_positions == [1, 2, 3, 4, 5]  # half the context is OpenCLIP-G, padded with 0
    assert not denoiser.checkpoint_blocks  # Automatic, on a CPU
    assert_no_hooks_left(sdxl)


def test_sdxl_checkpointing_changes_memory_not_the_result(webui, sdxl, calls):
    images = {}
    for choice in ("Off", "On"):
        shared.opts.initno_checkpointing = choice
        try:
            images[choice] = np.asarray(webui.txt2img(QUICK, prompt="a cat and a dog", width=128, height=128).images[0])
        finally:
            shared.opts.initno_checkpointing = "Automatic"
    assert [denoiser.checkpoint_blocks for denoiser, *_ in calls] == [False, True]
    # Up to rounding: outside the capture grid the checkpointed pass runs the fused kernel, not the host's.
    torch.testing.assert_close(calls[1][2][0].latent, calls[0][2][0].latent, rtol=1e-3, atol=1e-4)
    assert np.abs(images["On"].astype(int) - images["Off"].astype(int)).max() <= 1
    assert_no_hooks_left(sdxl)


GIB = 2**30


@pytest.mark.parametrize(
    ("family", "size", "free", "expected"),
    [
        ("sdxl", (1024, 1024), 4.6 * GIB, True),  # a 12 GB card once A1111 holds SDXL's weights
        ("sdxl", (832, 1216), 4.6 * GIB, True),  # SDXL's other buckets: the same area
        ("sdxl", (1024, 1024), 16 * GIB, False),  # a 24 GB card
        ("sdxl", (1024, 1024), None, False),  # CPU: the system's memory
        ("sd1", (512, 512), 2 * GIB, False),
    ],
)
def test_automatic_checkpointing_when_the_gpu_is_short_of_memory(monkeypatch, family, size, free, expected):
    from types import SimpleNamespace

    model = SimpleNamespace(is_sdxl=family == "sdxl", is_sd2=family == "sd2")
    p = SimpleNamespace(sd_model=model, width=size[0], height=size[1])
    monkeypatch.setattr(passes, "free_device_memory", lambda: free)
    monkeypatch.setattr(devices, "dtype_unet", torch.float16)
    assert passes.checkpoint_blocks(p, host_of(model)) is expected


def test_sdxl_refiner_is_refused_and_the_image_still_made(webui, calls):
    previous = shared.sd_model
    shared.sd_model = StandInSDXLModel(refiner=True)
    try:
        processed = webui.txt2img(QUICK, prompt="a cat and a dog", width=128, height=128)
    finally:
        refiner, shared.sd_model = shared.sd_model, previous
    assert calls == []
    assert len(processed.images) == 1
    assert initno_status(processed).startswith("skipped: SDXL refiner checkpoints are not supported")
    assert_no_hooks_left(refiner)


def test_tokens_route_on_sdxl_and_on_the_refiner(webui, sdxl):
    base = webui.client.post("/initno/v1/tokens", json={"prompt": "a cat BREAK a dog", "subjects": "cat, dog"}).json()
    assert [(s["text"], s["positions"]) for s in base["subjects"]] == [("cat", [2]), ("dog", [79])]
    assert base["context_length"] == 154 and base["unsupported"] is None
    shared.sd_model = StandInSDXLModel(refiner=True)  # the `sdxl` fixture puts the previous model back
    refiner = webui.client.post("/initno/v1/tokens", json={"prompt": "a cat and a dog"}).json()
    assert refiner["unsupported"].startswith("SDXL refiner checkpoints are not supported")


def test_out_of_memory_retries_once_with_checkpointing_when_automatic(webui, sdxl, monkeypatch):
    """Automatic can misjudge the free memory (--medvram moves the UNet in only when it runs)."""
    tried = []
    real = optimize_module.optimize_noise

    def short_of_memory(denoiser, requests, params, **kwargs):
        tried.append(denoiser.checkpoint_blocks)
        if not denoiser.checkpoint_blocks:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return real(denoiser, requests, params, **kwargs)

    monkeypatch.setattr(job_module, "optimize_noise", short_of_memory)
    processed = webui.txt2img(QUICK, prompt="a cat and a dog", width=128, height=128)
    assert tried == [False, True]
    assert initno_status(processed).startswith(("valid", "not valid"))
    shared.opts.initno_checkpointing = "Off"  # chosen by the user: no retry, skipped with the message
    try:
        processed = webui.txt2img(QUICK, prompt="a cat and a dog", width=128, height=128)
    finally:
        shared.opts.initno_checkpointing = "Automatic"
    assert tried == [False, True, False]
    assert initno_status(processed).startswith("skipped: out of memory")
    assert_no_hooks_left(sdxl)
