"""Random-weight generator and SAM models saved in the released on-disk layouts.

They let the tests and ``benchmarks/gpu_check_cgaug.py`` exercise the exact offline loading and
sampling code users run, without downloading weights. ``preset="tiny"`` builds toy-sized
models for CPU tests; ``preset="full"`` builds the real architectures (SD 1.5 UNet/VAE/CLIP
ViT-L text encoder, its segmentation ControlNet, SAM ViT-H) for timing on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ood_bench.errors import OodBenchError

_SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
_TINY_UNET = dict(block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=16,
                  norm_num_groups=4, attention_head_dim=2,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))
_PRESETS = {
    "tiny": dict(
        unet=_TINY_UNET, up=("UpBlock2D", "CrossAttnUpBlock2D"), conditioning=(4, 8),
        vae=dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=32),
        sam=dict(vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2,
                                    num_attention_heads=2, image_size=64, patch_size=8,
                                    mlp_dim=64, global_attn_indexes=[1], window_size=4,
                                    num_pos_feats=8),
                 prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8,
                                            mask_input_channels=4),
                 mask_decoder_config=dict(hidden_size=16, num_hidden_layers=2,
                                          num_attention_heads=2, mlp_dim=32,
                                          iou_head_hidden_dim=16)),
        sam_size=64,
    ),
    "full": dict(
        unet=_SD15_UNET, up=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        conditioning=(16, 32, 96, 256),
        vae=dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
                 layers_per_block=2),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77),
        sam=dict(vision_config=dict(hidden_size=1280, num_hidden_layers=32,
                                    num_attention_heads=16,
                                    global_attn_indexes=[7, 15, 23, 31])),
        sam_size=1024,
    ),
}


def _preset(name: str) -> dict:
    if name not in _PRESETS:
        raise OodBenchError(f"unknown preset {name!r}; expected one of {', '.join(_PRESETS)}")
    return _PRESETS[name]


def byte_alphabet() -> list[str]:
    """The byte-level BPE alphabet of CLIP/GPT-2: printable Latin-1 bytes stand for themselves,
    the other bytes for code points from 256 upwards."""
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    alphabet, extra = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + extra))
            extra += 1
    return alphabet


def save_random_controlnet_pipeline(folder: str | Path, preset: str = "tiny", seed: int = 0
                                    ) -> tuple[Path, Path]:
    """Save a random SD pipeline (``folder/sd``, diffusers layout) and segmentation ControlNet
    (``folder/controlnet``); returns both paths. The tokenizer has a character-level vocabulary
    (no merges), written as ``vocab.json``/``merges.txt`` like CLIP's."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    config = _preset(preset)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    text = config["text"]
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=text["max_position_embeddings"])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config["unet"], in_channels=4, out_channels=4,
                                up_block_types=config["up"])
    controlnet = ControlNetModel(**config["unet"], in_channels=4,
                                 conditioning_embedding_out_channels=config["conditioning"])
    levels = len(config["vae"]["block_out_channels"])
    vae = AutoencoderKL(**config["vae"], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels)
    end = vocab["<|endoftext|>"]
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), **text,
                                           bos_token_id=vocab["<|startoftext|>"],
                                           eos_token_id=end, pad_token_id=end))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd")
    controlnet.save_pretrained(folder / "controlnet")
    return folder / "sd", folder / "controlnet"


def save_random_sam(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Save a random ``SamModel`` + ``SamProcessor`` to ``folder/sam``; returns the path."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = _preset(preset)
    path = Path(folder) / "sam"
    torch.manual_seed(seed)
    SamModel(SamConfig(**config["sam"])).save_pretrained(path)
    size = config["sam_size"]
    processor = SamImageProcessor(size={"longest_edge": size},
                                  pad_size={"height": size, "width": size})
    SamProcessor(image_processor=processor).save_pretrained(path)
    return path
