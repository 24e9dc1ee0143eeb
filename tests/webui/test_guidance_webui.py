"""Sampling guidance (InitNO+, Attend-and-Excite) end to end through the A1111 stand-in: each method with a
k-diffusion (Euler, Heun, Euler a) and a timestep (DDIM) sampler, the move of the sampler's own latent
against the reference update, the guided fraction, refinement bounds, interrupt and skip, faults, hooks
removed, ancestral noise, batches, hires, the API, infotext, paste, X/Y/Z and diagnostics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SIZE, assert_no_hooks_left, infotext_params, pixels
from modules import infotext_utils, sd_samplers, shared

from initno.guidance import GuidanceSettings, ImageGuidance
from initno.methods import method_of
from initno.webui import job as job_module
from initno.webui import progress as progress_module
from initno.webui import sampler_hook

QUICK_NOISE = {"method": "initno", "max_rounds": 1, "steps_per_round": 2, "fallback_steps": 0, "thresholds": "official"}
AE = {"enabled": True, "subjects": "cat, dog", "method": "ae", "max_refinement": 2}
PLUS = {**AE, **QUICK_NOISE, "method": "initno+"}
STEPS = 4  # guided: steps 0 and 1 (half of 4); refinement at round(10·4/50) = 1 (and 0 for Attend-and-Excite)


class Samplers:
    """Every sampler the host creates, and for each its model calls (the x object and a copy, the sigma or
    timestep) and callbacks (the x object), recorded below the guidance's overrides."""

    def __init__(self, monkeypatch):
        self.created = []
        real_create = sd_samplers.create_sampler

        def create(name, model):
            sampler = real_create(name, model)
            self.created.append(sampler)
            sampler.calls, sampler.callbacks = [], []
            return sampler

        monkeypatch.setattr(sd_samplers, "create_sampler", create)
        real_forward = sd_samplers.CFGDenoiser.forward

        def forward(denoiser, x, sigma, *args, **kwargs):
            denoiser.sampler.calls.append((x, x.clone(), sigma.clone()))
            return real_forward(denoiser, x, sigma, *args, **kwargs)

        monkeypatch.setattr(sd_samplers.CFGDenoiser, "forward", forward)
        real_callback = sd_samplers.Sampler.callback_state

        def callback_state(sampler, d):
            sampler.callbacks.append(d["x"])
            return real_callback(sampler, d)

        monkeypatch.setattr(sd_samplers.Sampler, "callback_state", callback_state)

    def assert_overrides_removed(self):
        for sampler in self.created:
            assert "forward" not in sampler.model_wrap_cfg.__dict__, "the denoiser's forward override was left"
            assert "callback_state" not in sampler.__dict__, "the callback override was left"


class GuidedSteps:
    """Records each step the hook guides: the step, the batch's state before and after the move, sigma."""

    def __init__(self, monkeypatch):
        self.records = []
        real = sampler_hook.SamplerGuidance._guide

        def recording(hook, x, sigma):
            before = x.clone()
            real(hook, x, sigma)
            self.records.append((hook.callbacks, x, before, x.clone(), sigma.clone(), hook))

        monkeypatch.setattr(sampler_hook.SamplerGuidance, "_guide", recording)

    @property
    def steps(self):
        return [record[0] for record in self.records]


@pytest.fixture
def samplers(monkeypatch):
    return Samplers(monkeypatch)


@pytest.fixture
def guided(monkeypatch):
    return GuidedSteps(monkeypatch)


