"""StepSaver glue: label a pipeline's prompts, train its step predictor, bundle it (CLI and Python).

    from optimum_dynexec.step_saving import label_pipeline, train_pipeline_predictor
    labels = label_pipeline("sd-ov", prompts, out_dir="labels")          # labels.json + PNG plots
    predictor = train_pipeline_predictor("sd-ov", "labels/labels.json", "sd-ov/step_predictor.json")

The algorithms live in ``optimum_dynexec.diffusion`` (numpy / scikit-image / scikit-learn); this module loads
OpenVINO pipelines and connects them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .diffusion.labelling import (DEFAULT_FULL_SSIM, DEFAULT_LADDER, DEFAULT_NEIGHBOUR_SSIM, StepLabels,
                                  check_ladder, label_prompts, plot_labels)
from .diffusion.predictor import StepPredictor, train_predictor

logger = logging.getLogger(__name__)

LABELS_NAME = "labels.json"
#: the mean SSIM to full-step images the predictor's safety margin keeps on held-out prompts
DEFAULT_TARGET_SSIM = 0.92
#: the quality floor: "auto" never goes below the fewest steps at which 95% of the labelled images reach this SSIM
#: to their full-step images
DEFAULT_FLOOR_SSIM = 0.98


def load_pipeline(pipeline: Union[str, Path, object], device: str = "CPU", ov_config: Optional[dict] = None):
    """An OpenVINO Stable Diffusion pipeline: a loaded one as is, else ``OVStableDiffusionPipeline`` from a
    directory (an OpenVINO export, or a diffusers checkpoint exported on the fly)."""
    if not isinstance(pipeline, (str, Path)):
        return pipeline
    from .models.diffusion import OVStepSaverStableDiffusionPipeline

    path = Path(pipeline)
    if not path.is_dir():
        raise FileNotFoundError(f"pipeline directory {path} does not exist; pass an exported OpenVINO Stable "
                                "Diffusion directory or a diffusers checkpoint directory.")
    if not (path / "model_index.json").is_file():
        raise ValueError(f"{path} has no model_index.json, so it is not a diffusion pipeline directory.")
    export = not (path / "unet" / "openvino_model.xml").is_file()
    return OVStepSaverStableDiffusionPipeline.from_pretrained(path, export=export, device=device,
                                                             ov_config=ov_config or {}, compile=True)


def _describe(pipe, source) -> dict:
    return {
        "source": str(source if isinstance(source, (str, Path)) else pipe.config.get("_name_or_path")),
        "scheduler": type(pipe.scheduler).__name__,
        "name_or_path": str(pipe.config.get("_name_or_path", source)),
    }


def label_pipeline(pipeline, prompts: Sequence[str], out_dir: Union[str, Path, None] = None,
                   ladder: Sequence[int] = DEFAULT_LADDER, seed: int = 0, guidance_scale: Optional[float] = None,
                   neighbour_ssim: float = DEFAULT_NEIGHBOUR_SSIM, full_ssim: float = DEFAULT_FULL_SSIM,
                   device: str = "CPU", plot: bool = True, progress: bool = True) -> StepLabels:
    """Label ``prompts`` with their step counts on ``pipeline``; with ``out_dir``, write ``labels.json`` and
    the plots there."""
    from .models.diffusion import image_generator

    ladder = check_ladder(ladder)
    pipe = load_pipeline(pipeline, device)
    pipe.set_progress_bar_config(disable=True)  # one bar over prompts, not one per image
    generate = image_generator(pipe, guidance_scale=guidance_scale)
    described = {**_describe(pipe, pipeline), "guidance_scale": guidance_scale}
    labels = label_prompts(generate, prompts, ladder, seed, neighbour_ssim, full_ssim, pipeline=described,
                           progress=progress)
    if out_dir is not None:
        out = Path(out_dir)
        labels.save(out / LABELS_NAME)
        if plot:
            plot_labels(labels, out)
        logger.info("step labels: %s -> %s", labels.summary(), out / LABELS_NAME)
    return labels


def train_pipeline_predictor(pipeline, labels: Union[str, Path, StepLabels], out: Union[str, Path, None] = None,
                             min_steps: Optional[int] = None, max_steps: Optional[int] = None, seed: int = 0,
                             target_ssim: Optional[float] = DEFAULT_TARGET_SSIM,
                             floor_ssim: Optional[float] = DEFAULT_FLOOR_SSIM, device: str = "CPU") -> StepPredictor:
    """Train the step predictor of ``pipeline`` from ``labels`` (its own pooled text embeddings) and save it
    to ``out`` (a JSON path) when given. ``target_ssim``: the safety margin is tuned so that held-out prompts
    keep this mean SSIM to their full-step images (None: no margin). ``floor_ssim``: without ``min_steps``, the
    range starts where 95% of the labelled images reach this SSIM to full steps (None: at the ladder's first rung)."""
    from .models.diffusion import encode_prompts, encoder_identity

    labels = labels if isinstance(labels, StepLabels) else StepLabels.load(labels)
    pipe = load_pipeline(pipeline, device)
    embeddings = np.concatenate([encode_prompts(pipe, labels.prompts[i : i + 64])[0]
                                 for i in range(0, len(labels.prompts), 64)])
    identity = encoder_identity(pipe, name=str(pipe.config.get("_name_or_path", "")))
    ssim_to_full = np.array([label.ssim_to_full for label in labels.labels])
    predictor = train_predictor(embeddings, labels.steps, labels.ladder, identity, min_steps=min_steps,
                                max_steps=max_steps, seed=seed, ssim_to_full=ssim_to_full, target_ssim=target_ssim,
                                floor_ssim=floor_ssim)
    predictor.metrics["labels"] = {"ladder": list(labels.ladder), "seed": labels.seed,
                                   "neighbour_ssim": labels.neighbour_ssim, "full_ssim": labels.full_ssim,
                                   "pipeline": labels.pipeline}
    if out is not None:
        path = predictor.save(out)
        logger.info("step predictor: held-out MAE %.2f steps -> %s", predictor.metrics["held_out_mae_steps"], path)
    return predictor
