"""The diagnostic image: what it shows is read back from its pixels."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from matplotlib import colormaps
from PIL import Image

from initno.diagnostics import (
    OKABE_ITO,
    SUBJECT_COLOURS,
    Diagnostics,
    diagnostic_image,
    overlay_colours,
    render_diagnostics,
)
from initno.guidance import GuidanceSettings, GuidanceTrace, ImageGuidance, Refinement
from initno.optimize import AttentionSnapshot, Denoiser, ImageRequest, ImageResult, StepRecord, optimize_noise
from initno.params import InitNOParams
from initno.scores import Scores
from initno.tiny import apply_unet

PARAMS = InitNOParams(max_rounds=2, steps_per_round=3, fallback_steps=2, cross_threshold=0.0)
VIRIDIS = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255


@pytest.fixture(scope="module")
def real_result(tiny_unet, cat_and_dog) -> ImageResult:
    noise = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(4))
    request = ImageRequest(noise=noise, seed=4, cond=cat_and_dog, subjects=[[2], [5]])
    denoiser = Denoiser(unet=tiny_unet, apply=apply_unet(tiny_unet), timestep=981)
    (result,) = optimize_noise(denoiser, [request], PARAMS)
    return result


@pytest.fixture(scope="module")
def real(real_result) -> Diagnostics:
    return render_diagnostics(real_result, ["cat", "dog"], PARAMS)


def _pixels(diagnostics: Diagnostics) -> np.ndarray:
    return np.asarray(diagnostics.image, dtype=np.int32)


def _cell_samples(pixels: np.ndarray, box, shape, offset=0.2) -> np.ndarray:
    """The colour of each map cell (h, w, 3), read near its top-left corner (away from the peak ring)."""
    left, top, right, bottom = box
    h, w = shape
    ys = [int(top + (r + offset) * (bottom - top) / h) for r in range(h)]
    xs = [int(left + (c + offset) * (right - left) / w) for c in range(w)]
    return pixels[np.ix_(ys, xs)]


def _viridis_values(colours: np.ndarray) -> np.ndarray:
    """Inverts viridis: the value in 0..1 of each RGB colour (nearest colour of the 256-entry map)."""
    distances = ((colours[..., None, :] - VIRIDIS) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1) / 255


def _cell_of(box, shape, x: int, y: int) -> tuple[int, int]:
    left, top, right, bottom = box
    h, w = shape
    return int((y - top) * h / (bottom - top)), int((x - left) * w / (right - left))


def _brightest(pixels: np.ndarray, box) -> tuple[int, int]:
    left, top, right, bottom = box
    brightness = pixels[top:bottom, left:right].sum(axis=-1)
    y, x = np.unravel_index(brightness.argmax(), brightness.shape)
    return left + int(x), top + int(y)


def _scores(cross: float, conflict: float) -> Scores:
    return Scores(cross, conflict, 0.0, cross + conflict)


def _peaked_maps(shape, peaks, values, seed) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross maps (N, h, w) with background below 0.3 and a single peak of the given value at each
    (row, col); their flat peak indices."""
    h, w = shape
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(len(peaks), h, w, generator=generator) * 0.3
    for i, ((row, col), value) in enumerate(zip(peaks, values)):
        maps[i, row, col] = value
    return maps, torch.tensor([row * w + col for row, col in peaks])


def _hand_made(shape=(6, 9), before=((1, 2), (4, 7), (0, 0)), after=((5, 8), (2, 3), (3, 6)), trace=True):
    h, w = shape
    snapshots = []
    for seed, peaks in enumerate((before, after)):
        cross, flat = _peaked_maps(shape, peaks, [0.55 + 0.1 * i for i in range(len(peaks))], seed)
        self_maps = torch.zeros(len(peaks), h, w)
        for i, (_, col) in enumerate(peaks):  # each subject's region: a 3-wide column band around its peak
            self_maps[i, :, max(0, col - 1) : col + 2] = 1.0 / (3 * h)
        snapshots.append(AttentionSnapshot(cross, self_maps, flat))
    records = [
        StepRecord(0, 0, False, _scores(0.45, 0.0)),
        StepRecord(0, 1, False, _scores(0.35, 0.2)),
        StepRecord(1, 0, False, _scores(0.4, 0.3)),
        StepRecord(2, 0, True, _scores(0.3, 0.25)),
        StepRecord(2, 1, True, _scores(0.15, 0.1)),
    ]
    return ImageResult(
        latent=torch.zeros(4, 4 * h, 4 * w),
        valid=True,
        rounds=2,
        steps=len(records),
        fallback=True,
        cancelled=False,
        initial=records[0].scores,
        final=records[-1].scores,
        maps_before=snapshots[0],
        maps_after=snapshots[1],
        trace=records if trace else [],
        kl=5e-4,
    )


