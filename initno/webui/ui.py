"""The InitNO controls, their Settings-page defaults and their infotext paste fields, all built from
`args.ARGS`."""

from __future__ import annotations

import gradio as gr
from modules import shared
from modules.ui_components import InputAccordion

from ..calibration import THRESHOLD_PARAMS
from ..guidance import OFFICIAL_REFINEMENTS, format_refinements
from ..methods import BEFORE_LOOKAHEAD, INITNO_PLUS, METHODS, method_of
from .args import (
    ARGS,
    BEFORE_CALIBRATION,
    BY_NAME,
    GUIDANCE_ARGS,
    LOOKAHEAD_ARGS,
    OFFICIAL,
    Arg,
)
from .passes import CHECKPOINTING

SETTINGS_SECTION = ("initno", "InitNO", "sd")
"""Settings → InitNO, listed under the host's "Stable Diffusion" category with the other generation settings
(Sampler parameters, Optimizations): A1111 1.10 has no category for extensions, and an option without
one is listed under "Uncategorized"."""
DEFAULTABLE = [arg for arg in ARGS if arg.name not in ("enabled", "subjects")]


def setting_key(arg: Arg) -> str:
    return f"initno_default_{arg.name}"


def setting_defaults() -> dict:
    """The defaults chosen on the Settings page (the official values until changed)."""
    return {arg.name: getattr(shared.opts, setting_key(arg), arg.default) for arg in DEFAULTABLE}


PLACEHOLDERS = {
    "subjects": "cat, dog — empty: nouns chosen automatically",
    "refinement_schedule": "empty: the method's official schedule "
    f"({METHODS[INITNO_PLUS].name}: {format_refinements(OFFICIAL_REFINEMENTS[INITNO_PLUS])})",
}


def _component(arg: Arg) -> tuple[type, dict]:
    """An argument's gradio control and its arguments, the same in the section and on the Settings page."""
    if arg.kind is bool:
        return gr.Checkbox, {}
    if arg.choices is not None:
        return gr.Radio, {"choices": [(label, choice) for choice, label in arg.choices]}
    if arg.kind is str:
        return gr.Textbox, {"placeholder": PLACEHOLDERS.get(arg.name, ""), "lines": 1}
    if arg.step is not None:
        return gr.Slider, {"minimum": arg.minimum, "maximum": arg.maximum, "step": arg.step}
    return gr.Number, {"precision": 0 if arg.kind is int else None}


def register_settings() -> None:
    options = {
        "initno_checkpointing": shared.OptionInfo(
            "Automatic",
            "Memory: recompute transformer activations in the backward pass (gradient checkpointing)",
            gr.Radio,
            {"choices": list(CHECKPOINTING)},
        ).info("less memory for about one more forward per step; Automatic: when the GPU's free memory is short")
    }
    for arg in DEFAULTABLE:
        option = shared.OptionInfo(arg.default, f"{arg.label} (default)", *_component(arg))
        # The controls take these defaults when the UI is built: a UI reload applies a change.
        option = option.info(arg.help) if arg.help else option
        options[setting_key(arg)] = option.needs_reload_ui()
    for key, option in shared.options_section(SETTINGS_SECTION, options).items():
        shared.opts.add_option(key, option)


def _control(arg: Arg, value, elem_id: str, visible: bool = True):
    component, component_args = _component(arg)
    return component(label=arg.label, value=value, elem_id=elem_id, visible=visible, **component_args)