# -- each method, each kind of sampler ------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
@pytest.mark.parametrize("method", ["ae", "initno+"])
def test_each_method_guides_the_sampler_and_leaves_nothing_behind(webui, samplers, guided, method, sampler):
    settings = AE if method == "ae" else PLUS
    unguided = webui.txt2img(
        {**settings, "method": "initno"} if method == "initno+" else {}, sampler_name=sampler, steps=STEPS, **SIZE
    )
    processed = webui.txt2img(settings, sampler_name=sampler, steps=STEPS, **SIZE)
    info = infotext_params(processed)
    name = method_of(method).name
    assert info["InitNO method"] == method
    assert info["InitNO guidance"].startswith(f"{name}, 2 steps, ")
    assert info["InitNO guided fraction"] == "0.5" and info["InitNO max refinement"] == "2"
    if method == "ae":
        assert info["InitNO"] == "sampling guidance only"  # the noise is left as it is
        assert "InitNO max rounds" not in info and "InitNO scores" not in info
    else:
        assert info["InitNO"].startswith(("valid", "not valid")) and info["InitNO scores"].startswith("cross ")
    assert guided.steps == [0, 1]
    for _step, _x, before, after, *_ in guided.records:
        assert not torch.equal(before, after)  # the latent moved
    assert not np.array_equal(pixels(unguided)[0], pixels(processed)[0])
    samplers.assert_overrides_removed()
    assert_no_hooks_left(webui.model)
    assert shared.state.textinfo is None


def test_attend_and_excite_runs_no_noise_optimisation(webui, monkeypatch):
    monkeypatch.setattr(job_module, "optimize_noise", lambda *a, **k: pytest.fail("no noise optimisation"))
    processed = webui.txt2img(AE, steps=STEPS, **SIZE)
    assert infotext_params(processed)["InitNO guidance"].startswith("Attend-and-Excite, 2 steps")


# -- the update on a recorded state ---------------------------------------------------------------------------


def _reference_guide(webui, plan, cond, subjects, softmax=None):
    from initno.optimize import Denoiser

    denoiser = Denoiser(unet=webui.model.model.diffusion_model, apply=webui.model.apply_model, timestep=0)
    return ImageGuidance(denoiser, cond, subjects, plan, softmax_positions=softmax)


def test_euler_moves_its_state_as_the_reference_moves_the_unit_variance_latent(webui, samplers, guided):
    """Euler holds x = z·sqrt(1 + σ²); at each guided step the host's state moves by sqrt(1 + σ²) times the
    reference's move of z = x / sqrt(1 + σ²), at the UNet timestep of that σ (999, 666 for 4 steps)."""
    webui.txt2img({**AE, "refinement_schedule": "none"}, sampler_name="Euler", steps=STEPS, **SIZE)
    (sampler,) = samplers.created
    plan = GuidanceSettings("ae", max_refinement=2, refinements=()).plan(STEPS)
    for (step, x, before, after, sigma, hook), timestep in zip(guided.records, (999.0, 666.0)):
        (guide,) = hook.guides
        reference = _reference_guide(webui, plan, guide.cond, guide.subjects)
        scale = math.sqrt(1 + float(sigma[0]) ** 2)
        z = before / scale
        expected = reference.guide(step, z, timestep) * scale
        assert torch.allclose(after, expected, atol=1e-5, rtol=1e-5)
        assert float(sampler.model_wrap.sigma_to_t(sigma[0])) == pytest.approx(timestep, abs=1e-3)
        # the moved tensor is the sampler's own state: the model call of that step and its callback get it
        assert any(call[0] is x and torch.equal(call[1], after) for call in sampler.calls)
        assert sampler.callbacks[step] is x


def test_ddim_moves_its_state_as_the_reference_moves_z(webui, samplers, guided):
    """DDIM holds z_t itself and calls the model with the timestep (A1111: 751, then 501 at 4 steps)."""
    webui.txt2img({**AE, "refinement_schedule": "none"}, sampler_name="DDIM", steps=STEPS, **SIZE)
    (sampler,) = samplers.created
    assert len(sampler.calls) == STEPS - 1  # A1111's DDIM never evaluates its last timestep (1)
    plan = GuidanceSettings("ae", max_refinement=2, refinements=()).plan(STEPS)
    for (step, x, before, after, timestep, hook), expected_t in zip(guided.records, (751.0, 501.0)):
        assert float(timestep[0]) == expected_t
        (guide,) = hook.guides
        expected = _reference_guide(webui, plan, guide.cond, guide.subjects).guide(step, before, expected_t)
        assert torch.allclose(after, expected, atol=1e-5, rtol=1e-5)
        assert sampler.calls[step][0] is x and torch.equal(sampler.calls[step][1], after)
        if step > 0:  # DDIM calls back after its update: the callback's x is the next step's state
            assert sampler.callbacks[step - 1] is x


