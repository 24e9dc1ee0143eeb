"""Lookahead selection ("Fast", the default method) through the stand-ins: its DDIM against the host's own
DDIM sampler (SD1 eps, SD2 v, SDXL), the chosen candidate as the sampler's noise, the infotext and its
paste, the API, X/Y/Z, batches, Interrupt, faults, memory, and A1111 = Forge 2."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from backend.diffusion_engine.sd15 import StableDiffusion
from conftest import SIZE, assert_no_hooks_left, infotext_params, interrupt_on_call
from modules import devices, infotext_utils, processing, rng, sd_samplers, shared
from modules.sd_models import StandInSD1Model
from modules.sd_models_xl import StandInSDXLModel

from initno import ddim
from initno.optimize import batch_conds
from initno.selection import LookaheadParams, candidate_noises
from initno.webui import lookahead
from initno.webui.hosts import host_of
from initno.webui.hosts.reforge import ReForge

ON = {"enabled": True, "subjects": "cat, dog"}  # the default method: lookahead
DEFAULTS = LookaheadParams()  # 4 noises, 2 steps ahead
AHEAD = {**ON, "lookahead_candidates": 4, "lookahead_steps": 2}  # the default, explicit where steps ahead are tested


class Spy:
    """Every image's lookahead (request, result), and the noise each sampling started from."""

    def __init__(self, monkeypatch):
        self.selections = []
        self.sampler_noise = []
        real_select = lookahead.select

        def select(p, host, denoiser, request, uncond, params, shown):
            result = real_select(p, host, denoiser, request, uncond, params, shown)
            self.selections.append((request, result, params, uncond))
            return result

        monkeypatch.setattr(lookahead, "select", select)
        for sampler in (sd_samplers.KDiffusionSampler, sd_samplers.CompVisSampler):
            real_sample = sampler.sample

            def sample(self_, p, x, *args, real_sample=real_sample, **kwargs):
                self.sampler_noise.append(x.clone())
                return real_sample(self_, p, x, *args, **kwargs)

            monkeypatch.setattr(sampler, "sample", sample)


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


@pytest.fixture(params=["sd1", "sd2-v", "sdxl"])
def family(request, webui, monkeypatch):
    model = {
        "sd1": lambda: webui.model,
        "sd2-v": lambda: StandInSD1Model.sd2("v"),
        "sdxl": StandInSDXLModel,
    }[request.param]()
    monkeypatch.setattr(shared, "sd_model", model)
    return model


def test_the_glues_ddim_follows_the_hosts_ddim_sampler(webui, family, spy, monkeypatch):
    """The candidates' steps ahead are the host's own DDIM steps (eps, v and SDXL's dict conditioning): the
    seed's candidate two steps ahead is the host's DDIM latent after two steps, up to rounding (the host
    runs cond and uncond in one call, in float32 with float64 scalars). And the glue's advance is exactly
    the core DDIM over the model's own schedule with the host's model call."""
    states = []
    real_callback = sd_samplers.Sampler.callback_state
    monkeypatch.setattr(
        sd_samplers.Sampler, "callback_state", lambda self, d: (states.append(d["x"].clone()), real_callback(self, d))
    )
    advanced = []
    real_advance = lookahead.HostAdvance.__call__

    def advance(self, latents, conds, steps):
        ahead, t = real_advance(self, latents, conds, steps)
        advanced.append((self, latents, conds, steps, ahead, t))
        return ahead, t

    monkeypatch.setattr(lookahead.HostAdvance, "__call__", advance)
    settings = {"sampler_name": "DDIM", "steps": 4, "seed": 2, "negative_prompt": "blurry", **SIZE}
    webui.txt2img(**settings)  # InitNO off: the host's DDIM from the seed's noise
    host_states = list(states)
    processed = webui.txt2img(AHEAD, **settings)
    assert infotext_params(processed)["InitNO"].startswith("chose noise ")
    ((host_advance, latents, conds, steps, ahead, t),) = advanced
    assert steps == 2 and t == 251  # DDIM at 4 steps: 751, 501, 251, 1
    assert host_advance.prediction == ("v" if family.parameterization == "v" else "eps")
    torch.testing.assert_close(ahead[0], host_states[steps - 1][0], rtol=1e-4, atol=1e-4)
    # exactly the core's loop, with the host's model call for uncond and cond
    ((_request, _result, _params_used, uncond),) = spy.selections
    cond = batch_conds(conds)
    unconds = batch_conds([uncond] * len(latents))

    def model(x, timestep):
        timesteps = torch.full((len(x),), float(timestep))
        return family.apply_model(x, timesteps, unconds), family.apply_model(x, timesteps, cond)

    with torch.no_grad():
        expected = ddim.sample(
            model,
            latents,
            family.alphas_cumprod,
            ddim.timesteps(4),
            guidance=7.0,
            prediction=host_advance.prediction,
            until=steps,
            dtype=torch.float32,
        )
    assert torch.equal(ahead, expected)
    assert_no_hooks_left(family)