def test_one_panel_per_subject_and_state_plus_the_overlays_and_the_trace(real, real_result):
    assert real.image.mode == "RGB"
    width, height = real.image.size
    assert 1000 <= width <= 1400
    assert 500 <= height <= 1200
    keys = [(p.kind, p.subject, p.state) for p in real.panels]
    assert sorted(keys, key=str) == sorted(
        [("cross", i, s) for i in (0, 1) for s in ("before", "after")]
        + [("self", None, "before"), ("self", None, "after"), ("trace", None, None)],
        key=str,
    )
    boxes = [p.box for p in real.panels]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert right - left >= 100 and bottom - top >= 100
    for i, a in enumerate(boxes):  # no two panels overlap
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # Before is drawn above after, the overlay right of the subjects, the trace below everything.
    assert real.panel("cross", 0, "before").box[3] < real.panel("cross", 0, "after").box[1]
    assert real.panel("cross", 1, "after").box[2] < real.panel("self", None, "after").box[0]
    assert max(p.box[3] for p in real.panels if p.kind != "trace") < real.panel("trace").box[1]


def test_each_cross_panel_shows_its_recorded_map_with_the_peak_where_it_was_recorded(real, real_result):
    pixels = _pixels(real)
    for state, snapshot in (("before", real_result.maps_before), ("after", real_result.maps_after)):
        for i in range(2):
            recorded = snapshot.cross[i].numpy()
            box = real.panel("cross", i, state).box
            shown = _viridis_values(_cell_samples(pixels, box, recorded.shape))
            # The whole map, on the fixed 0..1 viridis scale (to the steps of the 256-colour map).
            np.testing.assert_allclose(shown, recorded, atol=0.01)
            peak = divmod(int(snapshot.peaks[i]), recorded.shape[1])
            assert _cell_of(box, recorded.shape, *_brightest(pixels, box)) == peak
    # The optimisation did change the maps, and the image shows it.
    before, after = real.panel("cross", 0, "before").box, real.panel("cross", 0, "after").box
    assert not np.array_equal(_cell_samples(pixels, before, (8, 8)), _cell_samples(pixels, after, (8, 8)))


def test_the_trace_has_one_point_per_step_in_order_with_rounds_and_fallback(real, real_result):
    trace = real_result.trace
    assert len(trace) == 3 + 3 + 2
    assert real.trace_points == {
        "cross": [r.scores.cross for r in trace],
        "self": [r.scores.conflict for r in trace],
        "joint": [r.scores.joint for r in trace],
    }
    assert real.trace_runs == [("round 1", 0, 3), ("round 2", 3, 6), ("fallback", 6, 8)]
    pixels = _pixels(real)
    left, top, right, bottom = real.panel("trace").box
    inside = pixels[top + 5 : bottom - 5, left + 3 : right - 3]
    # The cross series (Okabe–Ito blue) runs from the first pass to the last.
    blue = np.array([int(OKABE_ITO["blue"][k : k + 2], 16) for k in (1, 3, 5)])
    columns = np.nonzero((np.abs(inside - blue).sum(axis=-1) < 30).any(axis=0))[0]
    assert columns.min() < 0.1 * inside.shape[1] and columns.max() > 0.9 * inside.shape[1]
    # The fallback run (the last 2 of 8 passes) is shaded; the rounds are not.
    shaded = (np.abs(inside - 237).sum(axis=-1) < 6).mean(axis=0)
    width = inside.shape[1]
    assert shaded[int(0.85 * width) :].mean() > 0.3
    assert shaded[: int(0.7 * width)].mean() < 0.01
    assert "NOT VALID" in real.title and "2 rounds + fallback run, 8 UNet passes" in real.title
    assert f"cross {real_result.initial.cross:.3f} → {real_result.final.cross:.3f}" in real.title


