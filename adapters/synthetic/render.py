"""Turn a ``Layout`` into an RGB image in a given domain.

``render(layout, domain, seed)`` paints every instance with a colour drawn from its class's
palette (indexed by the instance's ``tone``, so one layout rendered in two domains keeps
"the same" red car), modulates it with a tiled noise texture in surface coordinates (so
textures shrink with perspective), paints parts (windows, lane markings, wheels, lamps), shades
by surface orientation under a random sun, then applies the domain's weather shifts and sensor
noise. Class colour distributions overlap on purpose (grey road, grey walls, grey cars, grey
poles): classes are learnable only from texture, shape and context.

Domains: ``"clear"`` (the training domain), ``"fog"``, ``"night"``, ``"rain"``, ``"snow"``,
``"new-city"`` (another city's palettes and textures), and combinations joined by ``+``
(``"new-city+night"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ood_bench.errors import OodBenchError

from .layout import MATERIALS, SKY, Facing, Layout, Part
from .shifts import SHIFTS, SceneHints

WEATHERS = tuple(SHIFTS)
STYLES = ("clear", "new-city")
DOMAINS = ("clear", "new-city", *WEATHERS)
_TILE = 128


@lru_cache(maxsize=1)
def noise_tiles() -> np.ndarray:
    """Two tileable 128×128 noise textures (1/f spectrum), zero mean and unit variance."""
    rng = np.random.default_rng(20240607)
    freq = np.fft.fftfreq(_TILE)
    radius = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    radius[0, 0] = 1.0
    tiles = []
    for exponent in (1.0, 1.6):
        spectrum = np.fft.fft2(rng.normal(size=(_TILE, _TILE))) / radius**exponent
        spectrum[0, 0] = 0
        tile = np.fft.ifft2(spectrum).real
        tiles.append((tile - tile.mean()) / tile.std())
    return np.stack(tiles).astype(np.float32)


def _rgb(*colours: tuple[int, int, int]) -> list[list[float]]:
    return [[c / 255 for c in colour] for colour in colours]


_GREY = ((120, 120, 120),) * 4
#: material -> (palette anchors, texture amplitude, texture scale in tile pixels per metre)
_CLEAR = {
    "road": ((80, 80, 84), (100, 98, 96), (118, 116, 113), (70, 72, 78)),
    "sidewalk": ((140, 135, 130), (160, 150, 140), (120, 118, 120), (150, 122, 112)),
    "building": ((150, 140, 125), (120, 115, 110), (140, 90, 70), (190, 185, 175)),
    "wall": ((130, 125, 115), (160, 150, 135), (100, 100, 100), (170, 160, 150)),
    "fence": ((90, 90, 85), (110, 85, 60), (70, 100, 70), (140, 140, 140)),
    "pole": ((90, 90, 90), (120, 120, 115), (60, 65, 70), (140, 140, 135)),
    "traffic light": ((40, 40, 40), (60, 60, 55), (170, 150, 40), (30, 35, 30)),
    "traffic sign": ((200, 40, 40), (40, 70, 170), (220, 190, 40), (210, 210, 210)),
    "vegetation": ((60, 100, 40), (80, 120, 50), (50, 80, 35), (100, 120, 60)),
    "terrain": ((110, 130, 70), (130, 120, 80), (90, 110, 60), (140, 130, 100)),
    "sky": ((130, 170, 220), (160, 190, 230), (190, 200, 215), (110, 150, 210)),
    "person": ((180, 40, 40), (40, 40, 50), (60, 80, 140), (200, 190, 170)),
    "car": ((200, 200, 205), (30, 30, 35), (150, 20, 25), (40, 60, 120)),
    "truck": ((220, 220, 220), (180, 180, 170), (60, 90, 140), (180, 60, 40)),
    "bus": ((200, 200, 60), (40, 110, 190), (200, 60, 50), (230, 230, 230)),
    "animal": ((120, 80, 50), (200, 190, 170), (40, 35, 30), (190, 110, 40)),
    "debris": ((150, 80, 40), (40, 90, 170), (140, 130, 120), (120, 90, 50)),
    "box": ((170, 130, 80), (190, 150, 100), (220, 215, 205), (60, 130, 70)),
    "tyre": ((25, 25, 25), (35, 33, 30), (45, 45, 45), (20, 20, 22)),
    "ball": ((230, 60, 40), (240, 200, 30), (40, 160, 220), (250, 250, 250)),
    "chair": ((160, 110, 60), (230, 230, 230), (200, 40, 40), (60, 60, 60)),
    "barrel": ((30, 80, 180), (200, 40, 30), (230, 190, 30), (150, 150, 160)),
    "bag": ((20, 20, 20), (230, 230, 230), (40, 70, 160), (100, 120, 60)),
}
_CLEAR_TEXTURE = {
    "road": (0.08, 20), "sidewalk": (0.08, 10), "building": (0.1, 4), "wall": (0.18, 8),
    "fence": (0.12, 10), "pole": (0.05, 10), "traffic light": (0.05, 10),
    "traffic sign": (0.04, 10), "vegetation": (0.35, 12), "terrain": (0.2, 6), "sky": (0.0, 1),
    "person": (0.06, 10), "car": (0.04, 5), "truck": (0.06, 5), "bus": (0.05, 5),
    "animal": (0.3, 14), "debris": (0.35, 10), "box": (0.12, 6), "tyre": (0.2, 12),
}  # fmt: skip
#: Another city: other paint, materials and vegetation; coarser, stronger textures.
_NEW_CITY = {
    **_CLEAR,
    "road": ((70, 58, 52), (96, 80, 70), (60, 60, 66), (110, 96, 84)),
    "sidewalk": ((190, 170, 120), (170, 160, 150), (200, 140, 110), (150, 150, 120)),
    "building": ((200, 150, 160), (150, 190, 200), (220, 200, 140), (120, 150, 110)),
    "wall": ((200, 180, 120), (150, 110, 90), (210, 210, 200), (120, 130, 140)),
    "fence": ((40, 40, 40), (180, 180, 170), (160, 60, 40), (60, 90, 120)),
    "vegetation": ((120, 110, 40), (150, 90, 30), (90, 100, 50), (70, 110, 80)),
    "terrain": ((170, 150, 100), (150, 120, 80), (120, 120, 90), (180, 170, 130)),
    "sky": ((200, 190, 170), (180, 190, 200), (210, 200, 190), (170, 180, 200)),
    "car": ((230, 190, 30), (30, 140, 140), (240, 240, 240), (110, 30, 90)),
    "person": ((230, 120, 30), (90, 30, 110), (30, 120, 60), (240, 240, 240)),
}
_NEW_CITY_TEXTURE = {
    **_CLEAR_TEXTURE,
    "road": (0.22, 6), "sidewalk": (0.18, 4), "building": (0.22, 8), "wall": (0.2, 3),
    "vegetation": (0.25, 5), "terrain": (0.3, 12),
}  # fmt: skip
_DEFAULT_TEXTURE = (0.12, 8)

# part -> (colour, mix, multiplier, emission); the part colour replaces ``mix`` of the base
_PARTS = {
    Part.LANE: ((235, 235, 230), 0.9, 1.0, None),
    Part.CURB: ((175, 175, 170), 0.5, 1.0, None),
    Part.JOINT: (None, 0.0, 0.8, None),
    Part.WINDOW: ((50, 60, 75), 0.85, 1.0, None),
    Part.WINDOW_LIT: ((62, 66, 76), 0.85, 1.0, (1.0, 0.8, 0.45)),
    Part.SLAT: (None, 0.0, 0.6, None),
    Part.WHEEL: ((20, 20, 20), 0.95, 1.0, None),
    Part.GLASS: ((40, 50, 65), 0.85, 1.0, None),
    Part.TAIL_LIGHT: ((170, 20, 20), 0.9, 1.0, (1.0, 0.1, 0.05)),
    Part.LAMP_RED: ((230, 30, 20), 1.0, 1.0, (1.0, 0.15, 0.1)),
    Part.LAMP_AMBER: ((240, 170, 20), 1.0, 1.0, (1.0, 0.7, 0.1)),
    Part.LAMP_GREEN: ((40, 220, 120), 1.0, 1.0, (0.2, 1.0, 0.6)),
    Part.LAMP_OFF: ((50, 50, 45), 0.9, 1.0, None),
    Part.SKIN: ((220, 180, 150), 0.9, 1.0, None),
    Part.HAIR: ((50, 35, 25), 0.9, 1.0, None),
    Part.LEGS: ((50, 55, 70), 0.8, 1.0, None),
    Part.TRUNK: ((90, 65, 45), 0.9, 1.0, None),
    Part.SIGN_FACE: ((240, 240, 235), 0.85, 1.0, None),
    Part.SHADOW: (None, 0.0, 0.45, None),
    Part.STRIPE: (None, 0.0, 0.45, None),
    Part.SHADE: (None, 0.0, 0.7, None),
    Part.HIGHLIGHT: (None, 0.0, 1.25, None),
}
_NEW_CITY_PARTS = {
    **_PARTS,
    Part.LANE: ((230, 190, 40), 0.9, 1.0, None),
    Part.WINDOW: ((170, 170, 160), 0.7, 1.0, None),
    Part.CURB: ((120, 120, 130), 0.6, 1.0, None),
}


@dataclass(frozen=True)
class Style:
    """Per-material palettes and textures, and per-part colours, of one city."""

    palette: np.ndarray  # M×K×3
    amplitude: np.ndarray  # M
    scale: np.ndarray  # M
    part_colour: np.ndarray  # P×3, already multiplied by the mix weight
    part_keep: np.ndarray  # P, multiplier of the base colour
    part_emission: np.ndarray  # P×3


def _style(palettes: dict, textures: dict, parts: dict) -> Style:
    palette = np.array([_rgb(*palettes.get(name, _GREY)) for name in MATERIALS], np.float32)
    texture = np.array([textures.get(name, _DEFAULT_TEXTURE) for name in MATERIALS], np.float32)
    n_parts = len(Part)
    colour = np.zeros((n_parts, 3), np.float32)
    keep = np.ones(n_parts, np.float32)
    emission = np.zeros((n_parts, 3), np.float32)
    for part, (rgb, mix, multiplier, emit) in parts.items():
        if rgb is not None:
            colour[part] = np.array(rgb, np.float32) / 255 * mix
        keep[part] = (1 - mix) * multiplier
        if emit is not None:
            emission[part] = emit
    return Style(palette, texture[:, 0], texture[:, 1], colour, keep, emission)


STYLE_TABLES = {
    "clear": _style(_CLEAR, _CLEAR_TEXTURE, _PARTS),
    "new-city": _style(_NEW_CITY, _NEW_CITY_TEXTURE, _NEW_CITY_PARTS),
}


def parse_domain(domain: str) -> tuple[str, tuple[str, ...]]:
    """Split ``"new-city+fog"`` into the style (``"new-city"``) and the weather list."""
    style, weathers = "clear", []
    for token in domain.split("+"):
        if token in STYLES:
            style = token if token != "clear" else style
        elif token in WEATHERS:
            weathers.append(token)
        else:
            raise OodBenchError(
                f"unknown synthetic domain {token!r} in {domain!r}; expected one of "
                f"{', '.join(DOMAINS)}, or several joined by '+'"
            )
    return style, tuple(weathers)


def _albedo(layout: Layout, style: Style) -> tuple[np.ndarray, np.ndarray]:
    """Base colours with textures and parts painted (H×W×3), and the emission map."""
    tone = layout.tone
    k = style.palette.shape[1]
    anchor = np.minimum((tone[:, 0] * k).astype(np.int64), k - 1)
    colour = style.palette[layout.material, anchor]
    grey = colour.mean(axis=1, keepdims=True)
    colour = (grey + (colour - grey) * (0.6 + 0.8 * tone[:, 2:3])) * (0.8 + 0.4 * tone[:, 1:2])
    instance = layout.instance
    material = layout.material[instance]
    image = colour[instance]
    tiles = noise_tiles()
    scale = style.scale[material]
    offset = tone[instance, 1] * 977
    iu = (layout.texcoord[0] * scale + offset).astype(np.int64) & (_TILE - 1)
    iv = (layout.texcoord[1] * scale + offset).astype(np.int64) & (_TILE - 1)
    image = image * (1 + style.amplitude[material] * tiles[0][iv, iu])[..., None]
    sky = material == SKY
    if sky.any():
        up = np.clip(layout.texcoord[1] / 30, 0, 1)[..., None]
        gradient = image * (1.15 - 0.35 * up) + 0.1 * (1 - up)
        cloud_u = (layout.texcoord[0] * 2).astype(np.int64) & (_TILE - 1)
        cloud_v = (layout.texcoord[1] * 4).astype(np.int64) & (_TILE - 1)
        clouds = np.clip(tiles[1][cloud_v, cloud_u] * 0.5, 0, 1)[..., None] * tone[0, 1]
        image = np.where(sky[..., None], gradient + (0.92 - gradient) * clouds, image)
    part = layout.part
    image = image * style.part_keep[part][..., None] + style.part_colour[part]
    return image.astype(np.float32), style.part_emission[part]


def _shading(facing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lambertian factor per facing under a random sun (weak when overcast)."""
    elevation, azimuth = rng.uniform(0.3, 1.2), rng.uniform(0, 2 * np.pi)
    sun = rng.uniform(0.4, 0.6) * (0.3 if rng.random() < 0.35 else 1.0)
    ambient = rng.uniform(0.55, 0.7)
    horizontal = sun * np.cos(elevation)
    factors = np.array(
        [
            1.0,  # sky
            ambient + sun * np.sin(elevation),
            ambient + horizontal * max(0.0, np.cos(azimuth)),
            ambient + horizontal * max(0.0, -np.cos(azimuth)),
            ambient + horizontal * max(0.0, np.sin(azimuth)) * 0.8,
        ],
        np.float32,
    )
    factors[1:] /= max(factors[1:].max(), 1.0)
    return factors[facing]