def test_the_chosen_candidate_is_the_samplers_noise_and_the_infotext_says_so(webui, spy):
    processed = webui.txt2img(ON, seed=3, **SIZE)
    ((request, result, params, _uncond),) = spy.selections
    assert params == DEFAULTS
    candidates = candidate_noises(request.noise, 3, DEFAULTS.candidates)
    assert torch.equal(request.noise, rng.ImageRNG((4, 16, 16), [3]).next()[0])  # the seed's own noise
    assert torch.equal(result.latent, candidates[result.chosen])
    assert torch.equal(spy.sampler_noise[0][0], candidates[result.chosen])  # the sampler starts from it
    assert result.passes == DEFAULTS.passes == 20
    info = infotext_params(processed)
    own = " (the seed's own)" if result.chosen == 0 else ""
    assert info["InitNO"] == f"chose noise {result.chosen + 1} of 4{own}, 20 passes"
    assert (info["InitNO method"], info["InitNO candidates"], info["InitNO lookahead steps"]) == ("lookahead", "4", "2")
    seed_scores, chosen = result.candidates[0], result.final
    assert info["InitNO scores"] == (
        f"cross {seed_scores.cross:.3f} -> {chosen.cross:.3f}, self {seed_scores.conflict:.3f} -> {chosen.conflict:.3f}"
    )
    assert info["InitNO tokens"] == "cat 2; dog 5"
    assert "InitNO max rounds" not in info and "InitNO guidance" not in info
    # pasting restores the method and its settings; an infotext from before lookahead restores InitNO
    fields = webui.runner.infotext_fields
    by_name = dict(zip([arg.name for arg in _args()], webui.always_on.controls))
    changed = processed.infotexts[0].replace("InitNO candidates: 4", "InitNO candidates: 6")
    pasted = dict(zip([id(c) for c, _ in fields], infotext_utils.paste(changed, fields)))
    assert pasted[id(by_name["method"])] == "lookahead" and pasted[id(by_name["lookahead_candidates"])] == 6
    assert pasted[id(by_name["lookahead_steps"])] == 2
    older = "a cat and a dog\nSteps: 4, Seed: 1, InitNO: valid, 1 round, 1 step, InitNO max rounds: 5"
    pasted = dict(zip([id(c) for c, _ in fields], infotext_utils.paste(older, fields)))
    assert pasted[id(by_name["method"])] == "initno"
    assert_no_hooks_left(webui.model)


def _args():
    from initno.webui.args import ARGS

    return ARGS


def test_forward_passes_only_and_memory_freed_before_sampling(webui, spy, monkeypatch):
    events, grad_modes = [], []
    real_gc = devices.torch_gc
    monkeypatch.setattr(devices, "torch_gc", lambda: (events.append("freed"), real_gc()))
    real_apply = webui.model.apply_model

    def apply(x, t, c):
        if "sampling" not in events:
            if len(spy.selections) == 1:  # the lookahead is done: these are the sampler's calls
                events.append("sampling")
            else:
                grad_modes.append(torch.is_grad_enabled())
        return real_apply(x, t, c)

    monkeypatch.setattr(webui.model, "apply_model", apply)
    webui.txt2img(ON, **SIZE)
    assert events[:2] == ["freed", "sampling"]
    assert len(grad_modes) == 2 * DEFAULTS.steps + 1 and not any(grad_modes)  # a call per row kind and step
    ((request, result, _params_used, _uncond),) = spy.selections
    assert all(not t.requires_grad and t.grad_fn is None for t in (result.latent, request.noise))
    assert_no_hooks_left(webui.model)


