"""Procedural road-scene layouts: Cityscapes-labelled semantic maps with metric depth.

A scene is a tiny 3-D world seen by a pinhole camera: a ground plane (road with lanes,
sidewalks, terrain), facade planes along both sides (buildings behind walls, fences, hedges), a
skyline at the end of the street, and camera-facing billboards standing on the ground (trees,
poles with signs and traffic lights, cars, trucks, buses, persons, pasted objects). Every surface
is ray-cast or rasterised with a z-buffer, so labels, depth, surface coordinates (for textures)
and part codes (windows, wheels, lamps...) are consistent by construction. The renderer turns a
``Layout`` into an image; the same layout can be rendered in any domain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

import numpy as np

from ood_bench.adapters.base import OUTLIER_EXPOSURE, VOID

#: Depth given to sky pixels (metres); far enough for fog to saturate.
SKY_DEPTH = 1000.0


class Facing(IntEnum):
    """Which way a surface faces, for shading."""

    SKY = 0
    GROUND = 1
    LEFT = 2  # facade on the left of the road, facing +x
    RIGHT = 3
    FRONT = 4  # billboards facing the camera


class Part(IntEnum):
    """Sub-surface codes that the renderer paints on top of the material colour."""

    NONE = 0
    LANE = 1
    CURB = 2
    JOINT = 3
    WINDOW = 4
    WINDOW_LIT = 5
    SLAT = 6
    WHEEL = 7
    GLASS = 8
    TAIL_LIGHT = 9
    LAMP_RED = 10
    LAMP_AMBER = 11
    LAMP_GREEN = 12
    LAMP_OFF = 13
    SKIN = 14
    HAIR = 15
    LEGS = 16
    TRUNK = 17
    SIGN_FACE = 18
    SHADOW = 19
    STRIPE = 20
    SHADE = 21
    HIGHLIGHT = 22


#: Cityscapes trainIds of the classes the world contains.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, CAR, TRUCK, BUS = 11, 13, 14, 15

#: Material names (indexed by material code), their semantic label and whether they are OOD.
#: Codes 0–18 are the Cityscapes trainIds; the object families of ``objects.py`` follow.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
ANOMALY_KINDS = ("animal", "debris", "box", "tyre")
OUTLIER_EXPOSURE_KINDS = ("ball", "chair", "barrel", "bag")
MATERIALS: tuple[str, ...] = CITYSCAPES_CLASSES + ANOMALY_KINDS + OUTLIER_EXPOSURE_KINDS
MATERIAL_LABEL = np.array(
    list(range(19))
    + [VOID] * len(ANOMALY_KINDS)
    + [OUTLIER_EXPOSURE] * len(OUTLIER_EXPOSURE_KINDS),
    dtype=np.uint8,
)
MATERIAL_OOD = np.array(
    [0] * 19 + [1] * len(ANOMALY_KINDS) + [0] * len(OUTLIER_EXPOSURE_KINDS), dtype=np.uint8
)


def material_code(name: str) -> int:
    """Index of material ``name`` in ``MATERIALS``."""
    return MATERIALS.index(name)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera ``cam_height`` metres above flat ground; ``horizon`` is a pixel row."""

    height: int
    width: int
    focal: float
    cx: float
    horizon: float
    cam_height: float


@dataclass
class Layout:
    """Everything the renderer needs about one scene; labels derive from ``instance``.

    ``instance`` (H×W int32) indexes the per-instance ``material`` codes and ``tone`` draws
    (N×3 in [0, 1), the appearance choice of that instance in any domain's palette).
    ``texcoord`` (2×H×W) holds surface coordinates in metres, ``part`` sub-surface codes,
    ``facing`` the surface orientation, ``depth`` the metric distance along the optical axis.
    """

    camera: Camera
    instance: np.ndarray
    depth: np.ndarray
    texcoord: np.ndarray
    part: np.ndarray
    facing: np.ndarray
    material: np.ndarray
    tone: np.ndarray

    @property
    def semantic(self) -> np.ndarray:
        """Cityscapes trainIds (255 void, 254 pasted outlier-exposure objects)."""
        return MATERIAL_LABEL[self.material[self.instance]]

    @property
    def ood(self) -> np.ndarray:
        """1 on unknown (test-anomaly) objects, 0 elsewhere."""
        return MATERIAL_OOD[self.material[self.instance]]


