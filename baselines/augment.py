"""Rule-based photometric and weather-style augmentation for the domain-generalisation baseline.

Every transform maps a uint8 H×W×3 RGB image to a new uint8 H×W×3 image and draws all its
randomness from the ``numpy.random.Generator`` it is given (same generator state → same output).
They are written from scratch as simple image-space rules, independent of the synthetic world's
test-domain renderers (``adapters/synthetic/shifts.py``, which use the scene depth), so the
baseline never trains on the exact test shifts:

* :func:`color_jitter` — brightness, contrast, saturation (factors in ``1 ± strength``) and a
  hue rotation in YIQ space;
* :func:`gaussian_blur` — σ ∈ [0.1, 2] px;  :func:`gaussian_noise` — σ ∈ [0.01, 0.06];
* :func:`fog_style` — a blend towards a light grey haze, denser towards the top of the frame;
* :func:`rain_style` — darkening plus slanted bright streaks;
* :func:`snow_style` — brightening, lower contrast and soft white flakes;
* :func:`night_style` — a strong gamma darkening, a blue tint and sensor noise.

:func:`rule_augment` applies each photometric transform with probability ``p`` and then one
weather style (uniformly chosen) with probability ``p_weather``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _grey(x: np.ndarray) -> np.ndarray:
    return (x @ _LUMA)[..., None]


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.4,
                 hue: float = 0.05) -> np.ndarray:
    """Brightness, contrast and saturation scaled by factors in ``1 ± strength``; hue rotated
    by up to ``± hue`` turns (in YIQ chroma)."""
    x = _float(image)
    factors = rng.uniform(1 - strength, 1 + strength, size=3)
    angle = rng.uniform(-hue, hue) * 2 * np.pi
    x = x * factors[0]
    x = (x - _grey(x).mean()) * factors[1] + _grey(x).mean()
    x = (x - _grey(x)) * factors[2] + _grey(x)
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                       [0.211, -0.523, 0.312]], np.float32)
    c, s = np.cos(angle), np.sin(angle)
    rotate = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    matrix = np.linalg.inv(to_yiq) @ rotate @ to_yiq
    return _uint8(np.clip(x, 0, 1) @ matrix.T.astype(np.float32))


def gaussian_blur(image: np.ndarray, rng: np.random.Generator,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> np.ndarray:
    """Gaussian blur with σ drawn from ``sigma`` (pixels), channels independent."""
    s = rng.uniform(*sigma)
    return _uint8(ndimage.gaussian_filter(_float(image), sigma=(s, s, 0), mode="reflect"))


def gaussian_noise(image: np.ndarray, rng: np.random.Generator,
                   std: tuple[float, float] = (0.01, 0.06)) -> np.ndarray:
    """Additive white Gaussian noise with σ drawn from ``std`` (of the [0, 1] range)."""
    x = _float(image)
    return _uint8(x + rng.normal(0, rng.uniform(*std), size=x.shape).astype(np.float32))


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Low-frequency noise in [0, 1]: white noise blurred with σ = ``scale`` × the short side."""
    noise = ndimage.gaussian_filter(rng.random(shape).astype(np.float32),
                                    sigma=scale * min(shape), mode="wrap")
    span = noise.max() - noise.min()
    return (noise - noise.min()) / span if span > 0 else np.zeros(shape, np.float32)


def fog_style(image: np.ndarray, rng: np.random.Generator,
              density: tuple[float, float] = (0.3, 0.7)) -> np.ndarray:
    """Blend towards a light grey haze, denser towards the top and in soft patches."""
    x = _float(image)
    h, w = x.shape[:2]
    ramp = np.linspace(1.0, 0.35, h, dtype=np.float32)[:, None]
    patches = 0.75 + 0.25 * _smooth_noise((h, w), rng, 0.15)
    alpha = (rng.uniform(*density) * ramp * patches)[..., None]
    haze = rng.uniform(0.7, 0.9)
    return _uint8(x * (1 - alpha) + haze * alpha)


def rain_style(image: np.ndarray, rng: np.random.Generator,
               density: tuple[float, float] = (0.005, 0.02)) -> np.ndarray:
    """Darken and overlay thin slanted streaks (random drops smeared along a line)."""
    x = _float(image) * rng.uniform(0.65, 0.9)
    h, w = x.shape[:2]
    length = max(3, int(rng.uniform(0.04, 0.1) * h))
    slant = rng.uniform(-0.4, 0.4)
    kernel = np.zeros((length, length + int(abs(slant) * length) + 1), np.float32)
    for row in range(length):
        col = int(round(row * abs(slant)))
        kernel[row, col if slant >= 0 else kernel.shape[1] - 1 - col] = 1.0
    drops = (rng.random((h, w)) < rng.uniform(*density)).astype(np.float32)
    streaks = np.clip(ndimage.convolve(drops, kernel, mode="constant"), 0, 1)[..., None]
    strength = rng.uniform(0.3, 0.6)
    return _uint8(x * (1 - strength * streaks) + 0.85 * strength * streaks)


def snow_style(image: np.ndarray, rng: np.random.Generator,
               density: tuple[float, float] = (0.01, 0.04)) -> np.ndarray:
    """Brighten, flatten contrast and add soft white flakes of random size."""
    x = _float(image)
    h, w = x.shape[:2]
    x = 0.75 * x + 0.25 * rng.uniform(0.8, 0.95)
    flakes = (rng.random((h, w)) < rng.uniform(*density)).astype(np.float32)
    flakes = ndimage.gaussian_filter(flakes, sigma=rng.uniform(0.5, 1.2), mode="constant")
    flakes = np.clip(flakes / max(flakes.max(), 1e-6) * 1.5, 0, 1)[..., None]
    return _uint8(x * (1 - flakes) + flakes)


def night_style(image: np.ndarray, rng: np.random.Generator,
                gamma: tuple[float, float] = (1.8, 3.0)) -> np.ndarray:
    """Gamma darkening, a dimmer exposure, a blue tint and sensor noise."""
    x = _float(image) ** rng.uniform(*gamma) * rng.uniform(0.35, 0.7)
    x = x * np.array([0.8, 0.9, 1.1], np.float32)
    return _uint8(x + rng.normal(0, 0.02, size=x.shape).astype(np.float32))


PHOTOMETRIC: tuple[Transform, ...] = (color_jitter, gaussian_blur, gaussian_noise)
WEATHER: tuple[Transform, ...] = (fog_style, rain_style, snow_style, night_style)


def rule_augment(image: np.ndarray, rng: np.random.Generator, p: float = 0.5,
                 p_weather: float = 0.5) -> np.ndarray:
    """Each photometric transform with probability ``p`` (in a fixed order), then one weather
    style chosen uniformly with probability ``p_weather``."""
    for transform in PHOTOMETRIC:
        if rng.random() < p:
            image = transform(image, rng)
    if rng.random() < p_weather:
        image = WEATHER[int(rng.integers(len(WEATHER)))](image, rng)
    return image
