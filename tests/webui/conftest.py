"""The extension loaded into the A1111 stand-in (tests/host), as the WebUI loads it: the script file
through the host's loader, the callbacks run, the txt2img UI built, the API app started."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "tests" / "host"
QUICK_INITNO = {
    "subjects": "cat, dog",
    "method": "initno",
    "max_rounds": 1,
    "steps_per_round": 2,
    "fallback_steps": 0,
    "thresholds": "official",
}
"""The official InitNO at its smallest (one round of two steps, no fallback), as named arguments."""
sys.path.insert(0, str(HOST))

from fastapi.testclient import TestClient  # noqa: E402
from modules import (  # noqa: E402
    devices,
    errors,
    infotext_utils,
    processing,
    rng,
    script_callbacks,
    scripts,
    sd_unet,
    shared,
)
from modules.api import api  # noqa: E402
from modules.sd_models import StandInSD1Model  # noqa: E402

from initno.tiny import build_unet  # noqa: E402


@dataclass
class WebUI:
    runner: scripts.ScriptRunner
    client: TestClient
    model: StandInSD1Model

    @property
    def always_on(self):
        return next(s for s in self.runner.alwayson_scripts if s.title() == "InitNO")

    @property
    def dropdown(self):
        return next(s for s in self.runner.selectable_scripts if s.title() == "InitNO")

    def ui_args(self, initno: dict | None = None, dropdown: bool = False) -> list:
        """What the txt2img button sends: every control's value, InitNO's set from `initno` by name."""
        values = [control.value if control is not None else 0 for control in self.runner.inputs]
        values[0] = 0
        script = self.always_on
        from initno.webui.args import ARGS

        for offset, arg in enumerate(ARGS):
            if initno and arg.name in initno:
                values[script.args_from + offset] = initno[arg.name]
        if dropdown:
            values[0] = self.runner.selectable_scripts.index(self.dropdown) + 1
        return values

    def txt2img(self, initno: dict | None = None, dropdown: bool = False, **kwargs) -> processing.Processed:
        """The UI path (modules/txt2img.py): the dropdown's run() if a script is selected, else process_images."""
        p = processing.StableDiffusionProcessingTxt2Img(**{"prompt": "a cat and a dog", "seed": 1, **kwargs})
        p.scripts = self.runner
        p.script_args = tuple(self.ui_args(initno, dropdown))
        shared.state.begin()
        try:
            processed = self.runner.run(p, *p.script_args)
            return processed if processed is not None else processing.process_images(p)
        finally:
            shared.state.end()


@pytest.fixture(scope="session")
def webui() -> WebUI:
    model = StandInSD1Model(build_unet(seed=0))
    shared.sd_model = model
    scripts.load_scripts([str(HOST / "scripts" / "xyz_grid.py"), str(REPO / "scripts" / "initno.py")])
    script_callbacks.ui_settings_callback()
    script_callbacks.before_ui_callback()
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(is_img2img=False)
    with gr.Blocks():
        runner.setup_ui()
    scripts.scripts_txt2img = runner
    app = api.create_app()
    script_callbacks.app_started_callback(None, app)
    return WebUI(runner, TestClient(app), model)


@pytest.fixture(autouse=True)
def clean_host_state(webui):
    """Each test starts from the host's defaults and leaves nothing behind."""
    yield
    shared.state.begin()
    shared.state.end()
    sd_unet.current_unet = None
    shared.loaded_hypernetworks.clear()
    devices.dtype = devices.dtype_unet = torch.float32
    errors.reported.clear()


@pytest.fixture(autouse=True)
def calibrations(tmp_path, monkeypatch) -> Path:
    """Each test starts without calibrations, and keeps them in its own file, never the extension's."""
    from initno.webui import calibration

    path = tmp_path / "calibrations.json"
    monkeypatch.setattr(calibration, "CACHE_FILE", path)
    monkeypatch.setattr(calibration, "_cache", None)
    return path


