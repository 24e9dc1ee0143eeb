"""End to end through the A1111 stand-in: the UI and API entry points, the sampling hook, batches,
hires, ancestral noise, interrupt, infotext, X/Y/Z, and every fault leaving the host as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SIZE, OptimiseSpy, assert_no_hooks_left, infotext_params, interrupt_after, pixels
from modules import devices, infotext_utils, processing, sd_unet, shared
from modules.sd_hijack import Embedding, model_hijack

from initno import optimize as optimize_module
from initno.webui import infotext
from initno.webui import job as job_module

QUICK = {"method": "initno", "max_rounds": 2, "steps_per_round": 2, "fallback_steps": 2, "thresholds": "official"}
ON = {"enabled": True, "subjects": "cat, dog", **QUICK}


def test_off_by_default_and_the_image_is_unchanged(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    plain = webui.txt2img(**SIZE)
    assert spy.calls == []
    assert "InitNO" not in plain.infotexts[0]


def test_accordion_run_replaces_the_noise_and_explains_itself(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    plain = webui.txt2img(**SIZE)
    optimised = webui.txt2img(ON, **SIZE)
    (denoiser, requests, params, results) = spy.calls[0]
    assert (params.max_rounds, params.steps_per_round, params.fallback_steps) == (2, 2, 2)
    assert [r.subjects for r in requests] == [[[2], [5]]]
    assert denoiser.timestep == pytest.approx(999.0, abs=1e-3)  # Euler's first sigma is sigma_max
    assert not torch.equal(results[0].latent, requests[0].noise)
    assert not np.array_equal(pixels(plain)[0], pixels(optimised)[0])
    info = infotext_params(optimised)
    assert info["InitNO"].startswith(("valid", "not valid"))
    assert info["InitNO tokens"] == "cat 2; dog 5"
    assert info["InitNO scores"].startswith("cross ")
    assert info["InitNO max rounds"] == "2"
    assert_no_hooks_left(webui.model)


def test_script_dropdown_uses_the_accordion_settings(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    processed = webui.txt2img({"subjects": "dog", **QUICK}, dropdown=True, **SIZE)  # accordion left off
    ((_denoiser, requests, params, results),) = spy.calls
    assert requests[0].subjects == [[5]]
    assert (params.max_rounds, params.steps_per_round, params.fallback_steps) == (2, 2, 2)
    assert not torch.equal(results[0].latent, requests[0].noise)  # the noise was replaced
    assert infotext_params(processed)["InitNO tokens"] == "dog 5"
    assert infotext_params(processed)["InitNO max rounds"] == "2"


def test_script_dropdown_with_a_bad_accordion_value_makes_the_image_without_initno(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    processed = webui.txt2img({"subjects": "cat", "refinement_schedule": "abc"}, dropdown=True, **SIZE)
    assert spy.calls == []
    assert len(processed.images) == 1
    assert infotext_params(processed)["InitNO"].startswith("skipped: argument 'refinement_schedule': cannot read 'abc'")
    assert_no_hooks_left(webui.model)


def test_first_timestep_of_a_timestep_sampler(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    webui.txt2img(ON, sampler_name="DDIM", steps=4, **SIZE)
    assert spy.calls[0][0].timestep == 751.0  # DDIM with 4 steps: timesteps 1, 251, 501, 751


def test_api_alwayson_positional_and_named_give_the_same_image(webui, monkeypatch):
    from initno.webui.args import ARGS

    positional = [ON.get(arg.name, arg.default) for arg in ARGS]
    bodies = [
        {"alwayson_scripts": {"initno": {"args": positional}}},
        {"alwayson_scripts": {"InitNO": {"args": [{"subjects": "cat, dog", **QUICK}]}}},
        {"script_name": "initno", "script_args": [{"subjects": "cat, dog", **QUICK}]},
        {"script_name": "InitNO", "script_args": positional},
    ]
    images = []
    for body in bodies:
        response = webui.client.post("/sdapi/v1/txt2img", json={"prompt": "a cat and a dog", "seed": 3, **SIZE, **body})
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["infotexts"][0].count("InitNO tokens: cat 2; dog 5") == 1
        assert info["extra_generation_params"]["InitNO tokens"] == ["cat 2; dog 5"]
        images.append(response.json()["images"][0])
    assert len(set(images)) == 1


def test_api_rejects_bad_arguments_naming_them(webui):
    post = webui.client.post
    body = {"prompt": "a cat and a dog", "seed": 3, **SIZE}
    response = post("/sdapi/v1/txt2img", json={**body, "script_name": "initno", "script_args": [{"max_round": 5}]})
    assert response.status_code == 422
    assert "unknown InitNO argument(s) ['max_round']" in response.text
    response = post("/sdapi/v1/txt2img", json={**body, "script_name": "initno", "script_args": [{"max_rounds": 500}]})
    assert response.status_code == 422
    assert "'max_rounds' must be between 1 and 20" in response.text
    # Always-on hooks cannot fail the request (the host swallows their exceptions): the image is made
    # without InitNO and the response's info says why.
    response = post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"initno": {"args": [{"max_rounds": "x"}]}}})
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert "InitNO: \"skipped: argument 'max_rounds' must be int, got 'x'\"" in info["infotexts"][0]


def test_api_script_name_honours_enabled_false(webui, monkeypatch):
    """The dropdown entry follows the always-on form's rule: on, unless the arguments switch it off."""
    spy = OptimiseSpy(monkeypatch)
    body = {"prompt": "a cat and a dog", "seed": 3, **SIZE, "script_name": "initno"}
    for off in ([{"enabled": False, **QUICK}], [False, "cat, dog", 2, 2, 2]):
        response = webui.client.post("/sdapi/v1/txt2img", json={**body, "script_args": off})
        assert response.status_code == 200, response.text
        assert "InitNO" not in json.loads(response.json()["info"])["infotexts"][0]
    assert spy.calls == []
    both = {**body, "script_args": [{"enabled": False}], "alwayson_scripts": {"initno": {"args": [ON]}}}
    response = webui.client.post("/sdapi/v1/txt2img", json=both)
    assert "InitNO" not in json.loads(response.json()["info"])["infotexts"][0]  # the chosen entry decides
    assert spy.calls == []
    response = webui.client.post("/sdapi/v1/txt2img", json={**body, "script_args": [{**QUICK, "subjects": "dog"}]})
    assert "InitNO tokens: dog 5" in json.loads(response.json()["info"])["infotexts"][0]
    response = webui.client.post("/sdapi/v1/txt2img", json={**body, "script_args": [{"enabled": "no"}]})
    assert response.status_code == 422
    assert "'enabled' must be a boolean (true or false), got 'no'" in response.text