def accordion(tabname: str) -> tuple[list, list]:
    """The visible controls (in `ARGS` order) and their paste fields."""
    defaults = setting_defaults()
    prefix = f"initno_{tabname}"
    controls: dict[str, object] = {}
    method = defaults["method"]
    with InputAccordion(False, label="InitNO", elem_id=prefix) as enabled:
        controls["enabled"] = enabled
        controls["subjects"] = _control(BY_NAME["subjects"], "", f"{prefix}_subjects")
        gr.HTML(elem_id=f"{prefix}_tokens", elem_classes=["initno-tokens"])
        controls["method"] = _control(BY_NAME["method"], method, f"{prefix}_method")
        # Only the settings of the chosen method are shown (all of them still travel with each generation).
        with gr.Row(visible=method_of(method).selects_noise) as lookahead_settings:
            for name in LOOKAHEAD_ARGS:
                controls[name] = _control(BY_NAME[name], defaults[name], f"{prefix}_{name}")
        with gr.Column(visible=method_of(method).optimises_noise) as noise_settings:
            with gr.Row():
                for name in ("max_rounds", "steps_per_round", "fallback_steps"):
                    controls[name] = _control(BY_NAME[name], defaults[name], f"{prefix}_{name}")
            controls["thresholds"] = _control(BY_NAME["thresholds"], defaults["thresholds"], f"{prefix}_thresholds")
            # The settings' thresholds apply only when the official ones are chosen.
            with gr.Row(visible=defaults["thresholds"] == OFFICIAL) as official_thresholds:
                for name in THRESHOLD_PARAMS:
                    controls[name] = _control(BY_NAME[name], defaults[name], f"{prefix}_{name}")
        with gr.Row(visible=method_of(method).guides_sampling) as guidance_settings:
            for name in ("guided_fraction", "step_scale", "max_refinement"):
                controls[name] = _control(BY_NAME[name], defaults[name], f"{prefix}_{name}")
        controls["diagnostics"] = _control(BY_NAME["diagnostics"], defaults["diagnostics"], f"{prefix}_diagnostics")
        with gr.Accordion("Advanced", open=False):
            for arg in ARGS:
                if arg.advanced:
                    controls[arg.name] = _control(arg, defaults[arg.name], f"{prefix}_{arg.name}")
    controls["method"].change(
        settings_shown,
        inputs=[controls["method"]],
        outputs=[lookahead_settings, noise_settings, guidance_settings],
        show_progress=False,
    )
    controls["thresholds"].change(
        official_thresholds_shown, inputs=[controls["thresholds"]], outputs=[official_thresholds], show_progress=False
    )
    ordered = [controls[arg.name] for arg in ARGS]
    return ordered, paste_fields(ordered)


def settings_shown(method: str) -> tuple[dict, dict, dict]:
    """Visibility of lookahead's, the noise optimisation's and the sampling guidance's settings for a method."""
    chosen = method_of(BY_NAME["method"].convert(method))
    shown = (chosen.selects_noise, chosen.optimises_noise, chosen.guides_sampling)
    return tuple(gr.update(visible=visible) for visible in shown)


def official_thresholds_shown(thresholds: str) -> dict:
    """Visibility of the Cross-/Self-attention threshold settings: they apply to the official thresholds only."""
    return gr.update(visible=BY_NAME["thresholds"].convert(thresholds) == OFFICIAL)


def hidden(tabname: str) -> list:
    """The same arguments as hidden controls, for the Script-dropdown entry: they carry `script_args` in
    the API; in the UI that entry uses the accordion's values."""
    defaults = setting_defaults()
    gr.Markdown("InitNO runs with the settings of the **InitNO** section above (it is switched on for you).")
    values = {"enabled": True, "subjects": "", **defaults}
    return [_control(arg, values[arg.name], f"initno_dropdown_{tabname}_{arg.name}", visible=False) for arg in ARGS]


def paste_fields(controls: list) -> list:
    """(control, infotext key or function) pairs: pasting an infotext without InitNO switches it off."""
    fields = []
    for arg, control in zip(ARGS, controls):
        if arg.name == "enabled":
            fields.append((control, lambda params: "InitNO" in params))
        elif arg.name == "subjects":
            fields.append((control, _subjects_of_the_pasted_prompt))
        elif arg.name in ("diagnostics", "method", *GUIDANCE_ARGS, *LOOKAHEAD_ARGS):
            fields.append((control, _when_initno(arg)))
        elif arg.name == "thresholds":
            fields.append((control, _thresholds_of_the_pasted_method))
        else:
            fields.append((control, arg.infotext))
    return fields


def _subjects_of_the_pasted_prompt(params) -> str:
    """Subjects belong to their prompt: the pasted prompt brings its own, or none (automatic), whether or
    not the infotext has InitNO; old subjects left behind would not be in the new prompt."""
    return params.get(BY_NAME["subjects"].infotext, "")


def _thresholds_of_the_pasted_method(params):
    """The thresholds are written for the noise optimisation; its infotexts without them predate calibration,
    when the official ones were the only ones. For the other methods they do not apply: the default."""
    if "InitNO" not in params:
        return None
    arg = BY_NAME["thresholds"]
    if arg.infotext in params:
        return arg.convert(params[arg.infotext])
    method = _when_initno(BY_NAME["method"])(params)
    return BEFORE_CALIBRATION if method_of(method).optimises_noise else arg.default


def _when_initno(arg: Arg):
    """Keys left out of the infotext when at their default or not used: restore the default if InitNO is
    there. An infotext without a method predates lookahead, when its absence meant InitNO."""
    absent = BEFORE_LOOKAHEAD if arg.name == "method" else arg.default

    def read(params):
        if "InitNO" not in params:
            return None
        return arg.convert(params[arg.infotext]) if arg.infotext in params else absent

    return read
