"""Thresholds calibrated to the loaded model (`thresholds: calibrated`, the default for InitNO and InitNO+),
through the stand-ins driving the real ldm UNet: one calibration per model, grid and timestep, kept in memory
and in its file; forward passes only, through the host's conditioning (SD1, SD2-v, SDXL's dict); its
thresholds are the optimisation's; the official ones as before; infotext and paste, API, X/Y/Z, Interrupt,
a damaged or unwritable cache, and Forge 2 and reForge on the same path."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from backend.diffusion_engine.sd15 import StableDiffusion
from backend.patcher.unet import KModel, UnetPatcher
from conftest import SIZE, assert_no_hooks_left, infotext_params, interrupt_on_call
from modules import infotext_utils, processing, prompt_parser, shared
from modules.sd_models import StandInSD1Model, load_checkpoint
from modules.sd_models_xl import StandInSDXLModel

from initno import calibration as core
from initno.webui import calibration, progress
from initno.webui import job as job_module
from initno.webui.args import ARGS, ScriptArgs
from initno.webui.hosts import host_of
from initno.webui.hosts.reforge import ReForge

QUICK = {"method": "initno", "max_rounds": 1, "steps_per_round": 2, "fallback_steps": 0}
ON = {"enabled": True, "subjects": "cat, dog", **QUICK}
CALLS = calibration.PASSES // calibration.BATCH_SIZE  # the calibration's UNet calls: 32 noises, 4 a call


class Spy:
    """Every calibration made (its key and result, and the grad mode and inputs of its UNet calls) and the
    settings of every noise optimisation."""

    def __init__(self, monkeypatch):
        self.made: list[core.Calibration] = []
        self.requests = []
        self.unet_calls: list[tuple[bool, bool]] = []
        self.optimised_with = []
        self.results = []
        real_calibrate, real_requests = calibration.calibrate, calibration.calibration_requests

        def calibrate(denoiser, requests, key, **kwargs):
            real_apply = denoiser.apply

            def apply(latent, timesteps, cond):
                self.unet_calls.append((torch.is_grad_enabled(), latent.requires_grad))
                return real_apply(latent, timesteps, cond)

            made = real_calibrate(replace(denoiser, apply=apply), requests, key, **kwargs)
            self.made.append(made)
            return made

        def calibration_requests(p, host, latent):
            requests = real_requests(p, host, latent)
            self.requests.append(requests)
            return requests

        monkeypatch.setattr(calibration, "calibrate", calibrate)
        monkeypatch.setattr(calibration, "calibration_requests", calibration_requests)
        real_optimise = job_module.optimize_noise

        def optimize_noise(denoiser, requests, params, **kwargs):
            self.optimised_with.append(params)
            results = real_optimise(denoiser, requests, params, **kwargs)
            self.results += results
            return results

        monkeypatch.setattr(job_module, "optimize_noise", optimize_noise)


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


def _unet_calls(webui, settings, **kwargs) -> tuple[processing.Processed, int]:
    before = webui.model.apply_model_calls
    processed = webui.txt2img(settings, **kwargs)
    return processed, webui.model.apply_model_calls - before


def test_one_calibration_per_model_and_grid_kept_in_memory_and_in_its_file(webui, spy, calibrations, monkeypatch):
    first, first_calls = _unet_calls(webui, ON, seed=1, **SIZE)
    (made,) = spy.made
    assert made.samples == calibration.PASSES == 32 and made.quantile == core.QUANTILE
    again, again_calls = _unet_calls(webui, ON, seed=1, **SIZE)
    assert len(spy.made) == 1 and first_calls - again_calls == CALLS  # a cache hit runs no UNet pass
    assert infotext_params(again)["InitNO"] == infotext_params(first)["InitNO"]
    # kept in its file: a restarted WebUI reads it and calibrates nothing
    stored = json.loads(calibrations.read_text())
    assert list(stored) == [made.key] and stored[made.key]["cross"] == made.cross
    monkeypatch.setattr(calibration, "_cache", None)
    _, restarted_calls = _unet_calls(webui, ON, seed=1, **SIZE)
    assert len(spy.made) == 1 and restarted_calls == again_calls
    # what the key holds: the checkpoint's sha256, its family, the latent grid, the timestep, the version
    info = webui.model.sd_checkpoint_info
    assert made.key == f"sd1 | hash {info.sha256} | latent 16x16 | t 999.0 | v{core.VERSION}"
    # another size, another grid: calibrated anew; as is another checkpoint, or the same with a LoRA
    webui.txt2img(ON, seed=1, width=128, height=192)
    assert len(spy.made) == 2 and "| latent 24x16 |" in spy.made[1].key
    webui.txt2img({**ON, "subjects": "cat, dog"}, prompt="a cat and a dog <lora:ink:0.8>", **SIZE)
    assert len(spy.made) == 3 and spy.made[2].key.endswith(f"| <lora:ink:0.8> | v{core.VERSION}")
    monkeypatch.setattr(webui.model, "sd_checkpoint_info", SimpleNamespace(sha256="f" * 64))
    webui.txt2img(ON, seed=1, **SIZE)
    assert len(spy.made) == 4 and f"| hash {'f' * 64} |" in spy.made[3].key
    assert len(json.loads(calibrations.read_text())) == 4
    assert_no_hooks_left(webui.model)


def test_forward_passes_only_and_its_thresholds_are_the_optimisations(webui, spy, monkeypatch):
    diagnostics = []
    monkeypatch.setattr(
        "initno.webui.gallery.diagnostic_image",
        lambda result, labels, thresholds, guidance: diagnostics.append(thresholds),
    )
    processed = webui.txt2img({**ON, "cross_threshold": 0.05, "diagnostics": True}, **SIZE)
    (made,) = spy.made
    assert len(spy.unet_calls) == CALLS and not any(grad or requires for grad, requires in spy.unet_calls)
    (params,) = spy.optimised_with
    expected = ScriptArgs.from_named({**ON, "cross_threshold": 0.05}).params
    assert params == expected.replace(cross_threshold=made.cross, conflict_threshold=made.conflict)
    assert diagnostics == [(made.cross, made.conflict)]  # the diagnostic image draws the thresholds used
    info = infotext_params(processed)
    assert info["InitNO thresholds"] == "calibrated"
    assert info["InitNO calibration"] == f"cross {made.cross:.3f}, self {made.conflict:.3f} (q0.25 of 32 noises)"
    assert "InitNO cross threshold" not in info and "InitNO self threshold" not in info  # not used
    assert_no_hooks_left(webui.model)


def test_the_official_thresholds_are_the_settings_and_nothing_is_calibrated(webui, spy):
    settings = {**ON, "thresholds": "official", "cross_threshold": 0.25}
    processed, calls = _unet_calls(webui, settings, **SIZE)
    assert spy.made == [] and spy.requests == []
    (params,) = spy.optimised_with
    assert params == ScriptArgs.from_named(settings).params and params.cross_threshold == 0.25
    (result,) = spy.results
    info = infotext_params(processed)
    assert calls == result.steps + int(info["Steps"])  # the optimisation's passes and the sampling, nothing else
    assert (info["InitNO thresholds"], info["InitNO cross threshold"], info["InitNO self threshold"]) == (
        "official",
        "0.25",
        "0.3",
    )
    assert "InitNO calibration" not in info
    # Fast and Attend-and-Excite have no validity thresholds: nothing calibrated, nothing said
    fast = webui.txt2img({"enabled": True, "subjects": "cat, dog"}, **SIZE)
    assert spy.made == [] and "InitNO thresholds" not in infotext_params(fast)


@pytest.fixture(params=["sd2-v", "sdxl"])
def family(request, monkeypatch):
    model = StandInSD1Model.sd2("v") if request.param == "sd2-v" else StandInSDXLModel()
    monkeypatch.setattr(shared, "sd_model", model)
    return model


def test_sd2_v_and_sdxl_calibrate_on_their_own_conditioning(webui, family, spy):
    processed = webui.txt2img(ON, **SIZE)
    assert infotext_params(processed)["InitNO thresholds"] == "calibrated"
    (made,), (requests,) = spy.made, spy.requests
    name = "sdxl" if family.is_sdxl else "sd2"
    assert made.key.startswith(f"{name} | hash {family.sd_checkpoint_info.sha256} | latent 16x16 |")
    assert [r.subjects for r in requests[:2]] == [[[2], [5]], [[2], [5]]]  # "a cat and a dog", "a horse and a bear"
    assert all(r.softmax_positions is not None for r in requests)  # the prompt's own tokens (padding left out)
    texts = prompt_parser.SdConditioning([calibration.PROMPTS[0][0]], width=128, height=128)
    expected = family.get_learned_conditioning(texts)
    if family.is_sdxl:  # the dict with the pooled vector, at the generation's size
        assert set(requests[0].cond) == {"crossattn", "vector"}
        assert torch.equal(requests[0].cond["vector"], expected["vector"])
        assert torch.equal(requests[0].cond["crossattn"], expected["crossattn"])
    else:
        assert torch.equal(requests[0].cond, expected)
    (params,) = spy.optimised_with
    assert (params.cross_threshold, params.conflict_threshold) == (made.cross, made.conflict)
    assert not any(grad for grad, _ in spy.unet_calls)
    assert_no_hooks_left(family)


def test_pasting_restores_the_thresholds(webui):
    fields = webui.runner.infotext_fields
    controls = dict(zip([arg.name for arg in ARGS], webui.always_on.controls))

    def pasted(infotext: str):
        values = dict(zip([id(c) for c, _ in fields], infotext_utils.paste(infotext, fields)))
        return values[id(controls["thresholds"])]

    head = "a cat and a dog\nSteps: 20, Seed: 1, "
    assert pasted(head + "InitNO: valid, 1 round, 1 step, InitNO method: initno, InitNO thresholds: calibrated") == (
        "calibrated"
    )
    assert pasted(head + "InitNO: valid, 1 round, 1 step, InitNO method: initno+, InitNO thresholds: official") == (
        "official"
    )
    # before calibration existed the official thresholds were the only ones; a method without them: the default
    assert pasted(head + "InitNO: valid, 1 round, 1 step, InitNO method: initno, InitNO max rounds: 5") == "official"
    assert pasted(head + "InitNO: valid, 1 round, 1 step, InitNO max rounds: 5") == "official"  # before lookahead
    assert pasted(head + "InitNO: chose noise 1 of 4, 20 passes, InitNO method: lookahead") == "calibrated"
    assert pasted(head + "Sampler: Euler") is infotext_utils.UNCHANGED  # InitNO off: left as it is
    # a generated infotext pastes back
    processed = webui.txt2img({**ON, "thresholds": "official"}, **SIZE)
    assert pasted(processed.infotexts[0]) == "official"


def test_the_ui_shows_the_threshold_settings_only_for_the_official_thresholds(webui):
    from initno.webui import ui

    assert ui.official_thresholds_shown("official")["visible"] is True
    assert ui.official_thresholds_shown("Calibrated to the model")["visible"] is False
    controls = dict(zip([arg.name for arg in ARGS], webui.always_on.controls))
    assert controls["thresholds"].value == "calibrated"
    assert [choice for _label, choice in controls["thresholds"].choices] == ["calibrated", "official"]
    from modules import shared as host_shared

    option = host_shared.opts.data_labels["initno_default_thresholds"]  # Settings → InitNO has its default
    assert option.default == "calibrated" and option.section == ("initno", "InitNO")


def test_api_positional_and_named_and_the_schema_and_xyz(webui, spy):
    body = {"prompt": "a cat and a dog", "seed": 4, **SIZE}
    positional = [arg.default for arg in ARGS]
    positional[:2] = [True, "cat, dog"]
    by_name = {arg.name: i for i, arg in enumerate(ARGS)}
    for name, value in QUICK.items():
        positional[by_name[name]] = value
    positional[by_name["thresholds"]] = "official"
    response = webui.client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"initno": {"args": positional}}}
    )
    assert response.status_code == 200, response.text
    assert "InitNO thresholds: official" in json.loads(response.json()["info"])["infotexts"][0]
    assert spy.made == []
    named = {"subjects": "cat, dog", **QUICK}  # the default: calibrated
    response = webui.client.post("/sdapi/v1/txt2img", json={**body, "script_name": "initno", "script_args": [named]})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "InitNO thresholds: calibrated" in info["infotexts"][0] and len(spy.made) == 1
    assert info["extra_generation_params"]["InitNO calibration"][0].endswith("(q0.25 of 32 noises)")
    bad = {**named, "thresholds": "tuned"}
    response = webui.client.post("/sdapi/v1/txt2img", json={**body, "script_name": "initno", "script_args": [bad]})
    assert response.status_code == 422 and "'thresholds' must be one of 'calibrated', 'official'" in response.text
    schema = webui.client.get("/initno/v1/schema").json()["args"]
    assert schema[-1]["name"] == "thresholds" and schema[-1]["choices"] == ["calibrated", "official"]
    assert (schema[-1]["default"], schema[-1]["infotext"]) == ("calibrated", "InitNO thresholds")
    from modules import scripts

    xyz = next(d.module for d in scripts.scripts_data if d.module.__name__ == "xyz_grid.py")
    axis = next(o for o in xyz.axis_options if o.label == "[InitNO] Thresholds")
    assert axis.choices() == ["calibrated", "official"]
    with pytest.raises(ValueError, match="'thresholds' must be one of"):
        axis.confirm(None, ["calibrated", "SD1.4"])


def test_a_damaged_cache_file_is_ignored_and_replaced(webui, spy, calibrations):
    calibrations.write_text('{"sd1 | hash": {"cross": ')  # cut off mid-write by an older version, say
    processed = webui.txt2img(ON, **SIZE)
    (made,) = spy.made
    assert infotext_params(processed)["InitNO thresholds"] == "calibrated"
    assert json.loads(calibrations.read_text()) == {made.key: {**vars(made)}}


def test_an_unwritable_cache_file_keeps_the_calibration_for_the_session(webui, spy, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(calibration, "CACHE_FILE", blocker / "calibrations.json")  # its folder is a file
    first = webui.txt2img(ON, **SIZE)
    assert "the calibration could not be saved to" in capsys.readouterr().out
    second = webui.txt2img(ON, **SIZE)
    assert len(spy.made) == 1 and infotext_params(first)["InitNO"] == infotext_params(second)["InitNO"]


def test_interrupt_stops_the_calibration_and_keeps_nothing(webui, spy, calibrations, monkeypatch):
    calls = interrupt_on_call(monkeypatch, progress, 2)
    processed = webui.txt2img(ON, batch_size=2, **SIZE)
    assert calls == [4, 4] and spy.optimised_with == []  # the second call found Interrupt pressed
    assert len(processed.images) == 2
    assert [infotext_params(processed, i)["InitNO"] for i in range(2)] == [
        "interrupted while calibrating the thresholds"
    ] * 2
    assert calibration.cache().entries == {} and not calibrations.exists()
    assert_no_hooks_left(webui.model)


def test_forge_2_calibrates_on_the_same_path_as_a1111(webui, spy, tmp_path, monkeypatch):
    a1111 = webui.txt2img(ON, seed=3, **SIZE)
    forge_model = StableDiffusion(webui.model)
    parameters = list(forge_model.forge_objects.unet.model.diffusion_model.parameters())
    monkeypatch.setattr(shared, "sd_model", forge_model)
    webui.txt2img(ON, seed=3, **SIZE)
    assert len(spy.made) == 1  # the same checkpoint: its calibration is kept
    monkeypatch.setattr(calibration, "CACHE_FILE", tmp_path / "fresh.json")  # as if never calibrated
    events = forge_model.forge_objects.unet.events
    before = len(events)
    forge_run = webui.txt2img(ON, seed=3, **SIZE)
    a1111_made, forge_made = spy.made
    assert forge_made.key == a1111_made.key
    assert (forge_made.cross, forge_made.conflict) == pytest.approx((a1111_made.cross, a1111_made.conflict), abs=1e-5)
    assert infotext_params(forge_run)["InitNO calibration"] == infotext_params(a1111)["InitNO calibration"]
    # calibrated on a model prepared by the host for its batches of 4, then optimised, then sampled
    assert events[before : before + 5] == [
        ("prepare", (4, 4, 16, 16)),
        ("cleanup",),
        ("prepare", (1, 4, 16, 16)),
        ("cleanup",),
        ("prepare", (1, 4, 16, 16)),
    ]
    unet = forge_model.forge_objects.unet.model.diffusion_model
    assert [id(p) for p in unet.parameters()] == [id(p) for p in parameters]
    assert all(p.is_inference() and p.grad is None for p in unet.parameters())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in unet.modules())


def test_reforge_calibrates_through_its_own_sampler_preparation(webui, tmp_path, monkeypatch):
    """reForge keeps A1111's model object (hijacked text encoder, flags, checkpoint info) and runs the UNet
    through its patcher: the calibration is A1111's."""
    a1111_host = host_of(webui.model)
    reforge_model = StandInSD1Model(webui.model.model.diffusion_model)
    load_checkpoint(reforge_model, "tiny-sd1")
    patcher = UnetPatcher(KModel(reforge_model.model.diffusion_model, reforge_model.alphas_cumprod))
    reforge_model.forge_objects = SimpleNamespace(unet=patcher)
    host = host_of(reforge_model)
    assert isinstance(host, ReForge)
    latent = torch.zeros(1, 4, 16, 16)
    made = []
    for model, adapter in ((webui.model, a1111_host), (reforge_model, host)):
        p = SimpleNamespace(sd_model=model, width=128, height=128, steps=20)
        denoiser = adapter.denoiser(adapter.unet(), 999.0, checkpoint_blocks=False)
        monkeypatch.setattr(calibration, "CACHE_FILE", tmp_path / f"{adapter.name}.json")  # each its own
        made.append(calibration.calibration_for(p, adapter, denoiser, latent))
    assert made[1].key == made[0].key
    assert (made[1].cross, made[1].conflict) == pytest.approx((made[0].cross, made[0].conflict), abs=1e-5)
    assert patcher.events == [("prepare", (4, 4, 16, 16)), ("cleanup",)]
    assert_no_hooks_left(webui.model)


def test_the_checkpoint_is_named_by_its_hash_else_by_its_title_or_file():
    def model(info=None, **attributes):
        return SimpleNamespace(sd_checkpoint_info=info, **attributes)

    hashed = SimpleNamespace(sha256="ab" * 32, shorthash="abababab", filename="/models/a.safetensors")
    assert calibration.checkpoint_of(model(hashed, sd_model_hash="abababab")) == f"hash {'ab' * 32}"
    assert calibration.checkpoint_of(model(SimpleNamespace(sha256=None), sd_model_hash="0a1b2c")) == "hash 0a1b2c"
    titled = SimpleNamespace(sha256=None, title="a.safetensors", filename="/models/a.safetensors")
    assert calibration.checkpoint_of(model(titled)) == "checkpoint a.safetensors"
    assert calibration.checkpoint_of(model(SimpleNamespace(filename="/models/b.ckpt"))) == "checkpoint b.ckpt"
    assert calibration.checkpoint_of(model()) is None
    # an unnamed checkpoint is calibrated every time, never kept under a name another could share
    assert calibration.cache_key(SimpleNamespace(sd_model=model()), torch.zeros(1, 4, 8, 8), 999.0) is None
