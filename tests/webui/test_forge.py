"""InitNO on Forge 2, through the stand-in of its parts (tests/host/backend, and the Forge 2 paths of the
processing stand-in): the same checkpoint loaded the A1111 way and the Forge 2 way (weights made inside
inference mode, in-place residual adds, sampling inside inference mode, `p.modified_noise`, the hires
pass's double hook call) gives the same optimised noise, guidance and image; what Forge 2 cannot do is
refused with a message; nothing is left on the model afterwards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from backend.diffusion_engine.sd15 import StableDiffusion
from backend.diffusion_engine.sdxl import StableDiffusionXL
from conftest import SIZE, OptimiseSpy, infotext_params, interrupt_after, pixels
from modules import shared
from modules.sd_models_xl import StandInSDXLModel

from initno.tiny import TINY_UNET
from initno.webui.hosts import forge

QUICK = {"method": "initno", "max_rounds": 2, "steps_per_round": 2, "fallback_steps": 1, "thresholds": "official"}
ON = {"enabled": True, "subjects": "cat, dog", **QUICK}


@pytest.fixture
def forge2(webui, monkeypatch):
    """The webui's checkpoint, loaded as Forge 2 loads it; A1111's model again after the test."""
    model = StableDiffusion(webui.model)
    monkeypatch.setattr(shared, "sd_model", model)
    return model


def _unet(model):
    return model.forge_objects.unet.model.diffusion_model


def assert_model_as_loaded(model, parameters) -> None:
    """The very parameter objects Forge made (inference tensors, flags as they were), no hook, no forward."""
    unet = _unet(model)
    assert [id(p) for p in unet.parameters()] == [id(p) for p in parameters]
    assert all(p.is_inference() and p.requires_grad and p.grad is None for p in unet.parameters())
    assert all("forward" not in m.__dict__ for m in unet.modules())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in unet.modules())


def test_the_stand_in_is_forge_2_where_it_matters(webui, forge2, monkeypatch):
    """The two facts the glue exists for, measured on the real Forge 2, hold here: a backward to the input
    fails on the inference-tensor weights, then on the in-place adds; with both handled, the gradient is
    A1111's."""
    unet = _unet(forge2)
    latent = torch.randn(1, 4, 16, 16, requires_grad=True)
    t, context = torch.tensor([999.0]), torch.randn(1, 77, TINY_UNET["context_dim"])
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        unet(latent, t, context=context).sum().backward()
    with monkeypatch.context() as patch:
        patch.setattr(forge, "_clone_first_input", lambda *_: None)
        with forge.differentiable(unet), pytest.raises(RuntimeError, match="modified by an inplace"):
            unet(latent, t, context=context).sum().backward()
    with forge.differentiable(unet):
        (gradient,) = torch.autograd.grad(unet(latent, t, context=context).sum(), latent)
    (reference,) = torch.autograd.grad(webui.model.model.diffusion_model(latent, t, context=context).sum(), latent)
    assert torch.allclose(gradient, reference, atol=1e-6)


