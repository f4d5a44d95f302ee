"""Objects that do not belong to the training classes, placed on the road in perspective.

Two disjoint families: the *unknown objects* (animals, debris, boxes, tyres) are the test
anomalies, labelled OOD; the *outlier-exposure* objects (balls, chairs, barrels, bags) are the
synthetic analogue of COCO/ADE20K objects that methods paste during training (label 254). No
shape, size distribution or material is shared, so no method sees a test anomaly in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import (
    ANOMALY_KINDS,
    OUTLIER_EXPOSURE_KINDS,
    Canvas,
    Part,
    Shape,
    _ellipse,
    material_code,
)


def _blob_radius(px, py, cx, cy, rx, ry, rng, wobble):
    """Normalised radius of an ellipse whose outline wobbles with a few random harmonics."""
    angle = np.arctan2((py - cy) / ry, (px - cx) / rx)
    outline = np.ones_like(angle)
    for k in rng.integers(2, 7, size=3):
        outline += wobble * rng.uniform(0.3, 1) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    return np.sqrt(((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2) / outline


# --- unknown objects (test anomalies) ---------------------------------------------------------


def animal_shape(px, py, w, h, rng):
    """A quadruped in side view: body, four legs, neck and head, optional spotted coat."""
    facing = rng.choice([-1, 1])
    body = _ellipse(px, py, 0, 0.6 * h, 0.36 * w, 0.2 * h)
    legs = np.zeros(px.shape, bool)
    for lx in (-0.28, -0.17, 0.17, 0.28):
        legs |= (np.abs(px - lx * w) < 0.035 * w + 0.02) & (py < 0.6 * h)
    neck = (np.abs(px - facing * 0.36 * w) < 0.06 * w + 0.03) & (py > 0.6 * h) & (py < 0.85 * h)
    head = _ellipse(px, py, facing * 0.42 * w, 0.86 * h, 0.09 * w, 0.1 * h)
    mask = body | legs | neck | head
    part = np.zeros(px.shape, np.uint8)
    if rng.random() < 0.5:
        spots = np.sin(px * rng.uniform(6, 12)) * np.sin(py * rng.uniform(6, 12)) > 0.4
        part[spots & body] = Part.STRIPE
    part[legs & (py < 0.08 * h)] = Part.SHADE
    return mask, part


def debris_shape(px, py, w, h, rng):
    """An irregular, flat heap (rubble, a fallen load): a wobbly blob resting on the road."""
    r = _blob_radius(px, py, 0, 0.45 * h, 0.5 * w, 0.5 * h, rng, 0.18)
    mask = (r < 1) & (py >= 0)
    part = np.where(r < 0.5, Part.HIGHLIGHT, Part.SHADE).astype(np.uint8)
    part[r < 0.75] = Part.NONE
    return mask, part


def box_shape(px, py, w, h, rng):
    """A cardboard box seen obliquely: front face, lighter top face, a tape stripe."""
    depth = 0.25 * h
    front = py < h - depth
    top = (py >= h - depth) & (np.abs(px + (py - h + depth) * 0.6) < w / 2 - depth * 0.6)
    part = np.where(top, Part.HIGHLIGHT, Part.NONE).astype(np.uint8)
    part[front & (np.abs(px) < 0.06 * w)] = Part.STRIPE
    return front | top, part


def tyre_shape(px, py, w, h, rng):
    """A tyre standing on its tread: a black ring with a hole and tread marks."""
    r = np.sqrt((px / (0.5 * w)) ** 2 + ((py - 0.5 * h) / (0.5 * h)) ** 2)
    mask = (r < 1) & (r > 0.42)
    angle = np.arctan2(py - 0.5 * h, px)
    part = np.where(np.sin(angle * 24) > 0.3, Part.SHADE, Part.WHEEL).astype(np.uint8)
    part[r < 0.6] = Part.HIGHLIGHT
    return mask, part


# --- outlier-exposure objects (training-time pasting only) ------------------------------------


def ball_shape(px, py, w, h, rng):
    """A ball with a highlight and a band."""
    r = np.sqrt((px / (0.5 * w)) ** 2 + ((py - 0.5 * h) / (0.5 * h)) ** 2)
    part = np.where(np.abs(py - 0.5 * h + 0.3 * px) < 0.08 * h, Part.STRIPE, Part.NONE)
    part = part.astype(np.uint8)
    part[_ellipse(px, py, -0.18 * w, 0.68 * h, 0.12 * w, 0.12 * h)] = Part.HIGHLIGHT
    return r < 1, part


def chair_shape(px, py, w, h, rng):
    """A chair in side view: legs, seat and backrest."""
    seat = (py > 0.45 * h) & (py < 0.55 * h)
    back = (px < -0.35 * w) & (py >= 0.5 * h)
    legs = ((np.abs(px + 0.42 * w) < 0.06 * w) | (np.abs(px - 0.42 * w) < 0.06 * w)) & (
        py < 0.5 * h
    )
    part = np.where(seat, Part.HIGHLIGHT, Part.NONE).astype(np.uint8)
    return seat | back | legs, part


def barrel_shape(px, py, w, h, rng):
    """An upright barrel with hoops and a rounded rim."""
    rim = (py < 0.94 * h) | (np.abs(px) < 0.42 * w)
    hoops = (np.abs(py - 0.3 * h) < 0.04 * h) | (np.abs(py - 0.7 * h) < 0.04 * h)
    part = np.where(hoops, Part.STRIPE, Part.NONE).astype(np.uint8)
    part[np.abs(px) > 0.38 * w] = Part.SHADE
    return rim, part


def bag_shape(px, py, w, h, rng):
    """A slumped sack with a handle loop on top."""
    r = _blob_radius(px, py, 0, 0.38 * h, 0.5 * w, 0.38 * h, rng, 0.08)
    handle_r = np.sqrt((px / (0.15 * w)) ** 2 + ((py - 0.78 * h) / (0.16 * h)) ** 2)
    handle = (handle_r < 1) & (handle_r > 0.6)
    part = np.where(r < 0.55, Part.HIGHLIGHT, Part.NONE).astype(np.uint8)
    return (r < 1) | handle, part


@dataclass(frozen=True)
class ObjectKind:
    """One object type: its shape and metric width/height ranges."""

    name: str
    shape: Shape
    width: tuple[float, float]
    height: tuple[float, float]


ANOMALIES: tuple[ObjectKind, ...] = (
    ObjectKind("animal", animal_shape, (1.0, 2.0), (0.9, 1.6)),
    ObjectKind("debris", debris_shape, (0.8, 2.0), (0.35, 0.9)),
    ObjectKind("box", box_shape, (0.5, 1.2), (0.45, 1.0)),
    ObjectKind("tyre", tyre_shape, (0.6, 0.9), (0.6, 0.9)),
)
OUTLIER_EXPOSURE_OBJECTS: tuple[ObjectKind, ...] = (
    ObjectKind("ball", ball_shape, (0.3, 0.7), (0.3, 0.7)),
    ObjectKind("chair", chair_shape, (0.5, 0.8), (0.8, 1.1)),
    ObjectKind("barrel", barrel_shape, (0.5, 0.7), (0.8, 1.0)),
    ObjectKind("bag", bag_shape, (0.5, 0.9), (0.4, 0.8)),
)
FAMILIES = {"anomaly": ANOMALIES, "outlier-exposure": OUTLIER_EXPOSURE_OBJECTS}
assert tuple(k.name for k in ANOMALIES) == ANOMALY_KINDS
assert tuple(k.name for k in OUTLIER_EXPOSURE_OBJECTS) == OUTLIER_EXPOSURE_KINDS


def place_on_road(
    canvas: Canvas,
    family: str,
    count: int,
    rng: np.random.Generator,
    depth_range: tuple[float, float] = (5.0, 30.0),
) -> int:
    """Stand ``count`` objects of ``family`` on the road at random depths and lateral positions.

    Scale follows perspective (an object of width w at depth z spans ``focal * w / z`` pixels).
    Objects are drawn through the z-buffer, so vehicles in front may hide them. Returns how many
    objects ended up at least partly visible.
    """
    kinds = FAMILIES[family]
    street = canvas.street
    visible = 0
    for _ in range(count):
        kind = kinds[rng.integers(len(kinds))]
        w, h = rng.uniform(*kind.width), rng.uniform(*kind.height)
        z = rng.uniform(*depth_range)
        room = max(street.half_width - w / 2, 0.0)
        x = street.centre(z) + rng.uniform(-room, room)
        mask = canvas.draw_billboard(kind.shape, material_code(kind.name), x, z, w, h, rng)
        visible += mask is not None
    return visible
