"""Covariate shifts of the synthetic world: fog, night, rain and snow as image operations.

Every shift is a function ``shift(image, depth, severity, rng, hints=None) -> image`` on a linear
float RGB image in [0, 1] (H×W×3) with the scene's metric ``depth`` (H×W), a ``severity`` in
[0, 1] and a numpy ``Generator``. ``hints`` (optional) tell a shift where the ground, the sky and
the light sources are, so snow settles on horizontal surfaces and light sources glow at night;
without hints the shifts fall back to depth-only cues. The shifts model the physics that makes
real adverse conditions hard: fog's depth-dependent airlight, night's low exposure with sensor
noise and colour casts from artificial light, rain's wet darkening and streaks, snow's
whitening of horizontal surfaces and flakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .layout import SKY_DEPTH


@dataclass
class SceneHints:
    """Where the ground (H×W bool) and sky (H×W bool) are, and what emits light (H×W×3)."""

    ground: np.ndarray
    sky: np.ndarray
    emission: np.ndarray


def _hints(depth: np.ndarray, hints: SceneHints | None) -> SceneHints:
    if hints is not None:
        return hints
    sky = depth >= SKY_DEPTH
    return SceneHints(np.zeros_like(sky), sky, np.zeros((*depth.shape, 3), np.float32))


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur with edge padding (cumulative sums: cost independent of radius)."""
    if radius < 1:
        return image
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius + 1, radius)
        csum = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float32)
        n = out.shape[axis]
        hi = np.take(csum, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
        lo = np.take(csum, np.arange(0, n), axis=axis)
        out = (hi - lo) / (2 * radius + 1)
    return out


def _desaturate(image: np.ndarray, amount: float) -> np.ndarray:
    grey = image.mean(axis=2, keepdims=True)
    return image + (grey - image) * amount


def fog(image, depth, severity, rng, hints=None):
    """Koschmieder's law: ``I·t + A·(1−t)``, ``t = exp(−β·depth)``; visibility 300 m → 60 m."""
    visibility = 300.0 * (60.0 / 300.0) ** severity
    beta = 3.0 / visibility
    transmission = np.exp(-beta * np.minimum(depth, SKY_DEPTH))[..., None]
    airlight = rng.uniform(0.68, 0.85) * np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.02, 3)
    foggy = image * transmission + airlight.astype(np.float32) * (1 - transmission)
    return box_blur(foggy, 1) if severity > 0.8 else foggy


def night(image, depth, severity, rng, hints=None):
    """Low ambient light, ego headlights, street-lamp pools, glowing emitters, strong noise."""
    h = _hints(depth, hints)
    height, width = depth.shape
    ambient = 0.18 - 0.12 * severity
    rows = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    cols = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    # ego headlights: a cone on the lower image, fading with distance
    cone = np.exp(-((cols - 0.5) / (0.25 + 0.3 * rows)) ** 2) * np.exp(-depth / 18.0)
    light = ambient + 0.9 * cone
    # street lamps: warm pools around a few random image positions
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(0.45, 0.9), rng.uniform(0.0, 1.0)
        light = light + rng.uniform(0.2, 0.6) * np.exp(
            -(((rows - cy) / 0.12) ** 2) - ((cols - cx) / 0.15) ** 2
        )
    cast = np.array([1.0, 0.78, 0.5]) if rng.random() < 0.6 else np.array([0.75, 0.85, 1.0])
    lit = image * light[..., None] * cast.astype(np.float32)
    night_sky = np.array([0.02, 0.025, 0.05], np.float32) + 0.04 * (1 - rows)[..., None]
    lit = np.where(h.sky[..., None], night_sky, lit)
    glow = h.emission + 0.6 * box_blur(h.emission, max(1, width // 64))
    lit = lit + glow * (0.6 + 0.4 * severity)
    noise_sigma = 0.015 + 0.03 * severity
    lit = lit + rng.normal(0, 1, lit.shape).astype(np.float32) * noise_sigma * np.sqrt(
        np.clip(lit, 0.02, 1)
    )
    gain = 1.0 + 1.2 * severity  # auto-exposure lifts the noise floor with the signal
    return np.clip(lit, 0, None) * gain


def _streaks(shape, count, length, slant, rng) -> np.ndarray:
    """A layer of thin slanted streaks (rain) drawn by stepping all start points at once."""
    height, width = shape
    layer = np.zeros(shape, np.float32)
    ys = rng.integers(-length, height, size=count)
    xs = rng.integers(0, width, size=count)
    strength = rng.uniform(0.3, 1.0, size=count).astype(np.float32)
    for step in range(length):
        y = ys + step
        x = (xs + np.round(step * slant)).astype(np.int64)
        ok = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        np.add.at(layer, (y[ok], x[ok]), strength[ok])
    return layer


def rain(image, depth, severity, rng, hints=None):
    """Overcast dimming, wet (darker, glossier) ground, rain streaks and a blurred windscreen."""
    h = _hints(depth, hints)
    height, width = depth.shape
    out = _desaturate(image * (0.8 - 0.25 * severity), 0.2 + 0.3 * severity)
    wet = h.ground[..., None]
    sheen = box_blur(out, max(1, height // 32))
    # wet asphalt: darker diffuse colour plus a smooth, blurred reflection of the scene
    out = np.where(wet, 0.5 * out + 0.3 * sheen * (1 + 0.3 * severity), out)
    out = fog(out, depth, 0.25 * severity, rng)  # spray and mist
    count = int(severity * height * width / 60)
    length = max(3, height // 12)
    streaks = _streaks((height, width), count, length, rng.uniform(-0.4, 0.4), rng)
    out = out + 0.25 * np.clip(streaks, 0, 1)[..., None] * (0.6 + 0.4 * severity)
    if rng.random() < 0.5 * severity:
        out = box_blur(out, 1)
    return out


def snow(image, depth, severity, rng, hints=None):
    """Snow on horizontal surfaces (patchy, tyre tracks stay dark), flakes, bright haze."""
    h = _hints(depth, hints)
    height, width = depth.shape
    patches = box_blur(rng.random((height, width)).astype(np.float32), max(1, height // 24))
    patches = (patches - patches.mean()) / (patches.std() + 1e-6)
    cover = np.clip(0.5 + 1.5 * severity + 0.6 * patches, 0, 1)
    # top edges of objects (depth jumps behind them) catch snow too
    top = np.zeros_like(h.ground)
    top[1:] = depth[:-1] > depth[1:] * 1.3
    surface = (h.ground | top) & ~h.sky
    white = np.float32(0.88) + rng.normal(0, 0.03, (height, width, 1)).astype(np.float32)
    cover = np.where(surface, cover * (0.55 + 0.4 * severity), 0)[..., None]
    out = image * (1 - cover) + white * cover
    out = _desaturate(out, 0.4) * np.array([0.95, 0.98, 1.05], np.float32)
    out = fog(out, depth, 0.5 * severity, rng)
    flakes = np.zeros((height, width), np.float32)
    count = int(severity * height * width / 25)
    ys, xs = rng.integers(0, height, count), rng.integers(0, width, count)
    flakes[ys, xs] = rng.uniform(0.5, 1.0, count)
    flakes = np.maximum(flakes, 0.8 * box_blur(flakes, 1))
    return out + (0.9 - out) * np.clip(flakes, 0, 1)[..., None]


Shift = Callable[..., np.ndarray]
#: Weather shifts by domain name ("new-city" is a palette/texture shift done by the renderer).
SHIFTS: dict[str, Shift] = {"fog": fog, "night": night, "rain": rain, "snow": snow}