def test_batches_choose_as_single_runs(webui, spy):
    webui.txt2img(ON, seed=10, batch_size=2, **SIZE)
    for seed in (10, 11):
        webui.txt2img(ON, seed=seed, **SIZE)
    (batch_a, batch_b, single_a, single_b) = [result for _request, result, *_ in spy.selections]
    for batch, single in ((batch_a, single_a), (batch_b, single_b)):
        assert batch.chosen == single.chosen and torch.equal(batch.latent, single.latent)
        assert [s.cross for s in batch.candidates] == [s.cross for s in single.candidates]


def test_api_arguments_and_their_checks(webui):
    body = {"prompt": "a cat and a dog", "seed": 4, **SIZE}
    named = {"subjects": "cat, dog", "lookahead_candidates": 3, "lookahead_steps": 1}
    response = webui.client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"initno": {"args": [named]}}})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    text = info["infotexts"][0]
    assert "InitNO method: lookahead" in text and "InitNO candidates: 3" in text and "InitNO lookahead steps: 1" in text
    # 9 passes = 3 × (1 step × 2 passes + 1)
    assert re.search(r'InitNO: "chose noise [1-3] of 3( \(the seed\'s own\))?, 9 passes"', text)
    assert info["extra_generation_params"]["InitNO scores"][0].startswith("cross ")
    for bad, message in (
        ({"lookahead_candidates": 40}, "'lookahead_candidates' must be between 2 and 16, got 40"),
        ({"lookahead_steps": "two"}, "'lookahead_steps' must be int, got 'two'"),
        ({"method": "fast"}, "'method' must be one of 'lookahead', 'initno', 'initno+', 'ae'"),
    ):
        response = webui.client.post("/sdapi/v1/txt2img", json={**body, "script_name": "initno", "script_args": [bad]})
        assert response.status_code == 422 and message in response.text


def test_xyz_axes_for_the_method_and_its_settings(webui, spy):
    from modules import scripts

    xyz = next(d.module for d in scripts.scripts_data if d.module.__name__ == "xyz_grid.py")
    options = {o.label: o for o in xyz.axis_options if o.label.startswith("[InitNO]")}
    assert options["[InitNO] Method"].choices() == ["lookahead", "initno", "initno+", "ae"]
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat and a dog", seed=1, **SIZE)
    p.scripts = webui.runner
    p.script_args = tuple(webui.ui_args({"subjects": "cat, dog", "method": "initno"}))  # accordion off
    cell = xyz.make_cell(
        p,
        [
            (options["[InitNO] Enable InitNO"], "True", ["True"]),
            (options["[InitNO] Method"], "lookahead", ["initno", "lookahead"]),
            (options["[InitNO] Noises to choose from"], "3", ["3", "5"]),
            (options["[InitNO] Steps ahead"], "1", ["1"]),
        ],
    )
    ((_request, result, params, _uncond),) = spy.selections
    assert params == LookaheadParams(candidates=3, steps=1) and len(result.candidates) == 3
    assert infotext_params(cell)["InitNO candidates"] == "3"
    with pytest.raises(ValueError, match="'lookahead_candidates' must be between 2 and 16"):
        options["[InitNO] Noises to choose from"].confirm(p, [3, 17])


