"""The synthetic world: coloured shapes on a grey ground, with captions as people write them for SD.

Everything is a pure function of a seed (numpy's PCG64), so a training set, a test set of renders and the
evaluation prompts are the same on every machine.

- 5 colours × 4 shapes = 20 subjects ("a red circle"); an image shows one or two of them, at random
  positions and sizes, never overlapping. Two objects always differ in colour and in shape, so a caption
  names each unambiguously and the detector can tell them apart.
- Two-object captions: "a red circle and a blue square", "… next to …", "… with …", in either order.
- `HELD_OUT_PAIRS`: 20 of the 120 possible pairs never appear together in training. They are the
  evaluation prompts: each subject was seen alone and beside other partners, never beside this one (the
  compositional case where SD neglects and fuses subjects). Each subject is in exactly two of them.
- Three-object scenes (the second miniature only, `triple_share` > 0): "a red circle, a blue square and a
  green cross". No training triple contains a held-out pair; `HELD_OUT_TRIPLES` (20, each made of two
  held-out pairs) are the three-subject evaluation prompts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
BACKGROUND = (128, 128, 128)
COLOURS = {
    "red": (215, 40, 40),
    "yellow": (235, 205, 35),
    "green": (45, 165, 65),
    "blue": (40, 85, 220),
    "purple": (150, 55, 185),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZE_RANGE = (18.0, 30.0)
"""Side of an object's bounding box, in pixels."""
GAP = 4.0
"""Least distance between two objects' bounding boxes, in pixels."""
PAIR_TEMPLATES = ("a {} and a {}", "a {} next to a {}", "a {} with a {}")
TRIPLE_TEMPLATES = ("a {}, a {} and a {}", "a {} next to a {} and a {}", "a {} and a {} with a {}")
SINGLE_SHARE = 0.4
"""Share of training images with one object."""
SUPERSAMPLING = 4


