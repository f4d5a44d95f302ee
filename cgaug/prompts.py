"""Text prompts of the ControlNet generator (``CGAug/config.py`` / ``get_prompt`` recipe).

Half of the prompts are the plain dash-cam sentence; the others add a place, a weather
(cloudy, rainy, snowy, foggy, clear) and a time of day (day with probability 0.7, else night).
Every prompt then names the novel object ("There is a {class} accidentally staying on the
road.") and ends with the quality suffix; a fixed negative prompt goes with it.

The reference samples from 96 city/region names that our notes do not list in full; the
default ``PLACES`` below is our own list of world cities (configurable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PLAIN = "An image sampled from various stereo video sequences taken by dash cam"
OBJECT_SENTENCE = "There is a {name} accidentally staying on the road."
QUALITY_SUFFIX = "best quality, extremely detailed, realistic, high resolution"
NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, cartoon, video progress bar, TV program icon, "
    "grey picture"
)
WEATHERS = ("cloudy", "rainy", "snowy", "foggy", "clear")
PLACES = (
    "New York City", "Tokyo", "Paris", "London", "Berlin", "Rome", "Madrid", "Moscow",
    "Beijing", "Shanghai", "Mumbai", "Delhi", "Cairo", "Lagos", "Nairobi", "Cape Town",
    "Sydney", "Melbourne", "Auckland", "Toronto", "Vancouver", "Mexico City", "Sao Paulo",
    "Buenos Aires", "Lima", "Bogota", "Santiago", "Istanbul", "Dubai", "Tehran", "Bangkok",
    "Hanoi", "Seoul", "Singapore", "Jakarta", "Manila", "Stockholm", "Oslo", "Reykjavik",
    "Anchorage", "Walvis Bay",
)  # fmt: skip


@dataclass(frozen=True)
class Prompt:
    """The positive and negative prompt and the domain they describe (``weather``/``time``/
    ``place`` are ``None`` for the plain prompt)."""

    text: str
    negative: str
    weather: str | None = None
    time: str | None = None
    place: str | None = None

    @property
    def domain(self) -> str:
        """``""`` for the plain prompt, else ``weather_time_place`` (the reference's file tag)."""
        if self.weather is None:
            return ""
        return f"{self.weather}_{self.time}_{self.place}"


@dataclass(frozen=True)
class PromptSampler:
    """Draws :class:`Prompt` s; every probability and list is configurable."""

    plain_probability: float = 0.5
    day_probability: float = 0.7
    weathers: Sequence[str] = WEATHERS
    places: Sequence[str] = PLACES
    negative: str = NEGATIVE_PROMPT

    def sample(self, object_class: str, rng: np.random.Generator) -> Prompt:
        obj = OBJECT_SENTENCE.format(name=object_class)
        if rng.random() < self.plain_probability:
            return Prompt(f"{PLAIN}., {obj}, {QUALITY_SUFFIX}", self.negative)
        weather = self.weathers[int(rng.integers(len(self.weathers)))]
        time = "day" if rng.random() < self.day_probability else "night"
        place = self.places[int(rng.integers(len(self.places)))]
        base = f"{PLAIN} in {place} in a {weather} {time}."
        return Prompt(f"{base}, {obj}, {QUALITY_SUFFIX}", self.negative, weather, time, place)


#: The paper's prompt recipe.
DEFAULT_PROMPTS = PromptSampler()