def test_the_overlay_blends_each_subjects_region_in_its_colour_and_marks_the_overlap():
    result = _hand_made()
    diagnostics = render_diagnostics(result, ["cat", "red apple", "clock"], (0.2, 0.3))
    pixels = _pixels(diagnostics)
    for state, snapshot in (("before", result.maps_before), ("after", result.maps_after)):
        self_maps = snapshot.self_attention.numpy()
        expected, overlap = overlay_colours(self_maps)
        box = diagnostics.panel("self", None, state).box
        shown = _cell_samples(pixels, box, self_maps.shape[1:], offset=0.2)
        free = ~overlap
        assert free.any() and overlap.any()
        np.testing.assert_allclose(shown[free], expected[free] * 255, atol=3)
        # A cell of one subject only has exactly that subject's colour; an empty cell is black.
        columns = self_maps.sum(axis=(0, 1)) > 0
        assert (shown[:, ~columns] == 0).all()
        # Overlapping regions: colours added (brighter than either alone) and hatched in white.
        rows, cols = np.nonzero(overlap)
        left, top, right, bottom = box
        h, w = self_maps.shape[1:]
        for row, col in zip(rows, cols):
            cell = pixels[
                int(top + row * (bottom - top) / h) + 2 : int(top + (row + 1) * (bottom - top) / h) - 2,
                int(left + col * (right - left) / w) + 2 : int(left + (col + 1) * (right - left) / w) - 2,
            ]
            assert (cell.min(axis=-1) > 240).any()  # the hatch
    orange = np.array([int(SUBJECT_COLOURS[0][k : k + 2], 16) for k in (1, 3, 5)])
    # Subject 0's band before is columns 1..3, alone in column 1 (subject 2's band is columns 0..1).
    cell = _cell_samples(pixels, diagnostics.panel("self", None, "before").box, (6, 9), offset=0.2)[3, 2]
    np.testing.assert_allclose(cell, orange, atol=3)


def test_a_hand_made_result_shows_each_peak_where_it_was_put_on_a_non_square_map():
    result = _hand_made()
    diagnostics = render_diagnostics(result, ["cat", "red apple"], InitNOParams())  # one label missing
    pixels = _pixels(diagnostics)
    assert len([p for p in diagnostics.panels if p.kind == "cross"]) == 2 * 3
    for state, peaks in (("before", ((1, 2), (4, 7), (0, 0))), ("after", ((5, 8), (2, 3), (3, 6)))):
        snapshot = result.maps_before if state == "before" else result.maps_after
        for i, peak in enumerate(peaks):
            box = diagnostics.panel("cross", i, state).box
            left, top, right, bottom = box
            # The map keeps its 6:9 aspect (cells are square).
            assert abs((right - left) / (bottom - top) - 9 / 6) < 0.03
            assert _cell_of(box, (6, 9), *_brightest(pixels, box)) == peak
            shown = _viridis_values(_cell_samples(pixels, box, (6, 9)))
            np.testing.assert_allclose(shown, snapshot.cross[i].numpy(), atol=0.01)
            assert np.unravel_index(shown.argmax(), shown.shape) == peak
    assert diagnostics.trace_points["cross"] == [0.45, 0.35, 0.4, 0.3, 0.15]
    assert diagnostics.trace_runs == [("round 1", 0, 2), ("round 2", 2, 3), ("fallback", 3, 5)]
    assert diagnostics.title.startswith("InitNO: VALID · 2 rounds + fallback run, 5 UNet passes")


def test_one_subject_has_no_overlap_and_still_draws_everything():
    result = _hand_made(before=((2, 2),), after=((3, 5),))
    diagnostics = render_diagnostics(result, ["cat"], (0.2, 0.3))
    assert [(p.kind, p.subject, p.state) for p in diagnostics.panels] == [
        ("cross", 0, "before"),
        ("self", None, "before"),
        ("cross", 0, "after"),
        ("self", None, "after"),
        ("trace", None, None),
    ]
    pixels = _pixels(diagnostics)
    box = diagnostics.panel("self", None, "after").box
    expected, overlap = overlay_colours(result.maps_after.self_attention.numpy())
    assert not overlap.any()
    shown = _cell_samples(pixels, box, (6, 9), offset=0.2)
    np.testing.assert_allclose(shown, expected * 255, atol=3)