def test_heun_is_guided_at_its_state_calls_not_at_its_second_order_calls(webui, samplers, guided):
    webui.txt2img({**AE, "refinement_schedule": "none"}, sampler_name="Heun", steps=STEPS, **SIZE)
    (sampler,) = samplers.created
    assert len(sampler.calls) == 2 * STEPS - 1  # a second call per step but the last
    assert guided.steps == [0, 1]
    guided_x = [record[1] for record in guided.records]
    assert guided_x[0] is sampler.calls[0][0] and guided_x[1] is sampler.calls[2][0]  # calls 1, 3: x_2
    assert guided_x[0] is sampler.callbacks[0] and guided_x[1] is sampler.callbacks[1]


# -- schedule, refinement, bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "steps"), [(0.5, [0, 1]), (0.25, [0]), (1.0, [0, 1, 2, 3])])
def test_guidance_stops_after_the_guided_fraction(webui, guided, fraction, steps):
    processed = webui.txt2img(
        {**AE, "refinement_schedule": "none", "guided_fraction": fraction}, sampler_name="Euler", steps=STEPS, **SIZE
    )
    assert guided.steps == steps
    assert infotext_params(processed)["InitNO guidance"].startswith(f"Attend-and-Excite, {len(steps)} step")


def test_no_guided_step_at_all(webui, guided):
    processed = webui.txt2img({**AE, "guided_fraction": 0.0}, steps=STEPS, **SIZE)
    assert guided.steps == []
    assert infotext_params(processed)["InitNO guidance"] == "Attend-and-Excite, no step guided"


def test_refinement_through_the_api_stops_at_its_threshold_or_its_bound(webui):
    """The new settings as named API arguments; refinement at step 0 of 4 ('0:…' of 50)."""

    def trace(schedule, max_refinement):
        args = {**AE, "refinement_schedule": schedule, "max_refinement": max_refinement}
        del args["enabled"]
        body = {"prompt": "a cat and a dog", "seed": 3, "steps": STEPS, **SIZE}
        response = webui.client.post(
            "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"initno": {"args": [args]}}}
        )
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["extra_generation_params"]["InitNO refinement schedule"] == schedule
        assert info["extra_generation_params"]["InitNO max refinement"] == max_refinement
        return info["extra_generation_params"]["InitNO guidance"][0]

    # never reached (cross ≤ 0 and self ≤ 0): the bound, 3 updates (the first from the step's own pass, two
    # more passes), then one more pass to score the result; step 1: its one pass
    assert "refined 1× (3 updates), 5 passes" in trace("0:0:0", 3)
    # reached at once (cross ≤ 1): no update, one pass per step
    reached = trace("0:1", 3)
    assert "refined" not in reached and ", 2 passes," in reached


def test_refinement_iterations_are_bounded_by_the_plan(webui, guided):
    processed = webui.txt2img(
        {**PLUS, "refinement_schedule": "0:0:0, 10:0:0", "max_refinement": 2}, steps=STEPS, **SIZE
    )
    (hook,) = {record[5] for record in guided.records}
    (guide,) = hook.guides
    assert guide.trace.passes == guide.plan.max_passes == 2 + 2 * 2  # 2 steps + 2 refinements of 2
    assert "refined 2× (4 updates), 6 passes" in infotext_params(processed)["InitNO guidance"]


# -- interrupt, skip, faults --------------------------------------------------------------------------------------


def _stop_after(monkeypatch, passes: int, stop):
    seen = []
    real = progress_module.GuidanceProgress.__call__

    def progress(self, image, step, losses):
        real(self, image, step, losses)
        seen.append((image, step))
        if len(seen) == passes:
            stop()

    monkeypatch.setattr(progress_module.GuidanceProgress, "__call__", progress)
    return seen


def test_interrupt_during_guidance_stops_within_one_pass(webui, monkeypatch, samplers):
    seen = _stop_after(monkeypatch, 2, shared.state.interrupt)
    processed = webui.txt2img({**AE, "refinement_schedule": "0:0:0", "max_refinement": 5}, steps=STEPS, **SIZE)
    assert len(seen) == 2  # the refinement's next pass never ran
    assert len(processed.images) == 1  # as the host does: the interrupted sampler returns its last latent
    (sampler,) = samplers.created
    assert len(sampler.calls) == 1  # the first model call raised InterruptedException after the guidance
    assert infotext_params(processed)["InitNO guidance"] == "Attend-and-Excite, no step guided (interrupted)"
    samplers.assert_overrides_removed()
    assert_no_hooks_left(webui.model)
    assert shared.state.textinfo is None


