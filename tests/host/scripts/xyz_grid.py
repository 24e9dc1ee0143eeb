"""Mirrors scripts/xyz_grid.py of A1111 v1.10.1: `AxisOption`, the module-level `axis_options` that
extensions append to in `on_before_ui`, and how one grid cell is made (a shallow copy of `p`, each axis'
`apply(pc, value, values)`, then `process_images(pc)`)."""

from copy import copy

from modules import processing, scripts


def format_value_add_label(p, opt, x):
    if type(x) == float:  # noqa: E721 - as the host
        x = round(x, 8)
    return f"{opt.label}: {x}"


def boolean_choice(reverse: bool = False):
    def choice():
        return ["False", "True"] if reverse else ["True", "False"]

    return choice


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


class AxisOption:
    def __init__(
        self,
        label,
        type,
        apply,
        format_value=format_value_add_label,
        confirm=None,
        cost=0.0,
        choices=None,
        prepare=None,
    ):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost = format_value, confirm, cost
        self.prepare, self.choices = prepare, choices


class AxisOptionTxt2Img(AxisOption):
    is_img2img = False


axis_options = [
    AxisOption("Nothing", str, lambda p, x, xs: None),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
]


def make_cell(p, axes):
    """One cell: `axes` is [(AxisOption, value as typed in the UI, all values of that axis)]."""
    pc = copy(p)
    pc.styles = pc.styles[:]
    for option, value, values in axes:
        typed = [option.type(v) for v in values]
        option.apply(pc, option.type(value), typed)
    return processing.process_images(pc)


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        return []