def test_initno_on_forge_2_equals_initno_on_a1111(webui, forge2, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    shared.sd_model = webui.model
    a1111 = webui.txt2img(ON, seed=3, **SIZE)
    shared.sd_model = forge2
    parameters = list(_unet(forge2).parameters())
    forge_run = webui.txt2img(ON, seed=3, **SIZE)
    a1111_result, forge_result = spy.results
    assert torch.allclose(a1111_result.latent, forge_result.latent, atol=1e-5)
    assert a1111_result.final.joint == pytest.approx(forge_result.final.joint, abs=1e-5)
    for key in ("InitNO", "InitNO tokens", "InitNO scores"):
        assert infotext_params(forge_run)[key] == infotext_params(a1111)[key]
    assert np.abs(pixels(forge_run)[0] - pixels(a1111)[0]).max() <= 1  # sampled from the optimised noise
    plain = webui.txt2img(seed=3, **SIZE)
    assert np.abs(pixels(plain)[0] - pixels(forge_run)[0]).max() > 10
    # InitNO prepared the model the host's way first; the sampler prepared it again for sampling.
    events = [e[0] for e in forge2.forge_objects.unet.events]
    assert events[:3] == ["prepare", "cleanup", "prepare"] and events[3] == "sample"
    assert_model_as_loaded(forge2, parameters)


@pytest.mark.parametrize("method", ["initno+", "ae"])
def test_sampling_guidance_on_forge_2_equals_a1111(webui, forge2, method):
    settings = {**ON, "method": method, "max_rounds": 1, "max_refinement": 2}
    shared.sd_model = webui.model
    a1111 = webui.txt2img(settings, seed=4, steps=4, sampler_name="Euler", **SIZE)
    shared.sd_model = forge2
    parameters = list(_unet(forge2).parameters())
    forge_run = webui.txt2img(settings, seed=4, steps=4, sampler_name="Euler", **SIZE)
    guidance = infotext_params(forge_run)["InitNO guidance"]
    assert guidance.startswith(("InitNO+, 2 steps", "Attend-and-Excite, 2 steps")), guidance
    assert guidance == infotext_params(a1111)["InitNO guidance"]
    assert np.abs(pixels(forge_run)[0] - pixels(a1111)[0]).max() <= 1
    assert_model_as_loaded(forge2, parameters)


def test_checkpointed_blocks_on_forge_2_give_the_same_noise(webui, forge2, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    webui.txt2img(ON, seed=5, **SIZE)
    monkeypatch.setattr(shared.opts, "initno_checkpointing", "On", raising=False)
    webui.txt2img(ON, seed=5, **SIZE)
    plain, checkpointed = spy.results
    assert torch.allclose(plain.latent, checkpointed.latent, atol=1e-5)


def test_batches_on_forge_2_are_reproducible_per_seed(webui, forge2, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    webui.txt2img(ON, seed=10, batch_size=2, **SIZE)
    webui.txt2img(ON, seed=11, **SIZE)
    assert torch.equal(spy.results[1].latent, spy.results[2].latent)


def test_hires_pass_on_forge_2_is_left_alone(webui, forge2, monkeypatch, batches_run):
    """Forge 2's hires pass calls the hook twice: both return before the job runs a batch."""
    spy = OptimiseSpy(monkeypatch)
    processed = webui.txt2img(ON, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, **SIZE)
    assert batches_run == [False]
    assert len(spy.results) == 1
    assert processed.images[0].size == (192, 192)


def test_attention_patches_are_left_out_of_initnos_passes(webui, forge2, monkeypatch):
    """Replace patches would bypass the attention InitNO reads, q/k/v patches would turn self-attention
    into cross-attention there: both are left out; block patches (FreeU's kind) stay."""
    free_u = object()
    forge2.forge_objects.unet.model_options["transformer_options"] = {
        "patches": {"attn2_patch": [object()], "output_block_patch": [free_u]},
        "patches_replace": {"attn2": {("input", 1): object()}},
    }
    seen = []
    unet = _unet(forge2)
    handle = unet.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(kwargs["transformer_options"]),
        with_kwargs=True,
    )
    try:
        processed = webui.txt2img({**ON, "max_rounds": 1, "steps_per_round": 1, "fallback_steps": 0}, **SIZE)
    finally:
        handle.remove()
    assert infotext_params(processed)["InitNO"].startswith(("valid", "not valid"))
    initno_options = [options for options in seen if "cond_or_uncond" in options]  # sampling's lack it here
    assert len(initno_options) == 1 and len(seen) == 1 + 4  # one InitNO pass, four sampling steps
    for options in initno_options:
        assert options["patches"] == {"output_block_patch": [free_u]}
        assert "patches_replace" not in options
        assert options["cond_or_uncond"] == [0]
        assert options["sigmas"].item() == pytest.approx(14.6, abs=0.1)  # sigma_max of SD's schedule


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("flux", "is not an SD1, SD2 or SDXL UNet checkpoint"),
        ("inpainting", "inpainting models are not supported"),
        ("quantized", "quantized UNet weights (GGUF4bit) are not supported"),
        ("refiner", "SDXL refiner checkpoints are not supported"),
    ],
)
def test_what_forge_2_cannot_do_is_refused_with_a_message(webui, forge2, monkeypatch, fault, message):
    unet = _unet(forge2)
    if fault == "flux":
        monkeypatch.setattr(forge2, "is_sd1", False)
    elif fault == "inpainting":
        monkeypatch.setattr(forge2, "is_inpaint", True)
    elif fault == "quantized":

        class GGUF4bit(torch.nn.Parameter):
            pass

        module = unet.input_blocks[1][1].proj_in
        with torch.inference_mode():
            quantized = GGUF4bit(module.weight.detach().clone(), requires_grad=False)
        monkeypatch.setitem(module._parameters, "weight", quantized)
    elif fault == "refiner":  # backend/diffusion_engine/sdxl.py:157-201: the refiner has the G engine only
        monkeypatch.setattr(forge2, "is_sd1", False)
        monkeypatch.setattr(forge2, "is_sdxl", True, raising=False)
        engine = forge2.text_processing_engine
        monkeypatch.setattr(forge2, "text_processing_engine_g", engine, raising=False)
        monkeypatch.setattr(forge2, "text_processing_engine", None)
        monkeypatch.setattr(forge2, "get_learned_conditioning", engine)
    parameters = list(unet.parameters())
    processed = webui.txt2img(ON, **SIZE)
    assert len(processed.images) == 1
    status = infotext_params(processed)["InitNO"]
    assert status.startswith("skipped: ") and message in status, status
    assert [id(p) for p in unet.parameters()] == [id(p) for p in parameters]


