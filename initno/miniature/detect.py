"""Which of a prompt's subjects an image of the miniature world shows: deterministic, from colour masks and
shape templates, so that every verdict can be checked by eye and repeated exactly.

1. Each pixel takes the nearest of the palette's colours and the grey ground (RGB distance), or none if
   all are further than `MAX_COLOUR_DISTANCE` (a muddy mix).
2. Each colour's pixels split into 4-connected blobs; blobs under `MIN_AREA` pixels are noise.
3. A blob's shape is the template (circle, square, upward triangle, cross, of the blob's area, at its
   centroid) it overlaps best (intersection over union); below `MIN_SHAPE_IOU` it is no recognisable shape.
4. A subject is present when some blob has its colour and its shape.
5. The image is *fused* for a pair of subjects when one blob of colour (any palette colour, touching)
   carries both subjects' colours — each at least `FUSED_SHARE` of it — and the two are not both present
   as objects of their own: two subjects drawn as one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import world

MAX_COLOUR_DISTANCE = 90.0
MIN_AREA = 60
MIN_SHAPE_IOU = 0.6
FUSED_SHARE = 0.15

_NAMES = ("ground", *world.COLOURS)
_PALETTE = np.asarray([world.BACKGROUND, *world.COLOURS.values()], np.float32)


@dataclass(frozen=True)
class Blob:
    colour: str
    shape: str | None
    """The best template, or None when no template overlaps it by `MIN_SHAPE_IOU`."""
    iou: float
    area: int
    box: tuple[int, int, int, int]
    """(top, left, bottom, right), bottom and right exclusive."""


@dataclass(frozen=True)
class Detection:
    present: tuple[bool, ...]
    """Per subject of the prompt, in its order."""
    fused: bool
    blobs: tuple[Blob, ...]

    @property
    def all_present(self) -> bool:
        return all(self.present)


def colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) index into ("ground", *colours), or -1 where no colour is near."""
    distances = np.linalg.norm(image.astype(np.float32)[..., None, :] - _PALETTE, axis=-1)
    labels = distances.argmin(axis=-1)
    labels[distances.min(axis=-1) > MAX_COLOUR_DISTANCE] = -1
    return labels


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a boolean mask, each as an array of flat pixel indices."""
    height, width = mask.shape
    flat = mask.ravel().copy()
    found = []
    for start in np.flatnonzero(flat):
        if not flat[start]:
            continue
        flat[start] = False
        stack, members = [start], []
        while stack:
            index = stack.pop()
            members.append(index)
            row, col = divmod(index, width)
            for neighbour, inside in (
                (index - width, row > 0),
                (index + width, row < height - 1),
                (index - 1, col > 0),
                (index + 1, col < width - 1),
            ):
                if inside and flat[neighbour]:
                    flat[neighbour] = False
                    stack.append(neighbour)
        found.append(np.asarray(members))
    return found


AREA_PER_BOX = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}
"""A shape's area over the area of its bounding square (the cross's arms are a third of the box wide)."""
CENTROID_BELOW_CENTRE = {"triangle": 1 / 6}
"""How far a shape's centroid lies below its box centre, in box sides (the upward triangle's: a sixth)."""


def classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """The shape whose template overlaps the mask best (intersection over union), and the IoU.

    Each template has the mask's area and centroid rather than its bounding box: a few stray pixels at an
    edge (generated images are noisy there) would stretch a box, but barely move these."""
    rows, cols = np.nonzero(mask)
    area, y, x = len(rows), rows.mean() + 0.5, cols.mean() + 0.5
    best, best_iou = None, 0.0
    for shape in world.SHAPES:
        size = float(np.sqrt(area / AREA_PER_BOX[shape]))
        centre_y = y - CENTROID_BELOW_CENTRE.get(shape, 0.0) * size
        template = world.coverage(shape, x, centre_y, size, image_size=mask.shape[0]) >= 0.5
        union = np.count_nonzero(template | mask)
        iou = np.count_nonzero(template & mask) / union if union else 0.0
        if iou > best_iou:
            best, best_iou = shape, iou
    return (best if best_iou >= MIN_SHAPE_IOU else None), float(best_iou)


def find_blobs(image: np.ndarray) -> list[Blob]:
    """Every blob of one palette colour of at least `MIN_AREA` pixels, with its shape."""
    labels = colour_labels(image)
    blobs = []
    for index, colour in enumerate(_NAMES[1:], start=1):
        for members in components(labels == index):
            if len(members) < MIN_AREA:
                continue
            mask = np.zeros(labels.size, bool)
            mask[members] = True
            mask = mask.reshape(labels.shape)
            shape, iou = classify_shape(mask)
            rows, cols = np.divmod(members, labels.shape[1])
            box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
            blobs.append(Blob(colour, shape, iou, len(members), box))
    return blobs


def _fused(labels: np.ndarray, a: world.Subject, b: world.Subject) -> bool:
    first, second = _NAMES.index(a.colour), _NAMES.index(b.colour)
    for members in components(labels > 0):
        values = labels.ravel()[members]
        shares = [np.count_nonzero(values == colour) for colour in (first, second)]
        if min(shares) >= FUSED_SHARE * len(members) and min(shares) >= MIN_AREA // 2:
            return True
    return False


def detect(image: np.ndarray, subjects: Sequence[world.Subject]) -> Detection:
    """The verdict on an (H, W, 3) uint8 image for the prompt's `subjects`."""
    blobs = find_blobs(image)
    present = tuple(any(b.colour == s.colour and b.shape == s.shape for b in blobs) for s in subjects)
    fused = False
    if not all(present):
        labels = colour_labels(image)
        fused = any(_fused(labels, a, b) for i, a in enumerate(subjects) for b in subjects[i + 1 :])
    return Detection(present, fused, tuple(blobs))


