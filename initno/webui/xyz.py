"""X/Y/Z plot axes ("[InitNO] …") for the arguments marked `xyz` in `args.ARGS`.

Registered in `on_before_ui`, before the X/Y/Z script builds its UI; each axis stores its value on the
cell's `p` (`p._initno_xyz`, a new dict per cell, since cells are shallow copies), and the InitNO script
applies those overrides over its controls' values.
"""

from __future__ import annotations

from functools import partial

from modules import scripts

from .args import ARGS, Arg

PREFIX = "[InitNO]"
OVERRIDES = "_initno_xyz"


def overrides(p) -> dict:
    return getattr(p, OVERRIDES, {})


def _apply(p, value, values, *, arg: Arg) -> None:
    setattr(p, OVERRIDES, {**overrides(p), arg.name: arg.convert(value)})


def _confirm(p, values, *, arg: Arg) -> None:
    for value in values:
        arg.convert(value)  # raises, naming the argument, before any cell runs


def add_axes() -> None:
    module = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if module is None or any(option.label.startswith(PREFIX) for option in module.axis_options):
        return
    axis_option = getattr(module, "AxisOptionTxt2Img", module.AxisOption)  # InitNO is txt2img only
    for arg in ARGS:
        if not arg.xyz:
            continue
        module.axis_options.append(
            axis_option(
                f"{PREFIX} {arg.label}",
                str if arg.kind in (bool, str) else arg.kind,
                partial(_apply, arg=arg),
                confirm=partial(_confirm, arg=arg),
                choices=_choices(module, arg),
            )
        )


def _choices(module, arg: Arg):
    """What the axis offers in its dropdown: true/false for switches, the values of a choice."""
    if arg.kind is bool:
        return module.boolean_choice(reverse=True)
    if arg.choices is not None:
        return lambda: [value for value, _label in arg.choices]
    return None
