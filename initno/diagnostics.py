"""One diagnostic image per optimised image: "does InitNO even do anything?"

From an `ImageResult` it draws, in one picture:

- per subject, its smoothed cross-attention map before and after the optimisation (viridis, one shared
  0..1 scale, so a brighter peak is a better response: cross = 1 - peak), the peak ringed;
- the subjects' self-attention regions (the smoothed self-attention row at each subject's peak, each
  scaled to its own maximum) blended additively in Okabe–Ito colours on black, before and after: where
  two regions overlap the colours add up towards white, and pixels where two or more subjects are above
  half their maximum are hatched;
- the score trace, one point per UNet pass in order (cross, self = conflict, joint), with the two
  validity thresholds as horizontal lines, the round boundaries and the fallback run marked;
- a title line: valid or not, rounds and passes used, initial -> final scores;
- when attention guidance ran during sampling (InitNO+, Attend-and-Excite), its trace: the scores at the
  start of each guided sampling step, the refinement steps marked with their updates. An image that was
  only guided (Attend-and-Excite: no noise optimisation) shows that trace alone.

Drawn with matplotlib's object-oriented API on an Agg canvas (`Figure` + `FigureCanvasAgg`), never
`pyplot`: the WebUI is multi-threaded and pyplot keeps global state. Host-independent: torch, numpy,
matplotlib and PIL only.

A result in which nothing was scored (cancelled before the first UNet pass: no maps) has no
diagnostic: `render_diagnostics` returns None and the caller shows nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from .guidance import GuidanceTrace
from .methods import method_of
from .optimize import AttentionSnapshot, ImageResult, StepRecord
from .params import InitNOParams
from .scores import CONFLICT_GATE, Scores

OKABE_ITO = {
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "black": "#000000",
}
"""The Okabe–Ito palette, distinguishable with the common colour-vision deficiencies."""

SUBJECT_COLOURS = [
    OKABE_ITO[name] for name in ("orange", "sky blue", "reddish purple", "bluish green", "yellow", "vermillion", "blue")
]
"""Subject colours in the self-attention overlay, on black (so `black` is not among them); cycled."""

SERIES = {
    # name: (colour, line style, marker, legend label)
    "cross": (OKABE_ITO["blue"], "-", "o", "cross (response:\n1 − weakest peak)"),
    "self": (OKABE_ITO["vermillion"], "--", "s", f"self (conflict;\n0 while cross > {CONFLICT_GATE:g})"),
    "joint": (OKABE_ITO["black"], ":", "^", "joint (minimised)"),
}
"""The trace's series: told apart by line style and marker as well as colour."""

HEATMAP = "viridis"
OVERLAP_LEVEL = 0.5
"""A pixel is hatched as overlap where two or more subjects' regions are at least this share of their maximum."""

STATES = ("before", "after")
DPI = 100
WIDTH_IN = 12.8
"""Figure width in inches at `DPI`: 1280 px."""


class Panel(NamedTuple):
    """Where one panel of the image lies: `kind` is "cross" (one subject's cross-attention map), "self"
    (the self-attention overlay of all subjects) or "trace"; `subject` the subject's index for "cross"
    (else None); `state` "before" / "after" (None for "trace"); `box` = (left, top, right, bottom) in
    image pixels, right and bottom exclusive: the drawing area of the axes, which for a map is exactly
    the map (cell (r, c) of an (h, w) map covers x from left + c·(right − left)/w, y from top + r·(bottom −
    top)/h)."""

    kind: str
    subject: int | None
    state: str | None
    box: tuple[int, int, int, int]


@dataclass
class Diagnostics:
    """The image and what it was drawn from: the title line, the panels' boxes, the plotted trace values
    (`trace_points[name]` for "cross", "self" and "joint": one value per UNet pass, in order) and the runs
    marked on the trace (`trace_runs`: (name, first pass, end pass) with name "round N" or "fallback",
    passes counted from 0, end exclusive)."""

    image: Image.Image
    title: str
    panels: list[Panel]
    trace_points: dict[str, list[float]]
    trace_runs: list[tuple[str, int, int]]
    guidance_points: dict[str, list[float]] | None = None
    """The guidance trace as plotted: "step" (sampling step indices), "cross" and, for InitNO+, "self"
    (the scores at the start of each guided step); None when no guidance ran."""

    def panel(self, kind: str, subject: int | None = None, state: str | None = None) -> Panel:
        for panel in self.panels:
            if (panel.kind, panel.subject, panel.state) == (kind, subject, state):
                return panel
        raise KeyError((kind, subject, state))


