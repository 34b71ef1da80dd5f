"""Train the embedded scenes model and its correctness classifier, in one command:

    python -m optimum_dynexec.diffusion.train [--minutes 15] [--out DIR] [--classifier-out DIR]

Steps (each with a share of the time budget, progress shown): render the scene data set; train the
scene-correctness classifier; train the VAE; encode the data set's latents; train text encoder and UNet
jointly; save the pipeline (diffusers layout, safetensors) and the classifier; measure the classifier's
accuracy on fresh generator scenes and the pipeline's scene correctness; draw a sample grid.
Outputs default to the package's ``diffusion/weights/`` (the committed model).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

EVAL_SEED = 10_000  # scenes of this stream are never trained on
GRID_PROMPTS = (
    "a big red circle on a blue background",
    "a small yellow triangle at the top left on a black background",
    "a blue square on the left and a green cross on the right on a white background",
    "two purple circles on a yellow background",
    "three small white crosses on a gray background",
    "a big orange triangle in the center and two small black squares on a green background",
)


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from .correctness import CLASSIFIER_DIR
    from .tiny_sd import SCENES_SD_DIR, WEIGHTS_DIR

    parser = argparse.ArgumentParser(prog="python -m optimum_dynexec.diffusion.train", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="total wall-clock budget (default 15)")
    parser.add_argument("--out", type=Path, default=SCENES_SD_DIR, help="where the pipeline is saved")
    parser.add_argument("--classifier-out", type=Path, default=CLASSIFIER_DIR, help="where the classifier is saved")
    parser.add_argument("--samples", type=Path, default=WEIGHTS_DIR / "samples.png", help="PNG grid of samples")
    parser.add_argument("--scenes", type=int, default=40_000, help="training scenes rendered (default 40000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-classifier", action="store_true", help="keep the saved classifier")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the training; returns (and saves next to the pipeline) what it measured."""
    args = _parse(argv)
    import torch

    from ..exporters.atomic import atomic_directory
    from . import correctness, grid, tiny_sd, training
    from .training import Dataset

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    start = time.perf_counter()
    budget = args.minutes * 60
    config = tiny_sd.TinySDConfig()
    info: dict = {"config": tiny_sd.config_dict(config), "seed": args.seed, "budget_minutes": args.minutes}

    data = Dataset.generate(args.seed, args.scenes, config.image_size, progress)
    held_out = Dataset.generate(EVAL_SEED, 2000, config.image_size, progress)
    remaining = budget - (time.perf_counter() - start) - 60  # ~1 min: encoding, saving, evaluation
    shares = {"classifier": 0.0 if args.skip_classifier else 0.1, "vae": 0.15}
    shares["denoiser"] = 1.0 - sum(shares.values())

    if not args.skip_classifier:
        classifier = correctness.SceneClassifier(config.image_size)
        loop = training.train_classifier(classifier, data, shares["classifier"] * remaining, seed=args.seed,
                                         progress=progress)  # fmt: skip
        accuracy = training.classifier_accuracy(classifier, held_out)
        with atomic_directory(args.classifier_out) as tmp:
            correctness.save_classifier(classifier, tmp, {"accuracy_on_generator": accuracy,
                                                          "steps": loop.steps, "final_loss": loop.final_loss})  # fmt: skip
        correctness._CACHE.clear()
        info["classifier"] = {"steps": loop.steps, "seconds": round(loop.seconds, 1), "losses": loop.losses,
                              "accuracy_on_generator": accuracy}  # fmt: skip
        _say(f"classifier: {loop.steps} steps, loss {loop.final_loss:.4f}, accuracy {_fmt(accuracy)}")
    classifier = correctness.load_classifier(args.classifier_out)

    vae = tiny_sd.build_vae(config)
    loop = training.train_vae(vae, data, shares["vae"] * remaining, seed=args.seed, progress=progress)
    mean, std = training.encode_latents(vae, data, progress=progress)
    sampled = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))
    scaling_factor = float(1.0 / sampled.std())
    vae.register_to_config(scaling_factor=round(scaling_factor, 5))
    with torch.no_grad():
        recon = vae.decode(vae.encode(held_out.tensor(np.arange(512))).latent_dist.mode()).sample
    recon_images = ((recon.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    mse = float(np.mean((recon_images - held_out.images[:512] / 255.0) ** 2))
    vae_correctness = correctness.scene_correctness(recon_images, held_out.captions[:512], classifier)
    info["vae"] = {"steps": loop.steps, "seconds": round(loop.seconds, 1), "losses": loop.losses,
                   "scaling_factor": scaling_factor, "psnr_db": round(-10 * np.log10(mse), 2),
                   "reconstruction_scene_correctness": vae_correctness}  # fmt: skip
    _say(f"vae: {loop.steps} steps, PSNR {info['vae']['psnr_db']} dB, scene correctness of reconstructions "
         f"{vae_correctness:.1f}")  # fmt: skip

    tokenizer = tiny_sd.build_tokenizer_for_scenes(config)
    encode = dict(padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    input_ids = tokenizer(data.captions, **encode).input_ids
    empty_ids = tokenizer([""], **encode).input_ids[0]
    text_encoder = tiny_sd.build_text_encoder(config, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    unet = tiny_sd.build_unet(config)
    seconds = budget - (time.perf_counter() - start) - 50
    loop, text_encoder, unet = training.train_denoiser(
        text_encoder, unet, tiny_sd.build_training_scheduler(), (mean * scaling_factor, std * scaling_factor),
        input_ids, empty_ids, seconds, seed=args.seed, progress=progress,
    )  # fmt: skip
    info["denoiser"] = {"steps": loop.steps, "seconds": round(loop.seconds, 1), "losses": loop.losses}
    _say(f"denoiser: {loop.steps} steps, loss {loop.final_loss:.4f}")

    pipe = tiny_sd.assemble_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.set_progress_bar_config(disable=True)
    prompts = held_out.captions[:64]
    info["pipeline_scene_correctness"] = {
        str(n): correctness.scene_correctness(grid.generate(pipe, prompts, n, seed=args.seed), prompts, classifier)
        for n in (10, 25, 50)
    }
    _say(f"pipeline scene correctness by steps: {info['pipeline_scene_correctness']}")
    info["train_seconds"] = round(time.perf_counter() - start, 1)
    with atomic_directory(args.out) as tmp:
        tiny_sd.save_pipeline(pipe, tmp, extra=info)
    grid.sample_grid(pipe, GRID_PROMPTS, (10, 25, 50), args.samples, seed=args.seed)
    _say(f"saved {args.out} and {args.classifier_out} in {info['train_seconds']:.0f} s; samples: {args.samples}")
    return info


def _fmt(values: dict) -> str:
    return json.dumps({k: round(v, 4) for k, v in values.items()})


def _say(message: str) -> None:
    print(f"[train] {message}", flush=True)


if __name__ == "__main__":
    main()
