"""Checkpoint families through the stand-in: SD2 (eps and v prediction) with the real ldm UNet in the SD2
layout (linear projections, fixed-width heads) and its OpenCLIP-style padding."""

from __future__ import annotations

import pytest
from modules import shared
from modules.sd_models import StandInSD1Model

from initno import optimize as optimize_module
from initno.webui import job as job_module

QUICK = {"enabled": True, "subjects": "cat, dog", "max_rounds": 1, "steps_per_round": 2, "fallback_steps": 0}


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
