"""The scripts A1111 loads (through `scripts/initno.py`): one implementation, two entry points.

- `InitNOAlwaysOn` ("InitNO", always visible in txt2img, collapsed and off by default): the controls
  users see, the infotext paste target, the X/Y/Z axes' target, and the API's
  `"alwayson_scripts": {"initno": {"args": [...]}}`. Its hooks do all the work.
- `InitNODropdown` ("InitNO" in the Script dropdown): turns InitNO on for one generation. In the UI it
  uses the accordion's settings; through the API (`"script_name": "initno", "script_args": [...]`) it uses
  its own arguments, carried by hidden controls (and honours `"enabled": false` there, as the always-on
  form does). So users see one set of controls, and both API forms work.

A1111 finds an always-on script by the first title match in its script list, so the always-on class
must be registered first (it is defined first here and imported first by the shim).
"""

from __future__ import annotations

from modules import processing, scripts

from . import faults, ui, xyz
from .args import ArgumentError, ScriptArgs
from .infotext import comment, own_generation_params, skipped
from .job import job_of, start_job

TITLE = "InitNO"
HOST_SUPPORTED = hasattr(scripts.Script, "process_before_every_sampling")
DROPDOWN_ARGS = "_initno_dropdown_args"


def _resolve(p, values) -> ScriptArgs | None:
    """The arguments in effect for this generation, or None when InitNO is off. Bad arguments switch
    InitNO off for this generation with a message (A1111 swallows exceptions of always-on hooks)."""
    forced = getattr(p, DROPDOWN_ARGS, None)
    if forced is not None:
        return forced
    overrides = xyz.overrides(p)
    try:
        if not overrides.get("enabled", ScriptArgs.requests_enabled(values)):
            return None
        args = ScriptArgs.from_script_args(values, ui.setting_defaults())
        return args.replace(**overrides) if overrides else args
    except ArgumentError as error:
        _refuse(p, error)
        return None


def _refuse(p, error: ArgumentError) -> None:
    """The generation goes on without InitNO; the console, the infotext and the API's `info` say why."""
    reason = str(error).removeprefix("InitNO ")
    comment(p, f"InitNO {skipped(reason)}")
    own_generation_params(p)["InitNO"] = skipped(reason)


class InitNOAlwaysOn(scripts.Script):
    sorting_priority = 15  # the section's place, where the host orders the always-on sections by it

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return False if is_img2img else scripts.AlwaysVisible

    def ui(self, is_img2img):
        if not HOST_SUPPORTED:
            import gradio as gr

            gr.Markdown(faults.NEEDS_NEWER_HOST)
            return []
        controls, fields = ui.accordion(self.tabname or "txt2img")
        self.infotext_fields = fields
        self.paste_field_names = [key for _, key in fields if isinstance(key, str)]
        return controls

    def process(self, p, *args):
        if not HOST_SUPPORTED or not isinstance(p, processing.StableDiffusionProcessingTxt2Img):
            return
        resolved = _resolve(p, args)
        if resolved is not None and resolved.enabled:
            start_job(p, resolved)

    def process_before_every_sampling(self, p, *args, **kwargs):
        job = job_of(p)
        if job is None:
            return
        if getattr(p, "is_hr_pass", False):
            # The hires second pass (a sampler of its own) is left alone: InitNO shapes the first pass.
            job.end_guidance()
            return
        job.run_batch(p, kwargs["x"])

    def post_sample(self, p, ps, *args):
        job = job_of(p)
        if job is not None:
            job.end_guidance()  # sampling is over (see guided_sampling for when this is skipped)

    def postprocess(self, p, processed, *args):
        job = job_of(p)
        if job is not None:
            job.finish(p, processed)


class InitNODropdown(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return not is_img2img and HOST_SUPPORTED

    def ui(self, is_img2img):
        return ui.hidden(self.tabname or "txt2img")

    def run(self, p, *args):
        if getattr(p, "is_api", False):
            # The API's own arguments: InitNO on (this entry is chosen to run it), unless they say
            # `"enabled": false` or start with a positional false, which is honoured: no InitNO.
            try:
                chosen = ScriptArgs.from_script_args(args, {**ui.setting_defaults(), "enabled": True})
            except ArgumentError as error:
                from fastapi import HTTPException

                raise HTTPException(status_code=422, detail=str(error)) from None
        else:  # choosing the entry in the UI is what switches InitNO on, with the section's settings
            always_on = next(s for s in p.scripts.alwayson_scripts if isinstance(s, InitNOAlwaysOn))
            values = p.script_args[always_on.args_from : always_on.args_to]
            try:
                chosen = ScriptArgs.from_script_args(values, ui.setting_defaults()).replace(enabled=True)
            except ArgumentError as error:  # as the accordion alone does: an image without InitNO, and why
                _refuse(p, error)
                chosen = ScriptArgs.from_named({"enabled": False})
        setattr(p, DROPDOWN_ARGS, chosen)  # also decides over `alwayson_scripts` in the same request
        return processing.process_images(p)