def assert_no_hooks_left(model: StandInSD1Model) -> None:
    unet = model.model.diffusion_model
    assert all("forward" not in m.__dict__ for m in unet.modules()), "an instance forward was left behind"
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in unet.modules()), "a hook was left behind"
    assert all(p.requires_grad for p in unet.parameters()), "parameter flags not restored"
    assert all(p.grad is None for p in unet.parameters()), "a parameter got a gradient"


class OptimiseSpy:
    """Every noise optimisation InitNO runs, as (denoiser, requests, params, results), the real one delegated to."""

    def __init__(self, monkeypatch):
        from initno import optimize as optimize_module
        from initno.webui import job as job_module

        self.calls = []
        self.real = optimize_module.optimize_noise
        monkeypatch.setattr(job_module, "optimize_noise", self)

    def __call__(self, denoiser, requests, params, **kwargs):
        results = self.real(denoiser, requests, params, **kwargs)
        self.calls.append((denoiser, requests, params, results))
        return results

    @property
    def results(self) -> list:
        return [r for *_, results in self.calls for r in results]

    @property
    def latents(self) -> list[torch.Tensor]:
        return [r.latent for r in self.results]


@pytest.fixture
def optimisations(monkeypatch) -> OptimiseSpy:
    return OptimiseSpy(monkeypatch)


SIZE = {"width": 128, "height": 128}
"""128² images: latents of 16×16, so InitNO reads the 4×4 grid."""


def infotext_params(processed, index=0) -> dict:
    """The image's infotext, read back as the host's paste does."""
    return infotext_utils.parse_generation_parameters(processed.infotexts[index])


def initno_status(processed, index=0) -> str:
    return infotext_params(processed, index)["InitNO"]


def pixels(processed) -> list[np.ndarray]:
    """The images as int arrays (differences do not wrap around as uint8 would)."""
    return [np.asarray(image).astype(int) for image in processed.images]


@pytest.fixture
def noise_draws(monkeypatch) -> list[torch.Tensor]:
    """A copy of every noise the host's ImageRNG draws, in order: the initial noise, then the ancestral
    samplers' noise at each step."""
    draws = []
    real_next = rng.ImageRNG.next

    def recording_next(self):
        x = real_next(self)
        draws.append(x.clone())
        return x

    monkeypatch.setattr(rng.ImageRNG, "next", recording_next)
    return draws


@pytest.fixture
def batches_run(monkeypatch) -> list[bool]:
    """`p.is_hr_pass` of every batch InitNO's job ran for (`InitNOJob.run_batch`), in order."""
    from initno.webui import job as job_module

    seen = []
    real = job_module.InitNOJob.run_batch

    def recording(self, p, x):
        seen.append(bool(getattr(p, "is_hr_pass", False)))
        return real(self, p, x)

    monkeypatch.setattr(job_module.InitNOJob, "run_batch", recording)
    return seen


def interrupt_after(monkeypatch, passes: int) -> list:
    """Makes InitNO's optimisation press Interrupt after `passes` UNet passes; returns the passes' records."""
    from initno import optimize as optimize_module
    from initno.webui import job as job_module

    records = []
    real = optimize_module.optimize_noise

    def interrupting(denoiser, requests, params, progress, cancel):
        def progress_then_interrupt(*args):
            records.append(args)
            progress(*args)
            if len(records) == passes:
                shared.state.interrupt()

        return real(denoiser, requests, params, progress=progress_then_interrupt, cancel=cancel)

    monkeypatch.setattr(job_module, "optimize_noise", interrupting)
    return records


def interrupt_on_call(monkeypatch, module, call: int) -> list[int]:
    """Makes the UNet wrapper that `module.counted` builds press Interrupt on its `call`-th call, before that
    call's pass (the pass then checks for it); returns each call's batch size."""
    calls = []
    real_counted = module.counted

    def interrupting(apply, shown):
        counting = real_counted(apply, shown)

        def apply_then_interrupt(*args):
            calls.append(args[0].shape[0])
            if len(calls) == call:
                shared.state.interrupt()
            return counting(*args)

        return apply_then_interrupt

    monkeypatch.setattr(module, "counted", interrupting)
    return calls