def test_skip_during_guidance_skips_that_batch_only(webui, monkeypatch, samplers):
    _stop_after(monkeypatch, 1, shared.state.skip)
    processed = webui.txt2img({**AE, "refinement_schedule": "none"}, n_iter=2, steps=STEPS, **SIZE)
    assert len(processed.images) == 2
    # step 0 was guided, then the host stopped the batch at its first model call
    first = infotext_params(processed, 0)["InitNO guidance"]
    assert first.startswith("Attend-and-Excite, 1 step, 1 pass, ") and first.endswith(" (interrupted)")
    assert infotext_params(processed, 1)["InitNO guidance"].startswith("Attend-and-Excite, 2 steps")
    samplers.assert_overrides_removed()
    assert_no_hooks_left(webui.model)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "out of memory; try a smaller image"),
        (FloatingPointError("the cross-attention maps contain NaN or inf"), "NaN or inf; try --no-half"),
        (RuntimeError("boom"), "internal error: RuntimeError: boom"),
    ],
)
def test_a_fault_during_guidance_leaves_the_image_generated_and_says_why(webui, monkeypatch, samplers, error, message):
    real = ImageGuidance._guide

    def failing(self, step, z, timestep):
        if step == 1:
            raise error
        return real(self, step, z, timestep)

    monkeypatch.setattr(ImageGuidance, "_guide", failing)
    processed = webui.txt2img({**PLUS, "refinement_schedule": "none"}, steps=STEPS, **SIZE)
    assert len(processed.images) == 1
    info = infotext_params(processed)
    assert info["InitNO"].startswith(("valid", "not valid"))  # the noise step is unaffected
    assert info["InitNO guidance"].startswith("InitNO+, 1 step, 1 pass, cross ")
    assert "; then stopped: " in info["InitNO guidance"] and message in info["InitNO guidance"]
    assert "InitNO guidance stopped: " in processed.comments and message in processed.comments
    samplers.assert_overrides_removed()
    assert_no_hooks_left(webui.model)


def test_a_refused_sampler_generates_unguided_and_says_why(webui, monkeypatch, guided):
    # A sampler under UniPC's name (the refusal goes by the name; the stand-in has no UniPC of its own)
    unipc = sd_samplers.SamplerData("UniPC", lambda model: sd_samplers.CompVisSampler("DDIM", model), [], {})
    monkeypatch.setitem(sd_samplers.all_samplers_map, "UniPC", unipc)
    processed = webui.txt2img(PLUS, sampler_name="UniPC", steps=STEPS, **SIZE)
    assert guided.steps == []
    info = infotext_params(processed)
    assert info["InitNO"].startswith(("valid", "not valid"))  # InitNO+'s noise step still ran
    assert info["InitNO guidance"] == (
        "skipped: sampling guidance does not support the UniPC sampler: its model calls after the first see "
        "the predictor's temporary latent, never the sampler's own"
    )
    assert "InitNO guidance skipped: sampling guidance does not support the UniPC sampler" in processed.comments


def test_an_unsupported_model_skips_noise_and_guidance(webui, monkeypatch, samplers):
    monkeypatch.setattr(type(webui.model), "is_sd3", True)
    processed = webui.txt2img(PLUS, steps=STEPS, **SIZE)
    info = infotext_params(processed)
    assert info["InitNO"].startswith("skipped: SD3 models have no UNet")
    assert info["InitNO guidance"].startswith("skipped: SD3 models have no UNet")
    samplers.assert_overrides_removed()