@lru_cache(maxsize=8)
def _pixel_rays(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (rows, columns) as float32 grids, cached per resolution."""
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
    return np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width))


#: A shape: (px, py, width_m, height_m, rng) -> (mask, part), px/py metric coordinates relative
#: to the object's bottom centre (py up).
Shape = Callable[[np.ndarray, np.ndarray, float, float, np.random.Generator], tuple]


class Canvas:
    """A z-buffered frame that surfaces and billboards are drawn into."""

    def __init__(self, camera: Camera, street: Street) -> None:
        h, w = camera.height, camera.width
        self.camera = camera
        self.street = street
        self.instance = np.zeros((h, w), np.int32)
        self.depth = np.full((h, w), SKY_DEPTH, np.float32)
        self.texcoord = np.zeros((2, h, w), np.float32)
        self.part = np.zeros((h, w), np.uint8)
        self.facing = np.zeros((h, w), np.uint8)
        self.materials: list[int] = []
        self.tones: list[np.ndarray] = []

    def new_instance(self, material: int, rng: np.random.Generator) -> int:
        self.materials.append(material)
        self.tones.append(rng.random(3))
        return len(self.materials) - 1

    def draw_surface(
        self,
        mask: np.ndarray,
        depth: np.ndarray,
        instance: np.ndarray | int,
        tex_u: np.ndarray,
        tex_v: np.ndarray,
        facing: Facing,
        part: np.ndarray | int = 0,
    ) -> None:
        """Write a full-frame surface where ``mask`` holds and it is nearer than the z-buffer."""
        win = mask & (depth < self.depth)
        self.depth[win] = depth[win]
        self.instance[win] = instance[win] if isinstance(instance, np.ndarray) else instance
        self.texcoord[0][win] = tex_u[win]
        self.texcoord[1][win] = tex_v[win]
        self.part[win] = part[win] if isinstance(part, np.ndarray) else part
        self.facing[win] = facing

    def draw_billboard(
        self,
        shape: Shape,
        material: int,
        x: float,
        z: float,
        width_m: float,
        height_m: float,
        rng: np.random.Generator,
        elevation: float = 0.0,
        min_px: float = 1.0,
    ) -> np.ndarray | None:
        """Rasterise a camera-facing object standing at ground point (x, z); returns its mask.

        The object's bottom is ``elevation`` metres above the ground. ``min_px`` keeps thin
        objects (poles) at least that many pixels wide so they never vanish between columns.
        """
        cam = self.camera
        if z < 0.5:
            return None
        scale = cam.focal / z
        half_w = max(width_m * scale, min_px) / 2
        u_c = cam.cx + x * scale
        v_bottom = cam.horizon + (cam.cam_height - elevation) * scale
        v_top = v_bottom - height_m * scale
        c0, c1 = max(int(np.floor(u_c - half_w)), 0), min(int(np.ceil(u_c + half_w)), cam.width)
        r0, r1 = max(int(np.floor(v_top)), 0), min(int(np.ceil(v_bottom)), cam.height)
        if c1 <= c0 or r1 <= r0:
            return None
        cols = np.arange(c0, c1, dtype=np.float32) + 0.5
        rows = np.arange(r0, r1, dtype=np.float32) + 0.5
        px = ((cols - u_c) / (2 * half_w) * width_m)[None, :]
        py = ((v_bottom - rows) / scale)[:, None]
        px, py = np.broadcast_arrays(px, py)
        inside = (np.abs(px) < width_m / 2) & (py >= 0) & (py < height_m)
        mask, part = shape(px, py, width_m, height_m, rng)
        mask = mask & inside
        window = (slice(r0, r1), slice(c0, c1))
        win = mask & (z < self.depth[window])
        if not win.any():
            return None
        instance = self.new_instance(material, rng)
        self.depth[window][win] = z
        self.instance[window][win] = instance
        self.texcoord[0][window][win] = (px + x)[win]
        self.texcoord[1][window][win] = (py + elevation)[win]
        self.part[window][win] = np.broadcast_to(part, mask.shape)[win]
        self.facing[window][win] = Facing.FRONT
        full = np.zeros(self.depth.shape, bool)
        full[window] = win
        return full

    def layout(self) -> Layout:
        return Layout(
            camera=self.camera,
            instance=self.instance,
            depth=self.depth,
            texcoord=self.texcoord,
            part=self.part,
            facing=self.facing,
            material=np.asarray(self.materials, np.int16),
            tone=np.asarray(self.tones, np.float32).reshape(-1, 3),
        )


# --- in-distribution object shapes (metric coordinates, py up from the bottom) -------------


def _ellipse(px, py, cx, cy, rx, ry):
    return ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 < 1


def _wheels(px, py, w, h, part, radius):
    for side in (-1, 1):
        wheel = _ellipse(px, py, side * (w / 2 - radius * 0.9), radius * 0.9, radius * 0.6, radius)
        part[wheel] = Part.WHEEL
    return part


def car_shape(px, py, w, h, rng):
    """Rear view: body, tapered cabin with glass, wheels below, tail lights."""
    body = (py > 0.15 * h) & (py < 0.6 * h)
    taper = w / 2 - (py - 0.6 * h) / (0.4 * h) * w * 0.14
    cabin = (py >= 0.6 * h) & (np.abs(px) < taper - 0.05 * w)
    glass = cabin & (py < 0.93 * h) & (np.abs(px) < taper - 0.12 * w)
    part = np.where(glass, Part.GLASS, Part.NONE).astype(np.uint8)
    lights = (py > 0.42 * h) & (py < 0.52 * h) & (np.abs(px) > 0.36 * w)
    part[lights] = Part.TAIL_LIGHT
    part = _wheels(px, py, w, h, part, 0.17 * h)
    mask = body | cabin | (part == Part.WHEEL)
    return mask, part


def truck_shape(px, py, w, h, rng):
    """Rear view of a box truck: cargo box with door seams, tail lights, wheels."""
    box = (py > 0.12 * h) & (np.abs(px) < w / 2)
    part = np.where(np.abs(px) < 0.02 * w + 0.03, Part.SLAT, Part.NONE).astype(np.uint8)
    part[(py > 0.12 * h) & (py < 0.2 * h)] = Part.SHADE
    lights = (py > 0.2 * h) & (py < 0.27 * h) & (np.abs(px) > 0.38 * w)
    part[lights] = Part.TAIL_LIGHT
    part = _wheels(px, py, w, h, part, 0.13 * h)
    return box | (part == Part.WHEEL), part


def bus_shape(px, py, w, h, rng):
    """Front/rear view of a bus: tall body with a wide window band and rounded roof."""
    roof = (py < 0.92 * h) | (np.abs(px) < 0.42 * w)
    body = (py > 0.1 * h) & roof
    glass = (py > 0.5 * h) & (py < 0.86 * h) & (np.abs(px) < 0.44 * w)
    part = np.where(glass, Part.GLASS, Part.NONE).astype(np.uint8)
    part[(py > 0.18 * h) & (py < 0.24 * h) & (np.abs(px) > 0.36 * w)] = Part.TAIL_LIGHT
    part[(py > 0.3 * h) & (py < 0.33 * h)] = Part.STRIPE
    part = _wheels(px, py, w, h, part, 0.11 * h)
    return body | (part == Part.WHEEL), part


def person_shape(px, py, w, h, rng):
    """A pedestrian: head with hair, torso with arms, two legs."""
    stride = rng.uniform(0.0, 0.08)
    head = _ellipse(px, py, 0, 0.93 * h, 0.13 * w + 0.02, 0.065 * h)
    torso = (py > 0.5 * h) & (py < 0.86 * h) & (np.abs(px) < 0.3 * w)
    arms = (py > 0.52 * h) & (py < 0.84 * h) & (np.abs(px) < 0.45 * w)
    legs = (py <= 0.52 * h) & (
        (np.abs(px - 0.14 * w - stride) < 0.13 * w) | (np.abs(px + 0.14 * w + stride) < 0.13 * w)
    )
    part = np.zeros(px.shape, np.uint8)
    part[legs] = Part.LEGS
    part[head] = Part.SKIN
    part[head & (py > 0.955 * h)] = Part.HAIR
    return head | torso | arms | legs, part


def tree_shape(px, py, w, h, rng):
    """A trunk and a crown with a wobbly outline (all vegetation, as in Cityscapes)."""
    trunk = (np.abs(px) < 0.06 * w + 0.08) & (py < 0.5 * h)
    harmonics = rng.integers(3, 7)
    phase = rng.uniform(0, 2 * np.pi)
    angle = np.arctan2(py - 0.62 * h, px)
    radius = 1 + 0.12 * np.sin(harmonics * angle + phase)
    crown = ((px / (0.5 * w)) ** 2 + ((py - 0.62 * h) / (0.38 * h)) ** 2) < radius**2
    part = np.where(trunk & ~crown, Part.TRUNK, Part.NONE).astype(np.uint8)
    return trunk | crown, part


def pole_shape(px, py, w, h, rng):
    return np.ones(px.shape, bool), np.zeros(px.shape, np.uint8)


def sign_shape(px, py, w, h, rng):
    """A traffic sign plate: disc, triangle or rectangle with a lighter face."""
    kind = rng.integers(3)
    cy = h / 2
    if kind == 0:
        mask = _ellipse(px, py, 0, cy, w / 2, h / 2)
        face = _ellipse(px, py, 0, cy, w / 3, h / 3)
    elif kind == 1:
        mask = np.abs(px) < (h - py) / h * w / 2
        face = (np.abs(px) < (0.8 * h - py) / h * w / 2 - 0.1 * w) & (py > 0.15 * h)
    else:
        mask = np.ones(px.shape, bool)
        face = (np.abs(px) < 0.38 * w) & (py > 0.12 * h) & (py < 0.88 * h)
    return mask, np.where(face, Part.SIGN_FACE, Part.NONE).astype(np.uint8)


def traffic_light_shape(px, py, w, h, rng):
    """A housing with three lamps, one of them lit."""
    part = np.zeros(px.shape, np.uint8)
    lit = rng.integers(3)
    lamps = (Part.LAMP_RED, Part.LAMP_AMBER, Part.LAMP_GREEN)
    for k, lamp in enumerate(lamps):
        disc = _ellipse(px, py, 0, h * (0.8 - 0.3 * k), 0.3 * w, 0.12 * h)
        part[disc] = lamp if k == lit else Part.LAMP_OFF
    return np.ones(px.shape, bool), part


# --- the world ---------------------------------------------------------------------------------


@dataclass
class Street:
    """Random parameters of one street: road geometry and what lines each side."""

    lane_width: float
    lanes: int
    offset: float  # road centre at z = 0, metres (camera at x = 0)
    slope: float  # road centre drifts by slope * z
    sidewalk: tuple[float, float]  # widths on the left / right (0 = none)
    verge: tuple[float, float]  # terrain strip beyond the sidewalk
    end: float  # distance of the skyline plane

    @property
    def half_width(self) -> float:
        return self.lanes * self.lane_width / 2

    def centre(self, z):
        return self.offset + self.slope * z


def _street(rng: np.random.Generator) -> Street:
    lanes = int(rng.integers(2, 5))
    lane_width = rng.uniform(3.0, 3.6)
    ego_lane = rng.integers(lanes)
    offset = (lanes / 2 - ego_lane - 0.5) * lane_width + rng.uniform(-0.4, 0.4)
    sidewalk = tuple(float(rng.uniform(1.8, 4.0)) if rng.random() < 0.85 else 0.0 for _ in "lr")
    verge = tuple(float(rng.uniform(0, 5)) if rng.random() < 0.5 else 0.0 for _ in "lr")
    return Street(
        lane_width, lanes, offset, rng.uniform(-0.05, 0.05), sidewalk, verge, rng.uniform(90, 220)
    )


def _ground(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """Ray-cast the ground: road with lane markings, sidewalks with curbs and joints, terrain."""
    cam = canvas.camera
    rows, cols = _pixel_rays(cam.height, cam.width)
    y = (rows - cam.horizon) / cam.focal
    below = y > 1e-4
    z = np.where(below, cam.cam_height / np.maximum(y, 1e-4), SKY_DEPTH).astype(np.float32)
    lateral = (cols - cam.cx) / cam.focal * z - street.centre(z)
    side = (lateral > 0).astype(np.int64)  # 0 left, 1 right
    dist = np.abs(lateral)
    half = street.half_width
    sidewalk_w = np.asarray(street.sidewalk, np.float32)[side]
    road = dist < half
    sidewalk = ~road & (dist < half + sidewalk_w)
    road_id = canvas.new_instance(ROAD, rng)
    walk_ids = np.array([canvas.new_instance(SIDEWALK, rng) for _ in "lr"])
    terrain_ids = np.array([canvas.new_instance(TERRAIN, rng) for _ in "lr"])
    instance = np.where(road, road_id, np.where(sidewalk, walk_ids[side], terrain_ids[side]))
    # markings thicker than a pixel far away so they stay visible when tiny
    line = np.maximum(0.12, 0.7 * z / cam.focal)
    part = np.zeros(z.shape, np.uint8)
    boundaries = (np.arange(1, street.lanes) - street.lanes / 2) * street.lane_width
    dashed = np.mod(z, 9.0) < 3.0
    for b in boundaries:
        part[road & (np.abs(lateral - b) < line) & dashed] = Part.LANE
    part[road & (np.abs(dist - (half - 0.3)) < line)] = Part.LANE
    tile = 0.5
    joint = (np.mod(lateral, tile) < 0.05) | (np.mod(z, tile) < 0.05)
    part[sidewalk & joint] = Part.JOINT
    part[sidewalk & (dist - half < np.maximum(0.2, z / cam.focal))] = Part.CURB
    canvas.draw_surface(
        below & (z < street.end), z, instance, lateral, z, Facing.GROUND, part
    )


def _facade_layer(
    canvas: Canvas,
    street: Street,
    side: int,
    distance: float,
    kinds: tuple[int, ...],
    probs: tuple[float, ...],
    heights: dict[int, tuple[float, float]],
    rng: np.random.Generator,
) -> None:
    """One vertical plane parallel to the road, split into blocks of random class and height."""
    cam = canvas.camera
    rows, cols = _pixel_rays(cam.height, cam.width)
    x = (cols - cam.cx) / cam.focal
    y = (rows - cam.horizon) / cam.focal
    sign = -1 if side == 0 else 1
    denom = x - street.slope
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (street.offset + sign * distance) / denom
    valid = (z > 0.5) & (z < street.end)
    z = np.where(valid, z, SKY_DEPTH).astype(np.float32)
    height = cam.cam_height - y * z
    bounds = [0.0]
    while bounds[-1] < street.end:
        bounds.append(bounds[-1] + rng.uniform(6, 25))
    n = len(bounds) - 1
    classes = rng.choice(np.array(kinds), size=n, p=np.array(probs))
    tops = np.array([rng.uniform(*heights.get(int(c), (0, 0))) for c in classes], np.float32)
    ids = np.array(
        [canvas.new_instance(int(c), rng) if c >= 0 else 0 for c in classes], np.int64
    )
    block = np.clip(np.searchsorted(np.asarray(bounds), z) - 1, 0, n - 1)
    mask = valid & (classes[block] >= 0) & (height >= 0) & (height < tops[block])
    cls = classes[block]
    part = np.zeros(z.shape, np.uint8)
    spacing = rng.uniform(2.2, 3.5)
    floor_h = rng.uniform(2.8, 3.6)
    wx, wy = np.mod(z, spacing) / spacing, np.mod(height, floor_h) / floor_h
    window = (cls == BUILDING) & (height > 2.5) & (wx > 0.3) & (wx < 0.75) & (wy > 0.3) & (wy < 0.8)
    cell = (np.floor(z / spacing) * 7 + np.floor(height / floor_h) * 13).astype(np.int64)
    part[window] = np.where((cell * 2654435761 % 97) < 30, Part.WINDOW_LIT, Part.WINDOW)[window]
    part[(cls == FENCE) & (np.mod(z, 0.35) < 0.12)] = Part.SLAT
    course = np.floor(height / 0.5)  # stone courses with staggered vertical joints
    stones = (np.mod(height, 0.5) < 0.07) | (np.mod(z + 0.45 * course, 0.9) < 0.1)
    part[(cls == WALL) & stones] = Part.JOINT
    facing = Facing.LEFT if side == 0 else Facing.RIGHT
    canvas.draw_surface(mask, z, ids[block], z, height, facing, part)


def _skyline(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """A far plane at the end of the street: buildings and tree lines of random heights."""
    cam = canvas.camera
    rows, cols = _pixel_rays(cam.height, cam.width)
    z = np.full(rows.shape, street.end, np.float32)
    lateral = (cols - cam.cx) / cam.focal * street.end
    height = cam.cam_height - (rows - cam.horizon) / cam.focal * street.end
    bounds = np.cumsum(rng.uniform(8, 40, size=64)) - 400
    classes = rng.choice(np.array([BUILDING, VEGETATION]), size=64, p=[0.6, 0.4])
    tops = rng.uniform(4, 35, size=64).astype(np.float32)
    ids = np.array([canvas.new_instance(int(c), rng) for c in classes])
    block = np.clip(np.searchsorted(bounds, lateral), 0, 63)
    mask = height < tops[block]
    canvas.draw_surface(mask, z, ids[block], lateral, height, Facing.FRONT)


def _sky(canvas: Canvas, rng: np.random.Generator) -> None:
    cam = canvas.camera
    rows, cols = _pixel_rays(cam.height, cam.width)
    sky = canvas.new_instance(SKY, rng)
    canvas.instance[:] = sky
    canvas.texcoord[0] = (cols - cam.cx) / cam.focal * 60
    canvas.texcoord[1] = (cam.horizon - rows) / cam.focal * 60


def _sides(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    for side in (0, 1):
        edge = street.half_width + street.sidewalk[side] + street.verge[side]
        urban = rng.random() < 0.75
        near = (WALL, FENCE, VEGETATION, -1)
        near_p = (0.2, 0.2, 0.25, 0.35) if urban else (0.1, 0.3, 0.4, 0.2)
        low = {WALL: (0.8, 2.5), FENCE: (0.9, 2.0), VEGETATION: (1.0, 3.0)}
        _facade_layer(canvas, street, side, edge + 0.2, near, near_p, low, rng)
        far = (BUILDING, VEGETATION, -1)
        far_p = (0.8, 0.1, 0.1) if urban else (0.15, 0.6, 0.25)
        tall = {BUILDING: (6.0, 30.0), VEGETATION: (4.0, 12.0)}
        _facade_layer(canvas, street, side, edge + rng.uniform(0.5, 6), far, far_p, tall, rng)


def _roadside_objects(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """Trees, poles carrying signs and traffic lights, and pedestrians beside the road."""
    draw = canvas.draw_billboard
    for side in (0, 1):
        sign = -1 if side == 0 else 1
        kerb = street.half_width + 0.5
        outer = street.half_width + street.sidewalk[side] + street.verge[side]
        for _ in range(rng.integers(0, 7)):
            z = rng.uniform(4, 90)
            lateral = rng.uniform(kerb + 0.5, max(outer, kerb + 1.0))
            w, h = rng.uniform(2.5, 6.0), rng.uniform(4.0, 11.0)
            draw(tree_shape, VEGETATION, street.centre(z) + sign * lateral, z, w, h, rng)
        for _ in range(rng.integers(1, 7)):
            z = 4 + 36 * rng.random() ** 1.5  # thin objects mostly near, where they are visible
            x = street.centre(z) + sign * (kerb + rng.uniform(0, 0.6))
            pole_h = rng.uniform(3.5, 8.0)
            draw(pole_shape, POLE, x, z, rng.uniform(0.25, 0.4), pole_h, rng, min_px=1.5)
            carried = rng.random()
            if carried < 0.45:
                size = rng.uniform(0.8, 1.2)
                elev = rng.uniform(2.0, max(2.1, pole_h - size))
                draw(sign_shape, SIGN, x, z - 0.05, size, size, rng, elevation=elev)
            elif carried < 0.8:
                tl_h = rng.uniform(1.3, 1.7)
                elev = max(2.2, pole_h - tl_h - rng.uniform(0, 1))
                draw(traffic_light_shape, LIGHT, x, z - 0.05, 0.7, tl_h, rng, elevation=elev)
        if street.sidewalk[side] > 0:
            for _ in range(rng.integers(0, 5)):
                z = 3 + 25 * rng.random() ** 1.3
                lateral = rng.uniform(kerb, street.half_width + street.sidewalk[side])
                h = rng.uniform(1.55, 1.95)
                draw(person_shape, PERSON, street.centre(z) + sign * lateral, z, 0.75, h, rng)


_VEHICLES = (  # class, shape, width range, height range, probability
    (CAR, car_shape, (1.7, 2.0), (1.4, 1.7), 0.7),
    (TRUCK, truck_shape, (2.3, 2.6), (3.0, 3.8), 0.15),
    (BUS, bus_shape, (2.5, 2.7), (3.0, 3.4), 0.15),
)


def _vehicles(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """Traffic in the lanes and cars parked along the kerbs, each with a contact shadow."""
    probs = [v[4] for v in _VEHICLES]
    for _ in range(rng.integers(0, 9)):
        cls, shape, wr, hr, _p = _VEHICLES[rng.choice(len(_VEHICLES), p=probs)]
        z = rng.uniform(5, 80)
        if rng.random() < 0.3:
            lateral = rng.choice([-1, 1]) * (street.half_width - 1.1)
        else:
            lane = rng.integers(street.lanes)
            lateral = (lane + 0.5 - street.lanes / 2) * street.lane_width + rng.uniform(-0.3, 0.3)
        w, h = rng.uniform(*wr), rng.uniform(*hr)
        x = street.centre(z) + lateral
        if canvas.draw_billboard(shape, cls, x, z, w, h, rng) is not None:
            _shadow(canvas, x, z, w)


def _shadow(canvas: Canvas, x: float, z: float, width: float) -> None:
    """Darken ground pixels just under a vehicle (between its wheels and slightly behind)."""
    cam = canvas.camera
    scale = cam.focal / z
    u0 = int(max(np.floor(cam.cx + (x - width / 2) * scale), 0))
    u1 = int(min(np.ceil(cam.cx + (x + width / 2) * scale), cam.width))
    v1 = cam.horizon + cam.cam_height * scale
    v0 = cam.horizon + cam.cam_height * cam.focal / (z + 1.0)
    r0, r1 = int(max(np.floor(v0), 0)), int(min(np.ceil(v1 + 1), cam.height))
    if u1 <= u0 or r1 <= r0:
        return
    window = (slice(r0, r1), slice(u0, u1))
    ground = canvas.facing[window] == Facing.GROUND
    canvas.part[window][ground] = Part.SHADOW


def random_camera(height: int, width: int, rng: np.random.Generator) -> Camera:
    """A dash-cam: focal ≈ image width, horizon a bit above the middle, 1.3–1.7 m high."""
    return Camera(
        height=height,
        width=width,
        focal=width * rng.uniform(0.9, 1.1),
        cx=width / 2 + rng.uniform(-0.03, 0.03) * width,
        horizon=height * rng.uniform(0.38, 0.48),
        cam_height=rng.uniform(1.3, 1.7),
    )


def generate_layout(height: int, width: int, rng: np.random.Generator) -> Canvas:
    """Build a random street scene; returns the canvas so callers can paste more objects.

    Call ``.layout()`` on the result for the finished ``Layout``.
    """
    street = _street(rng)
    canvas = Canvas(random_camera(height, width, rng), street)
    _sky(canvas, rng)
    _skyline(canvas, street, rng)
    _ground(canvas, street, rng)
    _sides(canvas, street, rng)
    _roadside_objects(canvas, street, rng)
    _vehicles(canvas, street, rng)
    return canvas