# -- how good the detector is ---------------------------------------------------------------------------

DEGRADE_NOISE = 12.0
"""Standard deviation (0–255 scale) of the noise added to the degraded renders, after a 3×3 blur."""


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A render made to look generated: softened edges (3×3 binomial blur) and pixel noise."""
    padded = np.pad(image.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    weights = np.array([1, 2, 1], np.float32) / 4
    rows = sum(w * padded[i : i + image.shape[0]] for i, w in enumerate(weights))
    blurred = sum(w * rows[:, i : i + image.shape[1]] for i, w in enumerate(weights))
    noisy = blurred + rng.normal(0, DEGRADE_NOISE, blurred.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def accuracy_on_renders(count: int = 600, seed: int = 2024) -> dict:
    """Per-object presence accuracy on renders of the held-out pairs, clean and degraded.

    Each render shows both subjects of a held-out pair, or only the first, or only the second (in turn);
    both subjects are judged every time, so absent subjects are tested as well as present ones. Renders
    never show fused objects, so every "fused" verdict is a false alarm."""
    rng = np.random.Generator(np.random.PCG64(seed))
    figures = {}
    tallies = {
        condition: {"right": 0, "total": 0, "hits": 0, "present": 0, "fused": 0} for condition in ("clean", "degraded")
    }
    for index in range(count):
        pair = world.HELD_OUT_PAIRS[index % len(world.HELD_OUT_PAIRS)]
        shown = [list(pair), [pair[0]], [pair[1]]][index % 3]
        image = world.render(world.place(rng, shown))
        for condition, picture in (("clean", image), ("degraded", degrade(image, rng))):
            verdict = detect(picture, list(pair))
            tally = tallies[condition]
            for subject, present in zip(pair, verdict.present):
                truth = subject in shown
                tally["right"] += present == truth
                tally["total"] += 1
                tally["hits"] += present and truth
                tally["present"] += truth
            tally["fused"] += verdict.fused
    for condition, tally in tallies.items():
        absent = tally["total"] - tally["present"]
        true_negatives = tally["right"] - tally["hits"]
        figures[condition] = {
            "judgements": tally["total"],
            "accuracy": round(tally["right"] / tally["total"], 4),
            "recall": round(tally["hits"] / tally["present"], 4),
            "specificity": round(true_negatives / absent, 4) if absent else None,
            "fused_false_alarms": tally["fused"],
        }
    return figures


if __name__ == "__main__":  # python -m initno.miniature.detect: the detector's accuracy, as reported
    import json

    print(json.dumps({"renders": 600, **accuracy_on_renders()}, indent=1))
