"""Semantic-to-image generators: a pasted label map in, a coherent image of it out.

* :class:`ControlNetGenerator` — Stable Diffusion 1.5 with a segmentation ControlNet
  (diffusers ``StableDiffusionControlNetPipeline``): the label map painted in the ADE20K
  palette conditions the image, a sampled prompt sets place/weather/time, DDIM 50 steps,
  guidance 9.0, eta 0, short side 512 (multiples of 64), seeded per sample. Weights are read
  from local folders or the Hugging Face cache only (never downloaded).
* :class:`SyntheticGenerator` — the synthetic world's renderer: the source frame's own 3-D
  layout with the object inserted as a billboard standing in the scene, rendered in a domain
  drawn the way the prompts are (plain prompt → the training domain; otherwise another city,
  with the prompt's weather and time). Coherent by construction. Its ``mode`` gives the
  variants of the paper's Table 4 ablation (:data:`SYNTHETIC_MODES`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ood_bench.adapters.synthetic.layout import (
    OUTLIER_EXPOSURE_KINDS,
    Facing,
    Layout,
    material_code,
)
from ood_bench.adapters.synthetic.render import render
from ood_bench.errors import DataNotFoundError, OodBenchError

from .paste import Pasted, ade20k_colour_map
from .prompts import DEFAULT_PROMPTS, Prompt, PromptSampler


@dataclass
class Generated:
    """A generated image (H×W×3 uint8, the label map's size), its domain tag and prompt;
    ``drawn`` is False when the image holds no novel object (domain shift only)."""

    image: np.ndarray
    domain: str
    prompt: Prompt
    drawn: bool = True


class Generator:
    """``generate(pasted, seed, layout)`` → :class:`Generated`; same seed, same image.
    ``needs_layout``: the generator renders the source frame's synthetic layout."""

    name = ""
    needs_layout = False

    def generate(self, pasted: Pasted, seed: int, layout: Layout | None = None) -> Generated:
        raise NotImplementedError


def model_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side`` and both rounded to multiples of 64."""
    factor = short_side / min(height, width)
    return (max(64, round(height * factor / 64) * 64), max(64, round(width * factor / 64) * 64))


class ControlNetGenerator(Generator):
    """SD 1.5 + segmentation ControlNet, loaded offline from ``sd`` and ``controlnet`` (local
    folders in the diffusers layout, or repo ids already in the Hugging Face cache)."""

    name = "controlnet"

    def __init__(self, controlnet: str | Path, sd: str | Path, *, steps: int = 50,
                 guidance: float = 9.0, short_side: int = 512, device: str | None = None,
                 dtype: str | None = None, prompts: PromptSampler = DEFAULT_PROMPTS) -> None:
        import torch
        from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline

        if steps < 1 or short_side < 64:
            raise OodBenchError(f"steps must be >= 1 and short_side >= 64, got {steps}, "
                                f"{short_side}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float16" if self.device.startswith("cuda") else "float32")
        if dtype not in ("float16", "bfloat16", "float32"):
            raise OodBenchError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
        torch_dtype = getattr(torch, dtype)
        try:
            control = ControlNetModel.from_pretrained(str(controlnet), dtype=torch_dtype,
                                                      local_files_only=True)
            pipe = StableDiffusionControlNetPipeline.from_pretrained(
                str(sd), controlnet=control, dtype=torch_dtype, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False, local_files_only=True)
        except (OSError, ValueError) as error:
            raise DataNotFoundError(
                f"cannot load the ControlNet from {str(controlnet)!r} or Stable Diffusion from "
                f"{str(sd)!r} offline ({error}); pass local folders in the diffusers layout "
                "(e.g. lllyasviel/sd-controlnet-seg and stable-diffusion-v1-5)") from None
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.steps, self.guidance, self.short_side = steps, guidance, short_side
        self.prompts = prompts

    def generate(self, pasted: Pasted, seed: int, layout: Layout | None = None) -> Generated:
        import torch

        rng = np.random.default_rng([seed, 0])
        prompt = self.prompts.sample(pasted.object_class, rng)
        height, width = pasted.label.shape
        size_h, size_w = model_size(height, width, self.short_side)
        colours = Image.fromarray(ade20k_colour_map(pasted.label, pasted.object_class))
        control = colours.resize((size_w, size_h), Image.NEAREST)
        generator = torch.Generator(self.device).manual_seed(int(seed) % 2**63)
        result = self.pipe(
            prompt.text, image=control, negative_prompt=prompt.negative, height=size_h,
            width=size_w, num_inference_steps=self.steps, guidance_scale=self.guidance, eta=0.0,
            generator=generator, output_type="np")
        image = np.clip(result.images[0] * 255 + 0.5, 0, 255).astype(np.uint8)
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
        return Generated(image, prompt.domain, prompt)


#: Prompt weather → synthetic weather shift (cloudy and clear add none).
SYNTHETIC_WEATHER = {"rainy": "rain", "snowy": "snow", "foggy": "fog"}


def synthetic_domain(prompt: Prompt) -> str:
    """The synthetic domain a prompt describes: the plain prompt is the training domain
    (``clear``); a named place is another city, plus its weather and night."""
    if prompt.weather is None:
        return "clear"
    parts = ["new-city"]
    if prompt.weather in SYNTHETIC_WEATHER:
        parts.append(SYNTHETIC_WEATHER[prompt.weather])
    if prompt.time == "night":
        parts.append("night")
    return "+".join(parts)


def insert_object(layout: Layout, pasted: Pasted, rng: np.random.Generator) -> Layout:
    """``layout`` with the pasted object as a camera-facing billboard standing at the depth of
    the road pixel it is centred on, with metric texture coordinates and its part codes."""
    if layout.instance.shape != pasted.mask.shape:
        raise OodBenchError(f"layout {layout.instance.shape} and label {pasted.mask.shape} "
                            "differ in size")
    if pasted.object_class not in OUTLIER_EXPOSURE_KINDS:
        raise OodBenchError(f"the synthetic renderer draws only {', '.join(OUTLIER_EXPOSURE_KINDS)}"
                            f", not {pasted.object_class!r}")
    material = material_code(pasted.object_class)
    mask = pasted.mask
    z = float(layout.depth[pasted.centre])
    camera = layout.camera
    scale = camera.focal / z
    rows, cols = np.nonzero(mask)
    bottom = rows.max() + 1
    instance = layout.instance.copy()
    instance[mask] = len(layout.material)
    depth = layout.depth.copy()
    depth[mask] = z
    texcoord = layout.texcoord.copy()
    texcoord[0][mask] = (cols + 0.5 - camera.cx) / scale
    texcoord[1][mask] = (bottom - rows - 0.5) / scale
    part = layout.part.copy()
    part[mask] = 0 if pasted.part is None else pasted.part[mask]
    facing = layout.facing.copy()
    facing[mask] = Facing.FRONT
    return replace(
        layout, instance=instance, depth=depth, texcoord=texcoord, part=part, facing=facing,
        material=np.append(layout.material, np.int16(material)),
        tone=np.vstack([layout.tone, rng.random((1, 3), dtype=np.float32)]))


#: Variants of the synthetic generator (the paper's Table 4 rows, in the synthetic world):
#: ``coherent`` — CG-Aug: the object stands in the scene, everything rendered in the sampled
#: domain (DS and SS, coherent); ``semantic`` — the object rendered in the training domain (SS
#: only, POC-like); ``domain`` — the scene in the sampled domain without the object (DS only);
#: ``either`` — per frame, ``semantic`` or ``domain`` with probability 1/2 (DS or SS);
#: ``incoherent`` — the scene without the object in the sampled domain, the object cut from a
#: training-domain rendering and pasted on it (DS and SS, incoherent). Every mode draws the
#: same prompt (and domain) for a given seed.
SYNTHETIC_MODES = ("coherent", "semantic", "domain", "either", "incoherent")


class SyntheticGenerator(Generator):
    """Renders the source frame's layout with the object inserted (needs ``layout``); ``mode``
    picks a variant of :data:`SYNTHETIC_MODES`."""

    name = "synthetic"
    needs_layout = True

    def __init__(self, prompts: PromptSampler = DEFAULT_PROMPTS, mode: str = "coherent") -> None:
        if mode not in SYNTHETIC_MODES:
            raise OodBenchError(f"mode must be one of {', '.join(SYNTHETIC_MODES)}, got {mode!r}")
        self.prompts, self.mode = prompts, mode

    def generate(self, pasted: Pasted, seed: int, layout: Layout | None = None) -> Generated:
        if layout is None:
            raise OodBenchError("the synthetic generator renders the source frame's layout: "
                                "use a synthetic source dataset (synth-*)")
        rng = np.random.default_rng([seed, 0])
        prompt = self.prompts.sample(pasted.object_class, rng)
        scene = insert_object(layout, pasted, rng)
        domain = synthetic_domain(prompt)
        render_seed = int(rng.integers(2**31))
        mode = self.mode
        if mode == "either":
            mode = "semantic" if rng.random() < 0.5 else "domain"
        if mode == "semantic":
            return Generated(render(scene, "clear", seed=render_seed), "clear", prompt)
        if mode == "coherent":
            return Generated(render(scene, domain, seed=render_seed), domain, prompt)
        background = render(layout, domain, seed=render_seed)
        if mode == "domain":
            return Generated(background, domain, prompt, drawn=False)
        cut = render(scene, "clear", seed=render_seed)
        image = np.where(pasted.mask[..., None], cut, background)
        return Generated(image, domain, prompt)