def test_a_checkpoint_switch_during_the_guided_steps_stops_the_guidance(webui, monkeypatch):
    """A1111's Refiner option loads another checkpoint mid-sampling: the guidance stops rather than run the
    passes on a model that is no longer the one sampling."""
    from modules.sd_models import StandInSD1Model

    from initno.tiny import build_unet

    other = StandInSD1Model(build_unet(seed=1))
    real = sd_samplers.Sampler.callback_state

    def switching(sampler, d):
        real(sampler, d)
        if d["i"] == 0:
            shared.sd_model = other

    monkeypatch.setattr(sd_samplers.Sampler, "callback_state", switching)
    try:
        processed = webui.txt2img({**AE, "refinement_schedule": "none"}, steps=STEPS, **SIZE)
    finally:
        shared.sd_model = webui.model
    guidance = infotext_params(processed)["InitNO guidance"]
    assert guidance.startswith("Attend-and-Excite, 1 step, 1 pass, ")
    assert guidance.endswith("; then stopped: the Refiner switched to another checkpoint during the guided steps")


# -- the host around it -----------------------------------------------------------------------------------------


def test_ancestral_noise_is_unchanged_only_the_state_moves(webui, noise_draws, guided):
    plain = webui.txt2img(sampler_name="Euler a", seed=5, steps=STEPS, **SIZE)
    plain_draws = list(noise_draws)
    noise_draws.clear()
    steered = webui.txt2img({**AE, "refinement_schedule": "none"}, sampler_name="Euler a", seed=5, steps=STEPS, **SIZE)
    assert len(noise_draws) == len(plain_draws) == STEPS  # the initial noise, then one draw per step but the last
    for a, b in zip(plain_draws, noise_draws):
        assert torch.equal(a, b)
    assert guided.steps == [0, 1]
    assert not np.array_equal(pixels(plain)[0], pixels(steered)[0])


def test_batches_guide_each_image_as_its_seed_alone(webui, guided):
    settings = {**AE, "refinement_schedule": "none"}
    batch = webui.txt2img(settings, seed=10, batch_size=2, steps=STEPS, **SIZE)
    batch_records = list(guided.records)
    guided.records.clear()
    singles = [webui.txt2img(settings, seed=10 + i, steps=STEPS, **SIZE) for i in range(2)]
    single_records = list(guided.records)
    # step 0 starts from each seed's own noise: the batch's move of image i is bit-identical to its single run's
    batch_step0 = batch_records[0][3]
    for i in range(2):
        assert torch.equal(batch_step0[i : i + 1], single_records[2 * i][3])
    (batch_hook,) = {record[5] for record in batch_records}
    single_hooks = [single_records[2 * i][5] for i in range(2)]
    for i in range(2):
        assert batch_hook.guides[i].trace.steps[0].before == single_hooks[i].guides[0].trace.steps[0].before
    # later the host samples the batch in one UNet call, which rounds differently from single calls
    for i, single in enumerate(singles):
        assert infotext_params(batch, i)["Seed"] == str(10 + i)
        assert np.abs(pixels(batch)[i].astype(int) - pixels(single)[0].astype(int)).max() <= 2
    again = webui.txt2img(settings, seed=10, batch_size=2, steps=STEPS, **SIZE)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(batch), pixels(again)))


def test_hires_second_pass_is_not_guided(webui, samplers, guided):
    processed = webui.txt2img(
        {**AE, "refinement_schedule": "none"}, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, steps=STEPS, **SIZE
    )
    first, hires = samplers.created
    assert hires is not first and hires.calls  # the host's new sampler for the second pass ran
    assert {record[5].sampler for record in guided.records} == {first}
    assert guided.steps == [0, 1]
    assert processed.images[0].size == (192, 192)
    samplers.assert_overrides_removed()


def test_progress_text_while_guiding(webui, monkeypatch):
    texts = []
    real = progress_module.GuidanceProgress.__call__

    def watching(self, image, step, losses):
        real(self, image, step, losses)
        texts.append(shared.state.textinfo)

    monkeypatch.setattr(progress_module.GuidanceProgress, "__call__", watching)
    webui.txt2img({**PLUS, "refinement_schedule": "0:0:0", "max_refinement": 1}, batch_size=2, steps=STEPS, **SIZE)
    assert texts[0].startswith("InitNO+ guidance · image 1/2 · step 1/2 · loss ")
    assert "(self " in texts[0]
    assert texts[1].startswith("InitNO+ guidance · image 1/2 · step 1/2 · refinement 1 · loss ")
    assert texts[-1].startswith("InitNO+ guidance · image 2/2 · step 2/2 · loss ")
    assert shared.state.textinfo is None


