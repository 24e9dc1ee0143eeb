"""InitNO beside ControlNet (tests/host/controlnet_standin.py, written from sd-webui-controlnet v1.1.455):
ControlNet marks every prompt's context in `p.c` with one row and strips it in its UNet forward, which
also adds its residuals and runs the encoder without gradients. InitNO runs, its passes carry the
positive marker and see the prompt's own context, they read the controlled model (the residuals, with
gradients, and the encoder's gradients too), and nothing of InitNO is left on the UNet."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import SIZE, initno_status
from controlnet_standin import POSITIVE_MARK_TOKEN, ControlNetScript, ControlNetUnit, StandInControlModel
from modules import infotext_utils, shared
from modules.sd_models_xl import StandInSDXLModel

from initno.webui import passes

QUICK = {
    "enabled": True,
    "subjects": "cat, dog",
    "method": "initno",
    "max_rounds": 2,
    "steps_per_round": 2,
    "fallback_steps": 2,
    "thresholds": "official",
}
HINT = torch.linspace(0, 1, 3 * 128 * 128).reshape(1, 3, 128, 128)  # the unit's control image


@pytest.fixture
def controlnet(webui):
    """ControlNet's always-on script in the runner, after InitNO's (the order does not matter: InitNO works
    inside `p.sample`, which ControlNet wraps in its `process`)."""
    script = ControlNetScript()
    script.args_from = script.args_to = len(webui.runner.inputs)  # its units are set on it directly
    webui.runner.scripts.append(script)
    webui.runner.alwayson_scripts.append(script)
    yield script
    webui.runner.scripts.remove(script)
    webui.runner.alwayson_scripts.remove(script)


def assert_nothing_of_initno_left(unet: torch.nn.Module) -> None:
    """As conftest's check, but for the forward ControlNet's `restore` leaves on the UNet itself: the
    original forward, as a bound method of the UNet (then removed, so that other tests start clean)."""
    leftover = unet.__dict__.pop("forward", None)
    assert leftover is None or leftover.__func__ is type(unet).forward
    assert all("forward" not in m.__dict__ for m in unet.modules()), "an instance forward was left behind"
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in unet.modules()), "a hook was left"
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())


@contextlib.contextmanager
def with_model(model):
    previous, shared.sd_model = shared.sd_model, model
    try:
        yield model
    finally:
        shared.sd_model = previous


def test_initno_runs_with_a_unit_enabled_and_reads_the_controlled_model(webui, controlnet, optimisations):
    prompts = ["a cat and a dog", "a dog and a cat"]
    webui.txt2img(QUICK, prompt=prompts, batch_size=2, **SIZE)  # without ControlNet: the reference
    controlnet.units = [ControlNetUnit(weight=1.0, hint=HINT)]
    controlled = webui.txt2img(QUICK, prompt=prompts, batch_size=2, **SIZE)
    (_, plain_requests, _, plain_results), (_, requests, _, results) = optimisations.calls
    for index in range(2):
        assert initno_status(controlled, index).startswith(("valid", "not valid"))  # not skipped
        cond, plain_cond = requests[index].cond, plain_requests[index].cond
        assert cond.shape == (1, 78, 32) and plain_cond.shape == (1, 77, 32)
        assert torch.all(cond[0, 0] == POSITIVE_MARK_TOKEN)  # ControlNet's marker: a cond row
        assert torch.equal(cond[0, 1:], plain_cond[0])  # and behind it the prompt's own context
        assert requests[index].subjects == plain_requests[index].subjects
        # the residuals took part: the same noise is scored and optimised differently
        assert results[index].initial != plain_results[index].initial
        assert not torch.equal(results[index].latent, plain_results[index].latent)
    network = controlnet.networks[-1]
    initno_calls = [c for c in network.calls if c["batch"] == 1]
    assert initno_calls and all(c["cond"] == [0] and c["uncond"] == [] for c in initno_calls)
    assert {c["context_length"] for c in network.calls} == {77}  # the UNet never saw the marker
    assert any(c["grad"] for c in initno_calls)  # InitNO's passes, with gradients
    sampling = [c for c in network.calls if c["batch"] == 4]  # two images' cond rows, then their uncond rows
    assert sampling and all(c["cond"] == [0, 1] and c["uncond"] == [2, 3] for c in sampling)
    assert network.moved_to_cpu == 0  # stopping InitNO's pass early is not an error to ControlNet
    assert all(p.grad is None for p in controlnet.control_model.parameters())
    assert_nothing_of_initno_left(webui.model.model.diffusion_model)


def test_a_zero_weight_unit_gives_exactly_the_result_without_controlnet(webui, controlnet, optimisations, monkeypatch):
    """With the residuals at zero the controlled UNet computes what the plain one does: InitNO must then
    find the same noise, bit for bit. That needs the marker handled and the gradients through the blocks
    ControlNet runs under `no_grad`: without the latter the noise moves differently."""
    webui.txt2img(QUICK, **SIZE)
    controlnet.units = [ControlNetUnit(weight=0.0, hint=HINT)]
    webui.txt2img(QUICK, **SIZE)
    (*_, (plain,)), (*_, (controlled,)) = optimisations.calls
    assert controlled.trace == plain.trace
    assert torch.equal(controlled.latent, plain.latent)
    monkeypatch.setattr(passes, "gradients_through_blocks", lambda unet: contextlib.nullcontext())
    webui.txt2img(QUICK, **SIZE)
    (*_, (without_encoder_gradients,)) = optimisations.calls[2]
    assert without_encoder_gradients.trace[0] == plain.trace[0]  # the same first pass
    assert not torch.equal(without_encoder_gradients.latent, plain.latent)  # a different gradient
    assert_nothing_of_initno_left(webui.model.model.diffusion_model)


def test_and_parts_keep_one_marker_in_front(webui, controlnet, optimisations):
    controlnet.units = [ControlNetUnit(weight=1.0, hint=HINT)]
    processed = webui.txt2img(QUICK, prompt="a cat AND a dog", **SIZE)
    (_, (request,), _, _) = optimisations.calls[0]
    assert initno_status(processed).startswith(("valid", "not valid"))
    assert request.cond.shape == (1, 1 + 2 * 77, 32)
    assert torch.all(request.cond[0, 0] == POSITIVE_MARK_TOKEN)
    assert request.subjects == [[2], [77 + 2]]
    assert {c["context_length"] for c in controlnet.networks[-1].calls if c["batch"] == 1} == {154}
    assert_nothing_of_initno_left(webui.model.model.diffusion_model)


@pytest.fixture(scope="module")
def sdxl_model():
    return StandInSDXLModel()


def test_sdxl_marks_the_crossattn_of_its_conditioning_dict(webui, controlnet, optimisations, sdxl_model):
    controlnet.units = [ControlNetUnit(weight=1.0, hint=HINT)]
    with with_model(sdxl_model):
        processed = webui.txt2img({**QUICK, "max_rounds": 1}, **SIZE)
    (_, (request,), _, _) = optimisations.calls[0]
    assert initno_status(processed).startswith(("valid", "not valid"))
    assert request.cond["crossattn"].shape == (1, 78, 2048)
    assert torch.all(request.cond["crossattn"][0, 0] == POSITIVE_MARK_TOKEN)
    assert request.cond["vector"].shape == (1, 2816)  # ControlNet leaves the pooled vector alone
    network = controlnet.networks[-1]
    assert {c["context_length"] for c in network.calls} == {77}
    assert any(c["grad"] for c in network.calls if c["batch"] == 1)
    assert_nothing_of_initno_left(sdxl_model.model.diffusion_model)


def test_a_fault_in_initnos_pass_leaves_nothing_behind(webui, controlnet, monkeypatch):
    controlnet.units = [ControlNetUnit(weight=1.0, hint=HINT)]
    original = StandInControlModel.forward

    def failing_while_optimising(module, *args, **kwargs):
        if torch.is_grad_enabled():  # only in InitNO's passes: sampling runs without gradients
            raise RuntimeError("control model failed")
        return original(module, *args, **kwargs)

    monkeypatch.setattr(StandInControlModel, "forward", failing_while_optimising)
    processed = webui.txt2img(QUICK, **SIZE)
    assert len(processed.images) == 1  # the image is still made, with ControlNet, without InitNO
    assert initno_status(processed) == "skipped: internal error: RuntimeError: control model failed"
    assert controlnet.networks[-1].moved_to_cpu == 1  # a real error does reach ControlNet's handler
    assert_nothing_of_initno_left(webui.model.model.diffusion_model)


def test_the_thresholds_calibrate_through_the_controlled_model_for_each_batch(webui, controlnet):
    """The calibration's prompts carry no marker: ControlNet takes them as all positive, as it takes any
    unmarked context, and its residuals take part, as in InitNO's own passes. Those come from this
    generation's control image, so the calibration is made for each batch and never kept."""
    from initno.webui import calibration

    controlnet.units = [ControlNetUnit(weight=1.0, hint=HINT)]
    for _ in range(2):
        processed = webui.txt2img({**QUICK, "thresholds": "calibrated"}, **SIZE)
        info = infotext_utils.parse_generation_parameters(processed.infotexts[0])
        assert info["InitNO thresholds"] == "calibrated" and info["InitNO"].startswith(("valid", "not valid"))
    calls = [c for network in controlnet.networks for c in network.calls]  # one network per generation
    calibrating = [c for c in calls if c["batch"] == 4]  # 4 noises a call
    assert len(controlnet.networks) == 2 and len(calibrating) == 2 * 8
    assert all(c["cond"] == c["uncond"] == [] and not c["grad"] for c in calibrating)  # unmarked: positive
    assert {c["context_length"] for c in calls} == {77}
    assert calibration.cache().entries == {}
    assert_nothing_of_initno_left(webui.model.model.diffusion_model)
