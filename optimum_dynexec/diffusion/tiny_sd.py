"""The embedded scenes model in diffusers' Stable Diffusion form, and tiny random pipelines for tests.

A ``StableDiffusionPipeline`` of the usual parts, only small: a word-level ``CLIPTokenizer`` over the
scene vocabulary, a 2-layer ``CLIPTextModel`` (64 wide), a ``UNet2DConditionModel`` over 8x8x4 latents
(32 and 64 channels, cross attention at the 4x4 level and in the mid block) and an ``AutoencoderKL`` with a 4x downsampling
(32x32 RGB images); about 1.8 M parameters, 7.2 MB in float32. ``save_pretrained`` writes the standard
layout, so ``StableDiffusionPipeline.from_pretrained`` and optimum-intel's
``OVStableDiffusionPipeline.from_pretrained(..., export=True)`` load it unchanged.

    from optimum_dynexec.diffusion.tiny_sd import SCENES_SD_DIR
    pipe = OVStableDiffusionPipeline.from_pretrained(SCENES_SD_DIR, export=True)
    image = pipe("a red circle on the left on a blue background", num_inference_steps=25,
                 guidance_scale=RECOMMENDED_GUIDANCE).images[0]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

from . import scenes
from .tokenizer import build_tokenizer, word_vocabulary

WEIGHTS_DIR = Path(__file__).parent / "weights"
#: the trained pipeline (committed; rebuilt by ``python -m optimum_dynexec.diffusion.train``)
SCENES_SD_DIR = WEIGHTS_DIR / "scenes-sd"
#: the guidance scale the scenes model works best at. Pass it (``guidance_scale=2.0``): at diffusers' default
#: of 7.5 this small model's guided steps overshoot and its images fall apart (see ``training_info.json``).
RECOMMENDED_GUIDANCE = 2.0


@dataclass(frozen=True)
class TinySDConfig:
    """Sizes of the pipeline's parts. The defaults are the embedded scenes model; ``TinySDConfig.random()``
    is smaller still, for tests."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels: 4x downsampling
    vae_norm_groups: int = 4
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    unet_cross_attention: tuple[bool, ...] = (False, True)  # per level; the mid block always has it
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    unet_norm_groups: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    max_length: int = 32

    @classmethod
    def random(cls) -> "TinySDConfig":
        """A very small configuration: random weights for tests of code paths, not of images."""
        return cls(
            vae_channels=(8, 8, 16),
            vae_norm_groups=4,
            unet_channels=(16, 32),
            unet_cross_attention=(True, True),
            unet_heads=2,
            unet_norm_groups=8,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            text_intermediate=64,
        )

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_tokenizer_for_scenes(config: TinySDConfig = TinySDConfig()):
    """The scene-vocabulary ``CLIPTokenizer`` (every caption word is one token)."""
    return build_tokenizer(scenes.vocabulary(), model_max_length=config.max_length)


def build_text_encoder(config: TinySDConfig, vocab_size: int, bos_token_id: int = 0, eos_token_id: int = 1):
    """A randomly initialised ``CLIPTextModel`` of ``config``'s size."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        projection_dim=config.text_hidden,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return CLIPTextModel(text_config)


def build_unet(config: TinySDConfig):
    """A randomly initialised ``UNet2DConditionModel``, attending to the text states at the levels
    ``config.unet_cross_attention`` names and in the mid block (by default only the 4x4 level: attention
    at 8x8 doubles a training step's cost, and the 4x4 grid already says where the 3x3 cells are)."""
    from diffusers import UNet2DConditionModel

    attention = config.unet_cross_attention
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        attention_head_dim=config.unet_heads,  # diffusers' historical name: the number of heads
        cross_attention_dim=config.text_hidden,
        norm_num_groups=config.unet_norm_groups,
    )


def build_vae(config: TinySDConfig, scaling_factor: float = 1.0):
    """A randomly initialised ``AutoencoderKL`` (4 latent channels, ``image_size`` pixels)."""
    from diffusers import AutoencoderKL

    levels = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.image_size,
        scaling_factor=scaling_factor,
    )


#: Stable Diffusion 1.x's noise schedule (training and inference schedulers share it)
SCHEDULE: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def build_training_scheduler():
    """The ``DDPMScheduler`` that adds noise during training."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def build_inference_scheduler():
    """The pipeline's scheduler: ``PNDMScheduler`` as in Stable Diffusion 1.x (any diffusers scheduler works)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(**SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    """A ``StableDiffusionPipeline`` of these parts (no safety checker: the scenes are shapes)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or build_inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(config: TinySDConfig = TinySDConfig(), seed: int = 0):
    """A randomly initialised pipeline of ``config``'s size (deterministic given ``seed``)."""
    import torch

    torch.manual_seed(seed)
    tokenizer = build_tokenizer_for_scenes(config)
    text_encoder = build_text_encoder(config, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    return assemble_pipeline(build_vae(config), text_encoder, tokenizer, build_unet(config))


def save_pipeline(pipe, directory: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """``save_pretrained`` in float32 safetensors (float16 files would make ``optimum-cli export openvino``
    trace the pipeline in float16 on CPU), plus the tokenizer's ``vocab.json`` / ``merges.txt`` (read by
    older transformers releases and tools that build a tokenizer from those two files) and, if given,
    ``extra`` as ``training_info.json``."""
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)
    vocab, merges = word_vocabulary(scenes.vocabulary())
    if vocab == pipe.tokenizer.get_vocab():
        (directory / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, indent=0) + "\n")
        (directory / "tokenizer" / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
        )
    if extra is not None:
        (directory / "training_info.json").write_text(json.dumps(extra, indent=2) + "\n")
    return directory


def load_pipeline(directory: Union[str, Path] = SCENES_SD_DIR, **kwargs):
    """The diffusers (PyTorch) ``StableDiffusionPipeline`` saved in ``directory`` (the embedded model by default)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(directory), **kwargs)


def config_dict(config: TinySDConfig) -> dict:
    """``config`` as JSON-friendly data."""
    return asdict(config)