def test_infotext_round_trip_restores_the_method_and_its_settings(webui):
    settings = {**AE, "guided_fraction": 0.25, "step_scale": 15.0, "refinement_schedule": "0:0.9"}
    processed = webui.txt2img(settings, steps=STEPS, **SIZE)
    fields = webui.runner.infotext_fields
    pasted = dict(zip([id(c) for c, _ in fields], infotext_utils.paste(processed.infotexts[0], fields)))
    from initno.webui.args import ARGS

    for arg, control in zip(ARGS, webui.always_on.controls):
        if arg.name in settings:
            assert arg.convert(pasted[id(control)]) == settings[arg.name], arg.name
    # an infotext of InitNO alone brings the method back to it, and the guidance settings to their defaults
    alone = webui.txt2img({"enabled": True, "subjects": "cat, dog", **QUICK_NOISE}, steps=STEPS, **SIZE)
    pasted = dict(zip([id(c) for c, _ in fields], infotext_utils.paste(alone.infotexts[0], fields)))
    by_name = dict(zip([arg.name for arg in ARGS], webui.always_on.controls))
    assert pasted[id(by_name["method"])] == "initno"
    assert pasted[id(by_name["guided_fraction"])] == 0.5


def test_the_method_is_an_xyz_axis(webui, monkeypatch, guided):
    from modules import processing, scripts

    xyz = next(d.module for d in scripts.scripts_data if d.module.__name__ == "xyz_grid.py")
    options = {o.label: o for o in xyz.axis_options if o.label.startswith("[InitNO]")}
    method = options["[InitNO] Method"]
    assert method.choices() == ["lookahead", "initno", "initno+", "ae"]
    assert "[InitNO] Guided fraction of the steps" in options and "[InitNO] Refinement schedule" not in options
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat and a dog", seed=1, steps=STEPS, **SIZE)
    p.scripts = webui.runner
    p.script_args = tuple(webui.ui_args({"enabled": True, "subjects": "cat, dog", "refinement_schedule": "none"}))
    cell = xyz.make_cell(p, [(method, "ae", ["initno", "ae"])])
    assert infotext_params(cell)["InitNO method"] == "ae" and guided.steps == [0, 1]
    with pytest.raises(ValueError, match="'method' must be one of"):
        method.confirm(p, ["initno", "sd"])


def test_diagnostics_show_the_guidance_trace(webui):
    processed = webui.txt2img({**AE, "diagnostics": True, "refinement_schedule": "none"}, steps=STEPS, **SIZE)
    assert len(processed.images) == 2
    assert processed.extra_generation_params["InitNO diagnostic images"] == [1]
    assert processed.infotexts[1].startswith(
        "InitNO diagnostics for image 1 (seed 1): sampling guidance only; guidance: Attend-and-Excite, 2 steps"
    )


def test_the_ui_shows_the_settings_of_the_chosen_method():
    from initno.webui import ui

    # (lookahead's, the optimisation's, the guidance's)
    assert [update["visible"] for update in ui.settings_shown("lookahead")] == [True, False, False]
    assert [update["visible"] for update in ui.settings_shown("initno")] == [False, True, False]
    assert [u["visible"] for u in ui.settings_shown("Noise + sampling guidance (InitNO+)")] == [False, True, True]
    assert [update["visible"] for update in ui.settings_shown("ae")] == [False, False, True]


def test_a_failed_install_leaves_the_sampler_as_it_found_it():
    class CfgDenoiser:
        def forward(self, x, sigma):
            return x

    class Sampler:  # no `callback_state`: the second override fails after the first was made
        model_wrap_cfg = CfgDenoiser()

    sampler = Sampler()
    finished = []
    hook = sampler_hook.SamplerGuidance(sampler, [None], on_fault=pytest.fail, on_finished=lambda: finished.append(1))
    with pytest.raises(AttributeError, match="callback_state"):
        hook.install()
    assert "forward" not in vars(sampler.model_wrap_cfg) and "callback_state" not in vars(sampler)
    assert finished == [1]