def _series_line(ax, x, y, colour: str, style: str, marker: str, label: str):
    """One score series, drawn alike in the optimisation's trace and the guidance's."""
    (line,) = ax.plot(
        x, y, color=colour, linestyle=style, marker=marker, markersize=4.5, linewidth=1.5, label=label, zorder=3
    )
    return line


def _thresholds(thresholds: InitNOParams | Sequence[float] | None) -> tuple[float, float]:
    if thresholds is None:
        thresholds = InitNOParams()
    if isinstance(thresholds, InitNOParams):
        return float(thresholds.cross_threshold), float(thresholds.conflict_threshold)
    cross, conflict = thresholds
    return float(cross), float(conflict)


def _numpy(tensor) -> np.ndarray:
    return np.asarray(tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else tensor, np.float32)


def _labels(labels: Sequence[str], count: int, limit: int = 22) -> list[str]:
    names = [str(label) for label in list(labels)[:count]]
    names += [f"subject {i + 1}" for i in range(len(names), count)]
    return [name if len(name) <= limit else name[: limit - 1] + "…" for name in names]


def _subject_count(result: ImageResult) -> int:
    for snapshot in (result.maps_after, result.maps_before):
        if snapshot is not None:
            return int(snapshot.cross.shape[0])
    return 0


def _map_shape(result: ImageResult) -> tuple[int, int]:
    snapshot = result.maps_after if result.maps_after is not None else result.maps_before
    return int(snapshot.cross.shape[-2]), int(snapshot.cross.shape[-1])


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _title(result: ImageResult, cross_threshold: float, conflict_threshold: float) -> tuple[str, str]:
    verdict = "VALID" if result.valid else "NOT VALID"
    runs = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    if result.fallback:
        runs += " + fallback run"
    line = f"InitNO: {verdict} · {runs}, {result.steps} UNet pass{'es' if result.steps != 1 else ''}"
    if result.cancelled:
        line += " · cancelled"
    if result.initial is not None and result.final is not None:
        a, b = result.initial, result.final
        line += (
            f" · cross {_fmt(a.cross)} → {_fmt(b.cross)}, self {_fmt(a.conflict)} → {_fmt(b.conflict)},"
            f" joint {_fmt(a.joint)} → {_fmt(b.joint)}"
        )
    detail = f"valid when cross < {cross_threshold:g} and self < {conflict_threshold:g}; KL {result.kl:.1e}"
    return line, detail


class _Layout:
    """Positions in inches, converted to figure fractions (matplotlib's origin is bottom-left)."""

    def __init__(self, count: int, shape: tuple[int, int], *, optimised: bool = True, guided: bool = False):
        self.width = WIDTH_IN
        self.left = 0.75  # row labels
        self.gap = 0.3
        self.colourbar = 0.62  # bar and its tick labels
        self.legend = 2.35  # right-hand legend column
        self.right = 0.15
        self.overlay_column = count
        columns = count + 1
        free = self.width - self.left - self.colourbar - 0.35 - self.legend - self.right - columns * self.gap
        self.cell = min(2.3, free / columns)
        h, w = shape
        # Maps keep their aspect inside a cell-wide box; very tall maps are capped at 1.5 cells.
        self.map_height = self.cell * min(1.5, h / w)
        self.map_width = self.map_height * w / h
        self.title = 0.75
        self.panel_title = 0.48
        self.row = self.panel_title + self.map_height + 0.12
        self.trace_gap = 0.35
        self.trace = 2.7
        self.bottom = 0.55
        # The subjects' legend (title, one line per subject, overlap, a two-line peak entry) beside the maps.
        legend_height = 0.3 + 0.19 * (count + 1) + 0.35
        self.maps = max(2 * self.row, self.panel_title + legend_height) if optimised else 0.0
        self.traces = (self.trace_gap + self.trace) * (int(optimised) + int(guided))
        self.height = self.title + self.maps + self.traces + self.bottom

    def rect(self, x: float, top: float, width: float, height: float) -> list[float]:
        """[left, bottom, width, height] in figure fractions for a box at x, `top` inches from the top."""
        return [x / self.width, 1 - (top + height) / self.height, width / self.width, height / self.height]

    def map_rect(self, column: int, row: int) -> list[float]:
        x = self.left + column * (self.cell + self.gap) + (self.cell - self.map_width) / 2
        if column == self.overlay_column:
            x += self.colourbar + 0.35
        top = self.title + row * self.row + self.panel_title
        return self.rect(x, top, self.map_width, self.map_height)


