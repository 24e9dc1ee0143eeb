"""Mirrors modules/api/api.py's txt2img route: default script args from each script's controls,
`script_name`/`script_args` for the Script dropdown, `alwayson_scripts` by lower-cased title, then
`scripts_txt2img.run` or `process_images`; exceptions become a JSON error (the host's api_middleware)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import gradio as gr
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from modules import processing, scripts, shared
from pydantic import BaseModel, Field


class Txt2ImgRequest(BaseModel):
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str = "Euler"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 4
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 64
    enable_hr: bool = False
    hr_scale: float = 2.0
    denoising_strength: float = 0.75
    script_name: str | None = None
    script_args: list = Field(default=[])
    alwayson_scripts: dict = {}
    send_images: bool = True


def script_name_to_index(name, scripts_list):
    try:
        return [script.title().lower() for script in scripts_list].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def init_default_script_args(script_runner):
    last_arg_index = max([1] + [script.args_to for script in script_runner.scripts])
    script_args = [None] * last_arg_index
    script_args[0] = 0
    with gr.Blocks():
        for script in script_runner.scripts:
            if script.ui(script.is_img2img):
                script_args[script.args_from : script.args_to] = [elem.value for elem in script.ui(script.is_img2img)]
    return script_args


def init_script_args(request, default_script_args, selectable_script, selectable_idx, script_runner):
    script_args = default_script_args.copy()
    if selectable_script:
        script_args[selectable_script.args_from : selectable_script.args_to] = request.script_args
        script_args[0] = selectable_idx + 1
    for name, body in request.alwayson_scripts.items():
        script = script_runner.scripts[script_name_to_index(name, script_runner.scripts)]
        if script.alwayson is False:
            raise HTTPException(
                status_code=422, detail="Cannot have a selectable script in the always on scripts params"
            )
        if "args" in body:
            for idx in range(0, min(script.args_to - script.args_from, len(body["args"]))):
                script_args[script.args_from + idx] = body["args"][idx]
    return script_args


def encode_pil_to_base64(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def create_app() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(Exception)
    async def handle_exception(request: Request, e: Exception):
        status = getattr(e, "status_code", 500)
        body = {"error": type(e).__name__, "detail": getattr(e, "detail", ""), "errors": str(e)}
        return JSONResponse(status_code=status, content=body)

    @app.post("/sdapi/v1/txt2img")
    def text2imgapi(request: Txt2ImgRequest) -> dict[str, Any]:
        runner = scripts.scripts_txt2img
        selectable, selectable_idx = None, None
        if request.script_name:
            selectable_idx = script_name_to_index(request.script_name, runner.selectable_scripts)
            selectable = runner.selectable_scripts[selectable_idx]
        args = request.dict(exclude={"script_name", "script_args", "alwayson_scripts", "send_images"})
        script_args = init_script_args(request, init_default_script_args(runner), selectable, selectable_idx, runner)
        p = processing.StableDiffusionProcessingTxt2Img(**args)
        p.is_api = True
        p.scripts = runner
        try:
            shared.state.begin(job="scripts_txt2img")
            if selectable is not None:
                p.script_args = script_args
                processed = runner.run(p, *p.script_args)
            else:
                p.script_args = tuple(script_args)
                processed = processing.process_images(p)
        finally:
            shared.state.end()
        images = [encode_pil_to_base64(i) for i in processed.images] if request.send_images else []
        return {"images": images, "parameters": request.dict(), "info": processed.js()}

    @app.get("/sdapi/v1/scripts")
    def get_scripts_list():
        return {"txt2img": [s.name for s in scripts.scripts_txt2img.scripts]}

    return app


__all__ = ["create_app", "json"]
