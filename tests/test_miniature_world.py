"""The miniature's world and detector: reproducible renders, the held-out pairs never trained on, and the
detector's verdicts on renders (its accuracy figure is `python -m initno.miniature.detect`)."""

import collections

import numpy as np
import pytest

from initno.miniature import detect, world


def test_a_batch_is_a_pure_function_of_its_seed():
    images, captions = world.training_batch(7, 16)
    again, captions_again = world.training_batch(7, 16)
    other, _ = world.training_batch(8, 16)
    assert images.shape == (16, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and captions == captions_again
    assert not np.array_equal(images, other)


def test_held_out_pairs_never_appear_in_training():
    held_out = {frozenset(pair) for pair in world.HELD_OUT_PAIRS}
    assert len(held_out) == 20 and len(world.TRAINING_PAIRS) == 100
    counts = collections.Counter(subject for pair in world.HELD_OUT_PAIRS for subject in pair)
    assert set(counts.values()) == {2} and len(counts) == 20  # every subject in exactly two
    rng = np.random.Generator(np.random.PCG64(0))
    seen_pairs, seen_singles = set(), set()
    for _ in range(3000):
        subjects = world.parse_caption(world.training_scene(rng).caption)
        (seen_singles if len(subjects) == 1 else seen_pairs).add(frozenset(subjects))
    assert not seen_pairs & held_out
    assert len(seen_pairs) == 100 and len(seen_singles) == 20


def test_captions_name_their_objects_in_any_phrasing():
    red_circle, blue_square = world.Subject("red", "circle"), world.Subject("blue", "square")
    for template in world.PAIR_TEMPLATES:
        assert world.parse_caption(world.pair_caption(red_circle, blue_square, template)) == [red_circle, blue_square]
    with pytest.raises(ValueError, match="no '<colour> <shape>'"):
        world.parse_caption("a cat and a dog")


def test_objects_never_overlap_and_stay_inside():
    rng = np.random.Generator(np.random.PCG64(1))
    for _ in range(200):
        a, b = world.place(rng, list(world.ALL_PAIRS[rng.integers(120)]))
        for item in (a, b):
            left, top, right, bottom = item.box()
            assert left > 0 and right < world.IMAGE_SIZE and top > 0 and bottom < world.IMAGE_SIZE
        reach = (a.size + b.size) / 2 + world.GAP
        assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


@pytest.mark.parametrize(
    ("shape", "area"),
    [("circle", np.pi * 10**2), ("square", 20 * 20), ("triangle", 20 * 20 / 2), ("cross", 20 * 20 * 5 / 9)],
)
def test_each_shape_covers_its_area(shape, area):
    assert world.coverage(shape, 32.0, 32.0, 20.0).sum() == pytest.approx(area, rel=0.03)


def _render(*placed):
    return world.render([world.Placed(world.Subject(c, s), x, y, size) for c, s, x, y, size in placed])


def test_the_detector_reads_a_render():
    image = _render(("red", "circle", 16, 16, 20), ("blue", "triangle", 44, 44, 24))
    verdict = detect.detect(image, [world.Subject("red", "circle"), world.Subject("blue", "triangle")])
    assert verdict.present == (True, True) and verdict.all_present and not verdict.fused
    assert sorted((b.colour, b.shape) for b in verdict.blobs) == [("blue", "triangle"), ("red", "circle")]


def test_the_detector_wants_colour_and_shape():
    image = _render(("red", "square", 16, 16, 20), ("yellow", "circle", 44, 44, 24))
    subjects = [world.Subject("red", "circle"), world.Subject("yellow", "square")]  # colours swapped
    assert detect.detect(image, subjects).present == (False, False)
    lone = _render(("red", "circle", 30, 30, 24))
    assert detect.detect(lone, subjects).present == (True, False)


def test_two_subjects_drawn_as_one_object_are_fused():
    # A yellow square over the middle of a red circle: one blob of both colours, no red circle left.
    image = _render(("red", "circle", 32, 32, 26), ("yellow", "square", 32, 32, 16))
    verdict = detect.detect(image, [world.Subject("red", "circle"), world.Subject("yellow", "square")])
    assert verdict.present == (False, True)
    assert verdict.fused


def test_objects_that_merely_touch_are_not_fused():
    image = _render(("red", "square", 20, 32, 20), ("yellow", "circle", 40, 32, 20))  # edges touch at x = 30
    verdict = detect.detect(image, [world.Subject("red", "square"), world.Subject("yellow", "circle")])
    assert verdict.all_present and not verdict.fused


def test_detector_accuracy_on_held_out_renders():
    figures = detect.accuracy_on_renders(count=60, seed=5)
    for condition in ("clean", "degraded"):
        assert figures[condition]["accuracy"] >= 0.98, figures
        assert figures[condition]["fused_false_alarms"] == 0


def test_the_first_miniatures_training_set_is_unchanged_by_triples():
    """Without triples the draws are the ones the shipped weights were trained on (their record)."""
    _, captions = world.training_batch(7, 16)
    _, same = world.training_batch(7, 16, triple_share=0.0)
    assert captions == same and not any("," in c for c in captions)
    assert sum(len(world.parse_caption(c)) == 3 for c in world.training_batch(7, 64, 0.25)[1]) > 5


def test_held_out_triples_hold_two_held_out_pairs_and_never_appear_in_training():
    held_pairs = {frozenset(pair) for pair in world.HELD_OUT_PAIRS}
    triples = {frozenset(t) for t in world.HELD_OUT_TRIPLES}
    assert len(triples) == 20
    for triple in world.HELD_OUT_TRIPLES:
        colours, shapes = {s.colour for s in triple}, {s.shape for s in triple}
        assert len(colours) == 3 and len(shapes) == 3
        assert sum(frozenset(p) in held_pairs for p in [(triple[0], triple[1]), (triple[1], triple[2])]) == 2
    rng = np.random.Generator(np.random.PCG64(3))
    seen = set()
    for _ in range(3000):
        subjects = world.parse_caption(world.training_scene(rng, triple_share=0.3).caption)
        if len(subjects) == 3:
            seen.add(frozenset(subjects))
            assert not any(frozenset((a, b)) in held_pairs for a in subjects for b in subjects if a != b)
    assert not seen & triples and len(seen) > 100


def test_a_triple_caption_names_its_three_subjects():
    triple = world.HELD_OUT_TRIPLES[0]
    for template in world.TRIPLE_TEMPLATES:
        assert world.parse_caption(world.caption(triple, template)) == list(triple)
    assert world.triple_prompts()[0] == "a red circle, a yellow square and a green triangle"