def render(
    layout: Layout, domain: str = "clear", seed: int = 0, severity: float | None = None
) -> np.ndarray:
    """Render ``layout`` in ``domain``; returns H×W×3 uint8 RGB.

    ``seed`` fixes lighting, weather particles and noise; ``severity`` in [0, 1] sets the
    strength of the weather (default: drawn from ``seed`` in [0.5, 1]). The result is a pure
    function of the arguments.
    """
    style_name, weathers = parse_domain(domain)
    if severity is not None and not 0 <= severity <= 1:
        raise OodBenchError(f"severity must be in [0, 1], got {severity!r}")
    base_rng = np.random.default_rng([seed, 0])
    weather_rng = np.random.default_rng([seed, 1])
    image, emission = _albedo(layout, STYLE_TABLES[style_name])
    image *= _shading(layout.facing, base_rng)[..., None]
    white_balance = 1 + base_rng.normal(0, 0.03, 3).astype(np.float32)
    image *= base_rng.uniform(0.9, 1.1) * white_balance
    if weathers:
        level = weather_rng.uniform(0.5, 1.0) if severity is None else severity
        hints = SceneHints(
            ground=layout.facing == Facing.GROUND,
            sky=layout.facing == Facing.SKY,
            emission=emission,
        )
        for weather in weathers:
            image = SHIFTS[weather](image, layout.depth, level, weather_rng, hints)
    image = image + base_rng.normal(0, 0.012, image.shape).astype(np.float32)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