def test_nothing_scored_gives_no_image_and_partial_results_do_not_crash():
    empty = ImageResult(torch.zeros(4, 8, 8), False, 0, 0, False, True, None, None, None, None, [])
    assert render_diagnostics(empty, ["cat", "dog"]) is None
    assert diagnostic_image(empty, ["cat", "dog"]) is None

    no_trace = _hand_made(trace=False)
    diagnostics = render_diagnostics(no_trace, [], (0.2, 0.3))
    assert diagnostics.trace_points == {"cross": [], "self": [], "joint": []}
    assert diagnostics.trace_runs == []

    half = _hand_made()
    half.maps_before = None
    half.initial = None
    diagnostics = render_diagnostics(half, ["cat", "dog", "clock"], (0.2, 0.3))
    box = diagnostics.panel("cross", 1, "before").box
    left, top, right, bottom = box
    quarter = _pixels(diagnostics)[top + 3 : (top + bottom) // 2 - 8, left + 3 : (left + right) // 2 - 8]
    assert (quarter == 255).all()  # no map drawn, "not scored" written in the middle


def test_thresholds_as_params_or_pair_give_the_same_image_and_long_labels_keep_the_layout(real_result):
    a = render_diagnostics(real_result, ["cat", "dog"], InitNOParams(cross_threshold=0.25, conflict_threshold=0.35))
    b = diagnostic_image(real_result, ["cat", "dog"], (0.25, 0.35))
    assert a.image.tobytes() == b.tobytes()
    long = render_diagnostics(real_result, ["a very long subject description indeed", "dog"], (0.2, 0.3))
    assert long.image.size == a.image.size
    assert [p.box for p in long.panels] == [p.box for p in a.panels]


def test_the_diagnostics_never_import_pyplot():
    # pyplot keeps global state (and picks a GUI backend) that the multi-threaded WebUI must not share.
    tree = ast.parse(Path(__file__).parents[1].joinpath("initno", "diagnostics.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]
    assert imported and not [name for name in imported if "pyplot" in name or name.startswith("modules")]


def _guidance_trace(tiny_unet, cat_and_dog, method: str):
    settings = GuidanceSettings(method, refinements=(Refinement(10, cross=0.0),), max_refinement=2)
    denoiser = Denoiser(unet=tiny_unet, apply=apply_unet(tiny_unet), timestep=981)
    guide = ImageGuidance(denoiser, cat_and_dog, [[2], [5]], settings.plan(10))
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    for step, timestep in enumerate(range(901, 0, -100)):
        z = guide.guide(step, z, float(timestep))
    return guide.trace


def test_the_guidance_trace_is_drawn_under_the_optimisation(real_result, tiny_unet, cat_and_dog, real):
    trace = _guidance_trace(tiny_unet, cat_and_dog, "initno+")
    diagnostics = render_diagnostics(real_result, ["cat", "dog"], PARAMS, guidance=trace)
    assert diagnostics.guidance_points["step"] == [0, 1, 2, 3, 4]  # 5 of 10 steps guided
    assert diagnostics.guidance_points["cross"] == pytest.approx([s.before["cross"] for s in trace.steps])
    assert diagnostics.guidance_points["self"] == pytest.approx([s.before["conflict"] for s in trace.steps])
    assert trace.steps[2].refinement_updates == 2 and trace.refinement_updates == 2
    kinds = [panel.kind for panel in diagnostics.panels]
    assert kinds.count("trace") == 1 and kinds.count("guidance") == 1
    trace_panel, guidance_panel = diagnostics.panel("trace"), diagnostics.panel("guidance")
    assert guidance_panel.box[1] > trace_panel.box[3]  # below the optimisation's trace
    assert diagnostics.image.height > real.image.height
    assert diagnostics.title == real.title


def test_an_image_only_guided_shows_the_guidance_alone(tiny_unet, cat_and_dog):
    trace = _guidance_trace(tiny_unet, cat_and_dog, "ae")
    diagnostics = render_diagnostics(None, ["cat", "dog"], guidance=trace)
    assert diagnostics.title.startswith("Sampling guidance: Attend-and-Excite, 5 steps, refined 1× (2 updates)")
    assert [panel.kind for panel in diagnostics.panels] == ["guidance"]
    assert "self" not in diagnostics.guidance_points
    assert diagnostic_image(None, ["cat", "dog"], guidance=GuidanceTrace("ae")) is None


def test_the_demo_writes_the_picture_with_the_diagnostic_image(tmp_path):
    """`python -m initno demo` on the shipped miniature, cut short: plain, Fast and InitNO images, the
    verdicts, the diagnostic image beside them."""
    output = tmp_path / "new folder" / "x.png"
    quick = ["--rounds", "1", "--steps", "2", "--fallback", "0", "--candidates", "2", "--lookahead-steps", "1"]
    completed = run_cli("demo", *quick, "--output", str(output), timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert f"picture: {output}" in completed.stdout
    assert all(f"{name}: " in completed.stdout for name in ("plain", "Fast", "InitNO"))
    assert "2 noises, each scored after 1 sampling steps" in completed.stdout
    assert "6 UNet passes (forward only)" in completed.stdout  # 2 × (1 step × 2 passes + 1 scoring pass)
    assert "(thresholds: calibrated (q0.25 of 64 noises))" in completed.stdout  # InitNO as the WebUI runs it
    with Image.open(output) as image:
        assert image.format == "PNG"
        assert 1700 <= image.size[0] <= 2500 and 500 <= image.size[1] <= 1200