@dataclass(frozen=True)
class Subject:
    colour: str
    shape: str

    @property
    def text(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Placed:
    """An object in an image: its subject, the centre of its bounding box and the box's side (pixels)."""

    subject: Subject
    x: float
    y: float
    size: float

    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return self.x - half, self.y - half, self.x + half, self.y + half


@dataclass(frozen=True)
class Scene:
    objects: tuple[Placed, ...]
    caption: str


SUBJECTS = tuple(Subject(colour, shape) for colour in COLOURS for shape in SHAPES)


def _distinct(a: Subject, b: Subject) -> bool:
    return a.colour != b.colour and a.shape != b.shape


ALL_PAIRS = tuple((a, b) for a, b in itertools.combinations(SUBJECTS, 2) if _distinct(a, b))
"""Every unordered pair of subjects that differ in colour and shape: 20 × 12 / 2 = 120."""


def _held_out_pairs() -> tuple[tuple[Subject, Subject], ...]:
    # Each subject with its next colour and next shape (cyclically): 20 distinct pairs, every subject in
    # exactly two of them, every colour pairing and shape pairing represented.
    colours, pairs = list(COLOURS), []
    for c, colour in enumerate(colours):
        for s, shape in enumerate(SHAPES):
            partner = Subject(colours[(c + 1) % len(colours)], SHAPES[(s + 1) % len(SHAPES)])
            pairs.append((Subject(colour, shape), partner))
    return tuple(pairs)


HELD_OUT_PAIRS = _held_out_pairs()
TRAINING_PAIRS = tuple(
    pair for pair in ALL_PAIRS if frozenset(pair) not in {frozenset(held) for held in HELD_OUT_PAIRS}
)


def _held_out_triples() -> tuple[tuple[Subject, Subject, Subject], ...]:
    # Each held-out pair (a, b) with b's own held-out partner: colours c, c+1, c+2 and shapes s, s+1, s+2
    # all differ, and the triple holds two pairs never seen together.
    partner = dict(HELD_OUT_PAIRS)
    return tuple((a, b, partner[b]) for a, b in HELD_OUT_PAIRS)


HELD_OUT_TRIPLES = _held_out_triples()
_HELD = {frozenset(pair) for pair in HELD_OUT_PAIRS}
TRAINING_TRIPLES = tuple(
    triple
    for triple in itertools.combinations(SUBJECTS, 3)
    if all(_distinct(a, b) and frozenset((a, b)) not in _HELD for a, b in itertools.combinations(triple, 2))
)
"""Every triple of mutually distinct subjects that holds no held-out pair."""


def pair_caption(a: Subject, b: Subject, template: str = PAIR_TEMPLATES[0]) -> str:
    return template.format(a.text, b.text)


def caption(subjects: Sequence[Subject], template: str | None = None) -> str:
    """The plain caption of one, two or three subjects ("a red circle, a blue square and a green cross")."""
    if len(subjects) == 1:
        return f"a {subjects[0].text}"
    templates = {2: PAIR_TEMPLATES, 3: TRIPLE_TEMPLATES}[len(subjects)]
    return (template or templates[0]).format(*(s.text for s in subjects))


def evaluation_prompts() -> list[str]:
    """The held-out pairs as "a red circle and a yellow square": the default evaluation prompts."""
    return [pair_caption(a, b) for a, b in HELD_OUT_PAIRS]


def triple_prompts() -> list[str]:
    """The held-out triples as "a red circle, a yellow square and a green triangle"."""
    return [caption(triple) for triple in HELD_OUT_TRIPLES]


def parse_caption(caption: str) -> list[Subject]:
    """The subjects a caption names, in order (any phrasing of this world: "a red circle next to …")."""
    words = caption.lower().replace(",", " ").split()
    found = []
    for first, second in itertools.pairwise(words):
        if first in COLOURS and second in SHAPES:
            found.append(Subject(first, second))
    if not found:
        raise ValueError(f"no '<colour> <shape>' in {caption!r}: colours {list(COLOURS)}, shapes {list(SHAPES)}")
    return found


# -- placing objects ---------------------------------------------------------------------------------


def _place(rng: np.random.Generator, subject: Subject, others: list[Placed]) -> Placed | None:
    for _ in range(100):
        size = float(rng.uniform(*SIZE_RANGE))
        low, high = size / 2 + 1, IMAGE_SIZE - size / 2 - 1
        candidate = Placed(subject, float(rng.uniform(low, high)), float(rng.uniform(low, high)), size)
        if all(_apart(candidate, other) for other in others):
            return candidate
    return None


def _apart(a: Placed, b: Placed) -> bool:
    reach = (a.size + b.size) / 2 + GAP
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def place(rng: np.random.Generator, subjects: list[Subject]) -> tuple[Placed, ...]:
    """Random non-overlapping positions and sizes for `subjects` (retried until they fit)."""
    while True:
        placed: list[Placed] = []
        for subject in subjects:
            item = _place(rng, subject, placed)
            if item is None:
                break
            placed.append(item)
        else:
            return tuple(placed)


def training_scene(rng: np.random.Generator, triple_share: float = 0.0) -> Scene:
    """One training example: a single subject, a pair that is not held out, or (with `triple_share`) a
    triple without a held-out pair, in a random phrasing. With no triples the draws are the first
    miniature's, so its training set is unchanged."""
    draw = rng.random()
    if draw < SINGLE_SHARE:
        subject = SUBJECTS[rng.integers(len(SUBJECTS))]
        return Scene(place(rng, [subject]), f"a {subject.text}")
    if draw < SINGLE_SHARE + triple_share:
        triple = list(TRAINING_TRIPLES[rng.integers(len(TRAINING_TRIPLES))])
        rng.shuffle(triple)
        template = TRIPLE_TEMPLATES[rng.integers(len(TRIPLE_TEMPLATES))]
        return Scene(place(rng, triple), caption(triple, template))
    a, b = TRAINING_PAIRS[rng.integers(len(TRAINING_PAIRS))]
    if rng.random() < 0.5:
        a, b = b, a
    template = PAIR_TEMPLATES[rng.integers(len(PAIR_TEMPLATES))]
    return Scene(place(rng, [a, b]), pair_caption(a, b, template))


# -- rendering -----------------------------------------------------------------------------------------


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Whether the points (dx, dy), relative to the box centre, lie in `shape` of box side `size`.
    The triangle points up; the cross's arms are a third of the box wide."""
    half = size / 2
    inside_box = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        return inside_box
    if shape == "triangle":
        return inside_box & (np.abs(dx) <= (dy + half) / 2)
    if shape == "cross":
        arm = size / 6
        return inside_box & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")


def coverage(shape: str, x: float, y: float, size: float, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The share of each pixel covered by the shape, (H, W) in [0, 1] (supersampled: smooth edges)."""
    result = np.zeros((image_size, image_size), np.float32)
    half = size / 2
    top, left = max(int(y - half) - 1, 0), max(int(x - half) - 1, 0)
    bottom, right = min(int(y + half) + 2, image_size), min(int(x + half) + 2, image_size)
    rows = (np.arange(top * SUPERSAMPLING, bottom * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    cols = (np.arange(left * SUPERSAMPLING, right * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    dy, dx = np.meshgrid(rows - y, cols - x, indexing="ij")
    inside = shape_mask(shape, dx, dy, size).astype(np.float32)
    height, width = bottom - top, right - left
    result[top:bottom, left:right] = inside.reshape(height, SUPERSAMPLING, width, SUPERSAMPLING).mean(axis=(1, 3))
    return result


def render(objects: tuple[Placed, ...] | list[Placed]) -> np.ndarray:
    """The image of `objects`: (H, W, 3) uint8."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    image[:] = BACKGROUND
    for item in objects:
        alpha = coverage(item.subject.shape, item.x, item.y, item.size)[..., None]
        image = image * (1 - alpha) + np.asarray(COLOURS[item.subject.colour], np.float32) * alpha
    return np.round(image).astype(np.uint8)


def training_batch(seed: int, count: int, triple_share: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """`count` training images (N, H, W, 3) uint8 and their captions, a pure function of `seed`."""
    rng = np.random.Generator(np.random.PCG64(seed))
    scenes = [training_scene(rng, triple_share) for _ in range(count)]
    return np.stack([render(scene.objects) for scene in scenes]), [scene.caption for scene in scenes]
