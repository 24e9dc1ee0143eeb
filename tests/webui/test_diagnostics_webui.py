"""Diagnostic images in the WebUI: only when asked for, after the generated images, flagged in `info`."""

from __future__ import annotations

import base64
import io
import json

from conftest import QUICK_INITNO, SIZE
from modules import images
from PIL import Image

QUICK = QUICK_INITNO


def test_no_diagnostic_image_unless_asked(webui):
    processed = webui.txt2img({"enabled": True, **QUICK}, batch_size=2, **SIZE)
    assert len(processed.images) == 2
    assert "InitNO diagnostic images" not in processed.extra_generation_params


def test_one_diagnostic_image_per_optimised_image_after_the_generated_ones(webui):
    images.saved.clear()
    processed = webui.txt2img(
        {"enabled": True, "diagnostics": True, **QUICK}, batch_size=2, n_iter=2, do_not_save_samples=False, **SIZE
    )
    assert len(processed.images) == 8
    assert [i.size for i in processed.images[:4]] == [(128, 128)] * 4
    assert all(i.size[0] > 1000 for i in processed.images[4:])  # the diagnostic figures
    assert processed.extra_generation_params["InitNO diagnostic images"] == [4, 5, 6, 7]
    assert processed.infotexts[4].startswith("InitNO diagnostics for image 1 (seed 1): ")
    assert processed.infotexts[7].startswith("InitNO diagnostics for image 4 (seed 4): ")
    assert [s["suffix"] for s in images.saved] == ["-initno"] * 4  # saved like the generated images


def test_skipped_images_get_no_diagnostic_image(webui):
    processed = webui.txt2img(
        {"enabled": True, "diagnostics": True, **QUICK, "subjects": "dog"},
        prompt=["a cat and a dog", "a cat"],
        batch_size=2,
        **SIZE,
    )
    assert len(processed.images) == 3
    assert processed.extra_generation_params["InitNO diagnostic images"] == [2]


def test_api_returns_diagnostics_only_when_asked_and_flags_them(webui):
    body = {"prompt": "a cat and a dog", "seed": 2, **SIZE}
    plain = webui.client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"initno": {"args": [QUICK]}}})
    assert len(plain.json()["images"]) == 1
    plain_params = json.loads(plain.json()["info"])["extra_generation_params"]
    assert "InitNO diagnostic images" not in plain_params
    assert "InitNO diagnostics" not in plain_params  # left out, not null, when off
    asked = webui.client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"initno": {"args": [{**QUICK, "diagnostics": True}]}}}
    )
    response = asked.json()
    info = json.loads(response["info"])
    assert len(response["images"]) == 2
    assert info["extra_generation_params"]["InitNO diagnostic images"] == [1]  # indices into `images`
    assert info["extra_generation_params"]["InitNO diagnostics"] is True
    figure = Image.open(io.BytesIO(base64.b64decode(response["images"][1])))
    assert figure.width > 1000
    assert info["infotexts"][1].startswith("InitNO diagnostics for image 1")