def test_token_view_reads_forge_2s_text_engine(webui, forge2, monkeypatch):
    response = webui.client.post("/initno/v1/tokens", json={"prompt": "a cat and a dog", "subjects": "cat, dog"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(w["text"], w["positions"]) for w in body["words"] if w["text"] in ("cat", "dog")] == [
        ("cat", [2]),
        ("dog", [5]),
    ]
    assert body["unsupported"] is None
    # Forge 2 loads the checkpoint at the first generation; until then a placeholder without encoders.
    monkeypatch.setattr(shared, "sd_model", type("FakeInitialModel", (), {"cond_stage_model": None})())
    response = webui.client.post("/initno/v1/tokens", json={"prompt": "a cat and a dog"})
    assert response.status_code == 503
    assert json.loads(response.text)["detail"] == "no model is loaded yet"


def test_sdxl_on_forge_2_equals_sdxl_on_a1111(webui, monkeypatch):
    """Forge 2's two text engines give the token positions (CLIP-L's chunks) and the conditioning dict
    (`crossattn`, and `vector` as the UNet's `y`) that A1111's conditioner gives."""
    a1111_model = StandInSDXLModel()
    forge_model = StableDiffusionXL(a1111_model)
    spy = OptimiseSpy(monkeypatch)
    runs = []
    for model in (a1111_model, forge_model):
        monkeypatch.setattr(shared, "sd_model", model)
        runs.append(webui.txt2img({**ON, "max_rounds": 1}, seed=6, **SIZE))
    a1111, forge_run = runs
    assert infotext_params(forge_run)["InitNO tokens"] == infotext_params(a1111)["InitNO tokens"] == "cat 2; dog 5"
    assert infotext_params(forge_run)["InitNO scores"] == infotext_params(a1111)["InitNO scores"]
    assert torch.allclose(spy.results[0].latent, spy.results[1].latent, atol=1e-5)
    assert np.abs(pixels(forge_run)[0] - pixels(a1111)[0]).max() <= 1


def test_interrupt_on_forge_2_stops_within_one_step_and_restores_the_model(webui, forge2, monkeypatch):
    passes = interrupt_after(monkeypatch, 2)
    parameters = list(_unet(forge2).parameters())
    processed = webui.txt2img({**ON, "max_rounds": 5, "steps_per_round": 10}, **SIZE)
    assert len(passes) == 2
    assert infotext_params(processed)["InitNO"] == "interrupted after 2 steps"
    assert_model_as_loaded(forge2, parameters)


def test_each_guidance_pass_tells_the_patches_its_own_sigma(webui, forge2):
    seen = []
    unet = _unet(forge2)
    handle = unet.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(kwargs["transformer_options"]), with_kwargs=True
    )
    try:
        processed = webui.txt2img({**ON, "method": "ae", "max_refinement": 1}, steps=4, sampler_name="Euler", **SIZE)
    finally:
        handle.remove()
    assert infotext_params(processed)["InitNO guidance"].startswith("Attend-and-Excite, 2 steps")
    sigmas = sorted({round(o["sigmas"].item(), 3) for o in seen if "cond_or_uncond" in o}, reverse=True)
    assert len(sigmas) == 2 and sigmas[0] == pytest.approx(14.6, abs=0.1)  # the two guided steps' sigmas