def test_hires_second_pass_is_left_alone(webui, monkeypatch, batches_run):
    spy = OptimiseSpy(monkeypatch)
    processed = webui.txt2img(ON, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, **SIZE)
    assert batches_run == [False]
    assert len(spy.calls) == 1
    assert processed.images[0].size == (192, 192)


def test_batches_are_reproducible_per_seed_and_equal_to_single_runs(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    grid = webui.txt2img(ON, seed=10, batch_size=2, n_iter=2, **SIZE)
    again = webui.txt2img(ON, seed=10, batch_size=2, n_iter=2, **SIZE)
    singles = [webui.txt2img(ON, seed=10 + i, **SIZE) for i in range(4)]
    assert [s.all_seeds for s in singles] == [[10], [11], [12], [13]]
    for a, b in zip(pixels(grid), pixels(again)):
        assert np.array_equal(a, b)
    # InitNO's part is bit-identical: each image's optimised noise equals its single run's.
    batch_latents, single_latents = spy.latents[:4], spy.latents[8:]
    for a, b in zip(batch_latents, single_latents):
        assert torch.equal(a, b)
    # The host then samples the batch in one UNet call, which rounds differently from single calls.
    for a, single in zip(pixels(grid), singles):
        assert np.abs(a.astype(int) - pixels(single)[0].astype(int)).max() <= 2
    assert [infotext_params(grid, i)["Seed"] for i in range(4)] == ["10", "11", "12", "13"]


def test_ancestral_noise_after_the_first_step_is_unchanged(webui, noise_draws):
    webui.txt2img(sampler_name="Euler a", seed=5, **SIZE)
    plain = list(noise_draws)
    noise_draws.clear()
    webui.txt2img(ON, sampler_name="Euler a", seed=5, **SIZE)
    assert len(noise_draws) == len(plain) == 4  # the initial noise, then one draw per step but the last
    for a, b in zip(plain[1:], noise_draws[1:]):
        assert torch.equal(a, b)


def test_interrupt_stops_within_one_step(webui, monkeypatch):
    passes = interrupt_after(monkeypatch, 3)
    processed = webui.txt2img({**ON, "max_rounds": 5, "steps_per_round": 10}, **SIZE)
    assert len(passes) == 3
    assert len(processed.images) == 1  # as without InitNO: the interrupted sampler returns its latent
    assert infotext_params(processed)["InitNO"] == "interrupted after 3 steps"
    assert json.loads(processed.js())["extra_generation_params"]["InitNO"] == ["interrupted after 3 steps"]
    assert_no_hooks_left(webui.model)


def test_progress_text_while_optimising(webui, monkeypatch):
    texts = []
    real = optimize_module.optimize_noise

    def watching(denoiser, requests, params, progress, cancel):
        def watch(*args):
            progress(*args)
            texts.append((shared.state.textinfo, shared.state.sampling_step, shared.state.sampling_steps))

        return real(denoiser, requests, params, progress=watch, cancel=cancel)

    monkeypatch.setattr(job_module, "optimize_noise", watching)
    webui.txt2img({**ON, "cross_threshold": 0.0}, **SIZE)
    assert texts[0][0].startswith("InitNO round 1/2 · step 1/2 · loss ")
    assert texts[-1][0].startswith("InitNO fallback · step 2/2 · loss ")  # step 1 repeats the best round's
    assert [t[1:] for t in texts] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert shared.state.textinfo is None


def test_infotext_round_trip_restores_the_controls(webui):
    settings = {**ON, "subjects": "cat", "max_rounds": 3, "cross_threshold": 0.15, "learning_rate": 0.02}
    processed = webui.txt2img(settings, **SIZE)
    fields = webui.runner.infotext_fields
    pasted = infotext_utils.paste(processed.infotexts[0], fields)
    by_component = dict(zip([id(c) for c, _ in fields], pasted))
    script = webui.always_on
    from initno.webui.args import ARGS

    for arg, control in zip(ARGS, script.controls):
        expected = settings.get(arg.name, arg.default)
        assert arg.convert(by_component[id(control)]) == expected, arg.name
    without = infotext_utils.paste("a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64", fields)
    pasted_into = dict(zip([id(c) for c, _ in fields], without))
    assert pasted_into[id(script.controls[0])] is False  # InitNO switched off
    assert pasted_into[id(script.controls[1])] == ""  # no stale subjects left for the new prompt
    assert pasted_into[id(script.controls[2])] is infotext_utils.UNCHANGED  # the settings stay
    automatic = infotext_utils.paste(processed.infotexts[0].replace("InitNO subjects: cat, ", ""), fields)
    assert dict(zip([id(c) for c, _ in fields], automatic))[id(script.controls[1])] == ""


def test_xyz_axes_apply_to_their_cell(webui, monkeypatch):
    from modules import scripts

    xyz = next(d.module for d in scripts.scripts_data if d.module.__name__ == "xyz_grid.py")
    options = {o.label: o for o in xyz.axis_options if o.label.startswith("[InitNO]")}
    assert set(options) >= {
        "[InitNO] Enable InitNO",
        "[InitNO] Subjects",
        "[InitNO] Max rounds",
        "[InitNO] Steps per round",
        "[InitNO] Cross-attention threshold",
        "[InitNO] Self-attention threshold",
        "[InitNO] Learning rate",
    }
    spy = OptimiseSpy(monkeypatch)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat and a dog", seed=1, **SIZE)
    p.scripts = webui.runner
    p.script_args = tuple(webui.ui_args({"subjects": "cat, dog", **QUICK}))  # accordion off
    xyz.make_cell(
        p,
        [
            (options["[InitNO] Enable InitNO"], "True", ["False", "True"]),
            (options["[InitNO] Max rounds"], "1", ["1", "3"]),
        ],
    )
    assert spy.calls[0][2].max_rounds == 1
    off = xyz.make_cell(p, [(options["[InitNO] Enable InitNO"], "False", ["False", "True"])])
    assert len(spy.calls) == 1
    assert "InitNO" not in off.infotexts[0]  # nothing of the first cell's InitNO leaks into the second
    assert not off.comments
    assert not hasattr(p, "_initno_xyz")  # the cells' overrides never reach the original p
    assert "InitNO" not in p.extra_generation_params
    assert all(isinstance(o, xyz.AxisOptionTxt2Img) for o in options.values())  # not offered in img2img
    with pytest.raises(ValueError, match="'max_rounds' must be between 1 and 20"):
        options["[InitNO] Max rounds"].confirm(p, [1, 50])


def test_subjects_chosen_automatically_are_reported(webui):
    processed = webui.txt2img({"enabled": True, **QUICK}, prompt="a photo of a cat and a red apple", **SIZE)
    assert infotext_params(processed)["InitNO tokens"] == "cat 5; apple 9 (auto)"


def test_long_prompts_and_and_parts_use_the_hosts_positions(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    long_prompt = ", ".join(["highly detailed"] * 30) + ", a cat and a dog"
    webui.txt2img({**ON}, prompt=long_prompt, **SIZE)
    webui.txt2img({**ON}, prompt="a cat AND a dog", **SIZE)
    (cat, dog) = spy.calls[0][1][0].subjects
    assert cat[0] > 77 and dog[0] > 77  # back-tracked into the second chunk
    assert spy.calls[0][1][0].cond.shape[1] == 154
    assert spy.calls[1][1][0].subjects == [[2], [77 + 2]]
    assert spy.calls[1][1][0].cond.shape[1] == 154  # the two AND parts side by side


def test_textual_inversion_embedding_as_a_subject(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    embedding = Embedding(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), "mycat")
    model_hijack.embedding_db.register_embedding(embedding, webui.model)
    try:
        processed = webui.txt2img({**ON, "subjects": "mycat, dog"}, prompt="a mycat and a dog", **SIZE)
    finally:
        model_hijack.embedding_db.word_embeddings.clear()
        model_hijack.embedding_db.ids_lookup.clear()
    assert spy.calls[0][1][0].subjects == [[2, 3, 4], [7]]
    assert infotext_params(processed)["InitNO tokens"] == "mycat 2 3 4; dog 7"


def test_hypernetworks_reach_the_captured_layers(webui):
    calls = []

    class Hypernetwork:
        def __init__(self):
            self.layers = {width: (lambda c: (calls.append(c.shape[-1]), c)[1], lambda c: c) for width in (32, 64)}

    shared.loaded_hypernetworks.append(Hypernetwork())
    webui.txt2img({**ON, "max_rounds": 1, "steps_per_round": 1, "fallback_steps": 0}, **SIZE)
    assert sorted(calls) == [32] * 5 + [64] * 5  # the 5 cross- and 5 self-attention layers of one pass


def test_reduced_precision_host(webui, monkeypatch):
    """Under the host's bf16 autocast InitNO's passes run in bf16 and still move the noise, by finite steps."""
    spy = OptimiseSpy(monkeypatch)
    dtypes = []
    unet = webui.model.model.diffusion_model
    handle = unet.out.register_forward_hook(
        lambda _module, _args, out: dtypes.append((torch.is_grad_enabled(), out.dtype))
    )
    devices.dtype = devices.dtype_unet = torch.bfloat16  # the host's autocast is active while sampling
    try:
        processed = webui.txt2img({**ON, "cross_threshold": 0.0}, **SIZE)
    finally:
        handle.remove()
    ((_denoiser, requests, _params_used, (result,)),) = spy.calls
    assert infotext_params(processed)["InitNO"].startswith("not valid, 2 rounds + fallback")  # every pass ran
    assert torch.isfinite(result.latent).all()
    assert not torch.equal(result.latent, requests[0].noise)
    assert all(np.isfinite([r.scores.joint for r in result.trace]))
    assert {dtype for with_grad, dtype in dtypes if not with_grad} == {torch.bfloat16}  # sampling
    assert_no_hooks_left(webui.model)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("sd3", "SD3 models have no UNet"),
        ("alternative_unet", "an alternative UNet is active"),
        ("inpainting", "inpainting models are not supported"),
        ("missing_subject", "subject 'horse' is not in the prompt"),
        ("no_subjects", "no subjects found automatically"),
        ("out_of_memory", "out of memory"),
        ("nan", "NaN or inf"),
        ("token_merging", "token merging is on"),
    ],
)
def test_faults_skip_initno_with_a_clear_message(webui, monkeypatch, fault, message):
    settings = dict(ON)
    prompt = "a cat and a dog"
    if fault == "sd3":
        monkeypatch.setattr(type(webui.model), "is_sd3", True)
    elif fault == "alternative_unet":
        sd_unet.current_unet = type("TensorRTUnet", (), {"option": "TensorRT"})()
    elif fault == "inpainting":  # an inpainting UNet takes 9 input channels
        monkeypatch.setattr(webui.model.model.diffusion_model, "in_channels", 9)
    elif fault == "missing_subject":
        settings["subjects"] = "cat, horse"
    elif fault == "no_subjects":
        settings["subjects"], prompt = "", "1girl, forest"
    elif fault == "out_of_memory":

        def oom(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        monkeypatch.setattr(job_module, "optimize_noise", oom)
    elif fault == "token_merging":
        monkeypatch.setattr(shared.opts, "token_merging_ratio", 0.5)  # Settings → Optimizations
    elif fault == "nan":
        real_apply = webui.model.apply_model

        def nan_while_optimising(x, t, c):  # InitNO's passes run with gradients, sampling without
            return real_apply(x * float("nan") if torch.is_grad_enabled() else x, t, c)

        monkeypatch.setattr(webui.model, "apply_model", nan_while_optimising)
    processed = webui.txt2img(settings, prompt=prompt, **SIZE)
    assert len(processed.images) == 1  # the image is still made, without InitNO
    status = infotext_params(processed)["InitNO"]
    assert status.startswith("skipped: ") and message in status
    assert message in processed.comments
    assert_no_hooks_left(webui.model)


def test_edit_and_inpainting_conditioning_is_refused():
    from types import SimpleNamespace

    from initno.webui import checks, faults
    from initno.webui.hosts import host_of

    for key in ("hybrid", "concat", "crossattn-adm"):
        model = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Identity(), conditioning_key=key))
        with pytest.raises(faults.Unsupported, match=f"conditioning '{key}'"):
            checks.unet_of(host_of(model))