def _show_map(ax, values: np.ndarray, **kwargs):
    h, w = values.shape[:2]
    image = ax.imshow(values, interpolation="nearest", origin="upper", extent=(-0.5, w - 0.5, h - 0.5, -0.5), **kwargs)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return image


@dataclass(frozen=True)
class _Style:
    """Sizes that depend on the panel size: title font (points), how many characters fit on one line of
    a panel's title, and the peak marker's diameter (points), which fits inside one map cell and leaves
    its corners visible."""

    font: float
    chars: int
    marker: float

    @classmethod
    def of(cls, layout: _Layout, shape: tuple[int, int]) -> _Style:
        font = 9.5 if layout.cell >= 1.6 else 8.0 if layout.cell >= 1.0 else 7.0
        # A character of DejaVu Sans is about 0.6 font sizes wide on average.
        chars = max(6, int((layout.cell + layout.gap * 0.8) * 72 / (0.6 * font)))
        cell_points = layout.map_width / shape[1] * 72
        return cls(font, chars, float(np.clip(cell_points * 0.55, 3.0, 11.0)))

    def title(self, *candidates: str) -> str:
        """The first candidate whose lines all fit, else the last."""
        for text in candidates:
            if max(len(line) for line in text.split("\n")) <= self.chars:
                return text
        return candidates[-1]


def _not_scored(ax, text="not scored"):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")


def _draw_cross(ax, snapshot: AttentionSnapshot | None, index: int, label: str, state: str, style: _Style):
    if snapshot is None:
        ax.set_title(f"{label}\n{state}", fontsize=style.font, linespacing=1.25)
        _not_scored(ax)
        return None
    values = _numpy(snapshot.cross[index])
    image = _show_map(ax, values, cmap=HEATMAP, vmin=0.0, vmax=1.0)
    row, col = divmod(int(snapshot.peaks[index]), values.shape[1])
    ax.plot(
        [col],
        [row],
        marker="o",
        markersize=style.marker,
        markerfacecolor="none",
        markeredgecolor="white",
        markeredgewidth=1.6,
        linestyle="none",
    )
    peak = values[row, col]
    heading = style.title(
        f"{label} · {state}\npeak {peak:.2f} (cross {1 - peak:.2f})",
        f"{label} · {state}\npeak {peak:.2f}",
        f"{label}\n{state} · peak {peak:.2f}",
        f"{label}\n{state} {peak:.2f}",
    )
    ax.set_title(heading, fontsize=style.font, linespacing=1.25)
    return image