def test_interrupt_stops_within_one_unet_call(webui, monkeypatch):
    calls = interrupt_on_call(monkeypatch, lookahead, 3)
    processed = webui.txt2img(AHEAD, batch_size=2, **SIZE)
    assert calls == [4, 4, 4]  # the third call found Interrupt pressed and ran no pass
    statuses = [infotext_params(processed, i)["InitNO"] for i in range(2)]
    assert statuses == ["interrupted after 8 passes", "interrupted after 0 passes"]
    assert_no_hooks_left(webui.model)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("one_step", "Fast (lookahead) needs at least 2 sampling steps (it looks ahead of the first), got 1"),
        ("out_of_memory", "out of memory"),
        ("x0_model", "Fast (lookahead) needs an eps- or v-prediction model; this one predicts 'x0'"),
    ],
)
def test_faults_skip_with_a_message_and_the_image_is_made(webui, monkeypatch, fault, message):
    settings = {"steps": 4}
    if fault == "one_step":
        settings["steps"] = 1
    elif fault == "out_of_memory":

        def oom(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        monkeypatch.setattr(lookahead, "select_by_lookahead", oom)
    elif fault == "x0_model":
        monkeypatch.setattr(webui.model, "parameterization", "x0", raising=False)
    processed = webui.txt2img(AHEAD, **settings, **SIZE)
    assert len(processed.images) == 1
    assert infotext_params(processed)["InitNO"].startswith(f"skipped: {message}")
    assert_no_hooks_left(webui.model)


def test_a_step_count_below_the_steps_ahead_looks_ahead_of_all_but_the_last(webui, spy):
    webui.txt2img(AHEAD, steps=2, **SIZE)
    ((_request, result, params, _uncond),) = spy.selections
    assert params.steps == 1 and result.passes == 4 * 3


def test_zero_steps_ahead_costs_a_pass_a_noise_and_serves_a_one_step_generation(webui, spy, monkeypatch):
    def no_ddim(*args):
        raise AssertionError("nothing is sampled ahead")

    monkeypatch.setattr(lookahead, "HostAdvance", no_ddim)
    monkeypatch.setattr(webui.model, "parameterization", "x0", raising=False)  # no schedule is needed either
    processed = webui.txt2img({**ON, "lookahead_steps": 0}, steps=1, **SIZE)
    ((_request, result, params, _uncond),) = spy.selections
    assert params.steps == 0 and result.passes == 4
    assert re.fullmatch(r"chose noise [1-4] of 4( \(the seed's own\))?, 4 passes", infotext_params(processed)["InitNO"])
    assert torch.equal(spy.sampler_noise[0][0], candidate_noises(_request.noise, _request.seed, 4)[result.chosen])


def test_lookahead_on_forge_2_equals_a1111(webui, spy, monkeypatch):
    forge_model = StableDiffusion(webui.model)
    parameters = list(forge_model.forge_objects.unet.model.diffusion_model.parameters())
    a1111 = webui.txt2img(ON, seed=5, **SIZE)
    monkeypatch.setattr(shared, "sd_model", forge_model)
    forge_run = webui.txt2img(ON, seed=5, **SIZE)
    (_, a1111_result, *_), (_, forge_result, *_) = spy.selections
    assert forge_result.chosen == a1111_result.chosen
    assert [s.cross for s in forge_result.candidates] == pytest.approx(
        [s.cross for s in a1111_result.candidates], abs=1e-5
    )
    assert torch.equal(spy.sampler_noise[1], forge_result.latent[None])  # via p.modified_noise
    assert infotext_params(forge_run)["InitNO"] == infotext_params(a1111)["InitNO"]
    pixels = [np.asarray(run.images[0]).astype(int) for run in (a1111, forge_run)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1
    events = [e[0] for e in forge_model.forge_objects.unet.events]
    assert events[:3] == ["prepare", "cleanup", "prepare"]  # lookahead's passes ran on a prepared model
    unet = forge_model.forge_objects.unet.model.diffusion_model
    assert [id(p) for p in unet.parameters()] == [id(p) for p in parameters]
    assert all(p.is_inference() and p.requires_grad and p.grad is None for p in unet.parameters())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in unet.modules())


def test_each_host_gives_its_schedule_and_prediction(webui):
    forge_model = StableDiffusion(webui.model)
    alphas, prediction = host_of(forge_model).schedule()
    assert prediction == "eps" and torch.allclose(alphas, webui.model.alphas_cumprod)
    forge_model.forge_objects.unet.model.predictor.prediction_type = "v_prediction"
    assert host_of(forge_model).schedule()[1] == "v"
    forge_model.forge_objects.unet.model.predictor.prediction_type = "edm"
    with pytest.raises(Exception, match="predicts 'edm'"):
        host_of(forge_model).schedule()
    # reForge keeps A1111's model object, and its flags
    reforge_model = StandInSD1Model.sd2("v")
    reforge_model.forge_objects = SimpleNamespace(unet=None)
    host = host_of(reforge_model)
    alphas, prediction = host.schedule()
    assert isinstance(host, ReForge) and alphas is reforge_model.alphas_cumprod and prediction == "v"