def test_one_bad_prompt_in_a_batch_skips_only_that_image(webui, monkeypatch):
    spy = OptimiseSpy(monkeypatch)
    processed = webui.txt2img({**ON, "subjects": "dog"}, prompt=["a cat and a dog", "a cat"], batch_size=2, **SIZE)
    assert len(spy.calls[0][1]) == 1
    assert infotext_params(processed, 0)["InitNO"].startswith(("valid", "not valid"))
    assert infotext_params(processed, 1)["InitNO"].startswith("skipped: subject 'dog' is not in the prompt")


def test_memory_is_freed_after_the_optimisation(webui, monkeypatch):
    """The host's memory is given back after InitNO's passes and before sampling starts, and nothing that
    outlives the job keeps a pass's autograd graph (and with it the activations) alive."""
    events = []
    spy = OptimiseSpy(monkeypatch)
    monkeypatch.setattr(job_module, "optimize_noise", lambda *a, **k: (spy(*a, **k), events.append("optimised"))[0])
    real_gc = devices.torch_gc
    monkeypatch.setattr(devices, "torch_gc", lambda: (events.append("freed"), real_gc()))
    real_apply = webui.model.apply_model

    def sampling(x, t, c):
        if x.shape[0] == 2 and "sampling" not in events:  # the sampler's cond and uncond rows; InitNO's: one
            events.append("sampling")
        return real_apply(x, t, c)

    monkeypatch.setattr(webui.model, "apply_model", sampling)
    webui.txt2img(ON, **SIZE)
    assert events[:3] == ["optimised", "freed", "sampling"]
    ((_denoiser, requests, _params_used, (result,)),) = spy.calls
    kept = [result.latent, requests[0].noise]
    for maps in (result.maps_before, result.maps_after):
        kept += [maps.cross, maps.self_attention, maps.peaks] if maps is not None else []
    assert len(kept) > 2
    assert all(tensor.grad_fn is None and not tensor.requires_grad for tensor in kept)


def test_outcome_wording_counts_in_the_singular_and_plural():
    from initno.optimize import ImageResult

    def status(rounds, steps, fallback=False, valid=True, cancelled=False):
        result = ImageResult(None, valid, rounds, steps, fallback, cancelled, None, None, None, None)
        return infotext.status_of(result)

    assert status(1, 1) == "valid, 1 round, 1 step"
    assert status(2, 15) == "valid, 2 rounds, 15 steps"
    assert status(5, 91, fallback=True, valid=False) == "not valid, 5 rounds + fallback, 91 steps"
    assert status(1, 1, cancelled=True) == "interrupted after 1 step"
    assert status(1, 7, cancelled=True) == "interrupted after 7 steps"