def overlay_colours(self_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB (h, w, 3) of the self-attention regions, each scaled to its maximum and drawn in its subject's
    colour, added on black (overlap goes towards white); and the overlap mask (two or more subjects at
    `OVERLAP_LEVEL` of their maximum or more)."""
    count = self_maps.shape[0]
    peak = self_maps.reshape(count, -1).max(axis=1).reshape(count, 1, 1)
    regions = np.where(peak > 0, self_maps / np.where(peak > 0, peak, 1), 0.0).clip(0, 1)
    colours = np.array([_rgb(SUBJECT_COLOURS[i % len(SUBJECT_COLOURS)]) for i in range(count)])
    rgb = np.einsum("nhw,nc->hwc", regions, colours).clip(0, 1)
    overlap = (regions >= OVERLAP_LEVEL).sum(axis=0) >= 2
    return rgb, overlap


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])


def _draw_overlay(ax, snapshot: AttentionSnapshot | None, state: str, scores: Scores | None, style: _Style):
    heading = f"self-attention · {state}"
    if snapshot is None:
        ax.set_title(style.title(heading, f"self-attn.\n{state}"), fontsize=style.font, linespacing=1.25)
        _not_scored(ax)
        return
    self_maps = _numpy(snapshot.self_attention)
    rgb, overlap = overlay_colours(self_maps)
    _show_map(ax, rgb)
    rows, cols = np.nonzero(overlap)
    if len(rows):
        hatched = PatchCollection(
            [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(rows, cols)],
            facecolor="none",
            edgecolor="white",
            linewidth=0,
            hatch="////",
        )
        ax.add_collection(hatched)
    width = self_maps.shape[-1]
    for i, peak in enumerate(snapshot.peaks.tolist()):
        row, col = divmod(int(peak), width)
        # A ring in the subject's colour on a wider black one, visible on any background.
        for edge, edge_width in (("black", 3.2), (SUBJECT_COLOURS[i % len(SUBJECT_COLOURS)], 1.6)):
            ax.plot(
                [col],
                [row],
                marker="o",
                markersize=style.marker * 0.8,
                markerfacecolor="none",
                linestyle="none",
                markeredgecolor=edge,
                markeredgewidth=edge_width,
            )
    if self_maps.shape[0] < 2:
        notes = ["one subject: no overlap", "one subject", ""]
    elif scores is None:
        notes = [""]
    else:
        value = f"self {scores.conflict:.3f}"
        notes = [f"{value} (gated: cross > {CONFLICT_GATE:g})", value] if scores.cross > CONFLICT_GATE else [value]
    title = style.title(
        *(f"{heading}\n{note}" for note in notes),
        *(f"self-attention\n{state} · {note}" for note in notes),
        f"self-attn.\n{state}",
    )
    ax.set_title(title.rstrip(), fontsize=style.font, linespacing=1.25)


def trace_runs(trace: Sequence[StepRecord]) -> list[tuple[str, int, int]]:
    """The runs of consecutive passes of one round, in order: (name, first index, end index), where name
    is "round N" (counted from 1) or "fallback"."""
    runs = []
    start = 0
    for i in range(1, len(trace) + 1):
        if i == len(trace) or (trace[i].round, trace[i].fallback) != (trace[start].round, trace[start].fallback):
            first = trace[start]
            runs.append(("fallback" if first.fallback else f"round {first.round + 1}", start, i))
            start = i
    return runs


def _side_legend(figure, handles, title: str, anchor: tuple[float, float]) -> None:
    """A legend beside its panel, its top-left corner at `anchor` (figure fraction)."""
    figure.legend(
        handles=handles,
        loc="upper left",
        fontsize=8.5,
        frameon=False,
        title=title,
        title_fontsize=9,
        bbox_to_anchor=anchor,
    )


def _draw_trace(ax, trace: Sequence[StepRecord], cross_threshold: float, conflict_threshold: float):
    points: dict[str, list[float]] = {}
    handles = []
    if not trace:
        _not_scored(ax, "no UNet pass recorded")
        return {name: [] for name in SERIES}, handles
    x = np.arange(1, len(trace) + 1)
    values = {
        "cross": [r.scores.cross for r in trace],
        "self": [r.scores.conflict for r in trace],
        "joint": [r.scores.joint for r in trace],
    }
    for name, segment_start, segment_end in trace_runs(trace):
        if name == "fallback":
            ax.axvspan(
                segment_start + 0.5,
                segment_end + 0.5,
                facecolor="0.93",
                edgecolor="0.8",
                hatch="//",
                linewidth=0,
                zorder=0,
            )
        if segment_start > 0:
            ax.axvline(segment_start + 0.5, color="0.45", linewidth=1.0, linestyle=(0, (1, 2)), zorder=1)
        ax.text(
            (segment_start + segment_end + 1) / 2,
            1.01,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8.5,
            color="0.25",
            clip_on=False,
        )
    for name, (colour, style, marker, label) in SERIES.items():
        line = _series_line(ax, x, values[name], colour, style, marker, label)
        points[name] = [float(v) for v in line.get_ydata()]
        handles.append(line)
    for threshold, name, text in (
        (cross_threshold, "cross", "cross threshold"),
        (conflict_threshold, "self", "self threshold"),
    ):
        colour = SERIES[name][0]
        handles.append(
            ax.axhline(
                threshold,
                color=colour,
                linewidth=1.0,
                linestyle=(0, (6, 3)),
                alpha=0.8,
                label=f"{text} {threshold:g}",
                zorder=2,
            )
        )
    handles.append(Line2D([], [], color="0.45", linewidth=1.0, linestyle=(0, (1, 2)), label="round boundary"))
    if any(r.fallback for r in trace):
        handles.append(Patch(facecolor="0.93", edgecolor="0.8", hatch="//", label="fallback run"))
    ax.set_xlim(0.5, len(trace) + 0.5)
    top = max(max(values["joint"]), max(values["cross"]), cross_threshold, conflict_threshold)
    ax.set_ylim(0, top * 1.08 + 0.02)
    ax.set_xlabel("UNet pass (one point per optimisation step, in order)", fontsize=9)
    ax.set_ylabel("score", fontsize=9)
    ax.tick_params(labelsize=8.5)
    if len(trace) <= 30:
        ax.set_xticks(x)
    ax.grid(axis="y", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    return points, handles


def _guidance_title(trace: GuidanceTrace) -> str:
    return f"Sampling guidance: {trace.summary()}"


GUIDANCE_SERIES = {
    "cross": (OKABE_ITO["blue"], "-", "o", "cross at the step's start"),
    "self": (OKABE_ITO["vermillion"], "--", "s", "self at the step's start\n(not gated)"),
}


def _draw_guidance(ax, trace: GuidanceTrace) -> tuple[dict[str, list[float]], list]:
    """The guidance trace: per guided sampling step its scores at the start; refinement steps shaded and
    labelled with their updates and the cross score they reached."""
    steps = [record.step for record in trace.steps]
    points: dict[str, list[float]] = {"step": [float(s) for s in steps]}
    handles = []
    series = ["cross", "self"] if method_of(trace.method).augmented else ["cross"]  # the others read cross only
    for name in series:
        colour, style, marker, label = GUIDANCE_SERIES[name]
        key = "cross" if name == "cross" else "conflict"
        line = _series_line(ax, steps, [r.before[key] for r in trace.steps], colour, style, marker, label)
        points[name] = [float(v) for v in line.get_ydata()]
        handles.append(line)
    for record in trace.steps:
        if not record.refinement_updates:
            continue
        ax.axvspan(record.step - 0.4, record.step + 0.4, facecolor="0.9", edgecolor="0.75", hatch="..", zorder=0)
        ax.annotate(
            f"{record.refinement_updates} upd.\n→ {record.after['cross']:.2f}",
            (record.step, 1.01),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.25",
            annotation_clip=False,
        )
    if any(r.refinement_updates for r in trace.steps):
        handles.append(Patch(facecolor="0.9", edgecolor="0.75", hatch="..", label="iterative refinement"))
    ax.set_xlim(min(steps) - 0.6, max(steps) + 0.6)
    top = max(max(points[name]) for name in series)
    ax.set_ylim(0, max(top, 0.3) * 1.1 + 0.02)
    ax.set_xlabel("sampling step (the latent is moved at the start of each guided step)", fontsize=9)
    ax.set_ylabel("score", fontsize=9)
    ax.tick_params(labelsize=8.5)
    ax.grid(axis="y", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    return points, handles


def render_diagnostics(
    result: ImageResult | None,
    labels: Sequence[str],
    thresholds: InitNOParams | Sequence[float] | None = None,
    guidance: GuidanceTrace | None = None,
) -> Diagnostics | None:
    """Draws the diagnostic image of one image: the noise optimisation's maps and trace (`result`), and
    the sampling guidance's trace (`guidance`), either of which may be absent.

    `labels` names the subjects in order (e.g. `["cat", "red apple"]`; missing ones become "subject N");
    `thresholds` is the `InitNOParams` the run used or the pair (cross_threshold, conflict_threshold)
    (default: the official 0.2 / 0.3). Returns None when nothing was scored (no attention maps: the run was
    cancelled before its first UNet pass, and no guided step), so there is nothing to draw.
    """
    optimised = result is not None and _subject_count(result) > 0
    guided = guidance is not None and bool(guidance.steps)
    if not optimised and not guided:
        return None
    cross_threshold, conflict_threshold = _thresholds(thresholds)
    count = _subject_count(result) if optimised else max(1, len(labels))
    shape = _map_shape(result) if optimised else (1, 1)
    layout = _Layout(count, shape, optimised=optimised, guided=guided)
    style = _Style.of(layout, shape)
    names = _labels(labels, count)
    short_names = _labels(labels, count, style.chars)

    figure = Figure(figsize=(layout.width, layout.height), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    if optimised:
        line, detail = _title(result, cross_threshold, conflict_threshold)
        if guided:
            detail += " · " + _guidance_title(guidance)
    else:
        line, detail = _guidance_title(guidance), f"subjects: {', '.join(names)}"
    figure.text(
        0.12 / layout.width, 1 - 0.12 / layout.height, line, ha="left", va="top", fontsize=11.5, fontweight="bold"
    )
    figure.text(0.12 / layout.width, 1 - 0.42 / layout.height, detail, ha="left", va="top", fontsize=9, color="0.3")

    axes: list[tuple[str, int | None, str | None, object]] = []
    if optimised:
        _draw_maps(figure, layout, style, result, names, short_names, axes)
    trace_top = layout.title + layout.maps + layout.trace_gap
    trace_width = layout.width - layout.left - layout.legend - layout.right + 0.2
    legend_x = (layout.left + trace_width + 0.15) / layout.width
    points, runs, guidance_points = {name: [] for name in SERIES}, [], None
    if optimised:
        ax = figure.add_axes(layout.rect(layout.left, trace_top, trace_width, layout.trace))
        points, handles = _draw_trace(ax, result.trace, cross_threshold, conflict_threshold)
        if handles:
            _side_legend(figure, handles, "scores", (legend_x, 1 - trace_top / layout.height))
        axes.append(("trace", None, None, ax))
        runs = trace_runs(result.trace)
        trace_top += layout.trace + layout.trace_gap
    if guided:
        ax = figure.add_axes(layout.rect(layout.left, trace_top, trace_width, layout.trace))
        guidance_points, handles = _draw_guidance(ax, guidance)
        _side_legend(figure, handles, "sampling guidance", (legend_x, 1 - trace_top / layout.height))
        axes.append(("guidance", None, None, ax))

    canvas.draw()
    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1).convert("RGB")
    panels = [Panel(kind, subject, state, _box(ax, height)) for kind, subject, state, ax in axes]
    return Diagnostics(image, line, panels, points, runs, guidance_points)


def _draw_maps(figure, layout: _Layout, style: _Style, result: ImageResult, names, short_names, axes) -> None:
    """The cross-attention maps and self-attention overlays before and after, their colour bar and legend."""
    count = len(names)
    snapshots = {"before": result.maps_before, "after": result.maps_after}
    scores = {"before": result.initial, "after": result.final}
    heat = None
    for row, state in enumerate(STATES):
        top = layout.title + row * layout.row + layout.panel_title + layout.map_height / 2
        figure.text(
            0.1 / layout.width,
            1 - top / layout.height,
            state,
            rotation=90,
            ha="left",
            va="center",
            fontsize=11,
            fontweight="bold",
            color="0.25",
        )
        for i in range(count):
            ax = figure.add_axes(layout.map_rect(i, row))
            heat = _draw_cross(ax, snapshots[state], i, short_names[i], state, style) or heat
            axes.append(("cross", i, state, ax))
        ax = figure.add_axes(layout.map_rect(count, row))
        _draw_overlay(ax, snapshots[state], state, scores[state], style)
        axes.append(("self", None, state, ax))

    maps_right = layout.left + count * (layout.cell + layout.gap)
    maps_top = layout.title + layout.panel_title
    maps_height = layout.row + layout.map_height
    if heat is not None:
        bar = figure.add_axes(layout.rect(maps_right - 0.1, maps_top, 0.13, maps_height))
        colourbar = figure.colorbar(heat, cax=bar)
        colourbar.set_label("cross-attention share" if layout.cell >= 1.4 else "cross-attention", fontsize=8.5)
        colourbar.ax.tick_params(labelsize=8)

    legend_x = (maps_right + layout.colourbar + 0.35 + layout.cell + 0.2) / layout.width
    subject_handles = [
        Patch(facecolor=SUBJECT_COLOURS[i % len(SUBJECT_COLOURS)], edgecolor="none", label=names[i])
        for i in range(count)
    ]
    if count >= 2:
        subject_handles.append(
            Patch(
                facecolor="black",
                edgecolor="white",
                hatch="////",
                label=f"overlap (2+ subjects ≥ {OVERLAP_LEVEL:g}×max)",
            )
        )
    subject_handles.append(
        Line2D(
            [],
            [],
            marker="o",
            markerfacecolor="none",
            markeredgecolor="0.3",
            linestyle="none",
            label="subject's peak\n(cross-attention)",
        )
    )
    _side_legend(figure, subject_handles, "self-attention regions", (legend_x, 1 - maps_top / layout.height))


def _box(ax, image_height: int) -> tuple[int, int, int, int]:
    extent = ax.get_window_extent()
    return (round(extent.x0), round(image_height - extent.y1), round(extent.x1), round(image_height - extent.y0))


def diagnostic_image(
    result: ImageResult | None,
    labels: Sequence[str],
    thresholds: InitNOParams | Sequence[float] | None = None,
    guidance: GuidanceTrace | None = None,
) -> Image.Image | None:
    """The image of `render_diagnostics` alone (None when nothing was scored)."""
    diagnostics = render_diagnostics(result, labels, thresholds, guidance)
    return diagnostics.image if diagnostics is not None else None
