"""Train the embedded scenes model and its correctness classifier, in one command:

    python -m optimum_dynexec.diffusion.train [--minutes 23] [--out DIR] [--classifier-out DIR]

Steps (each with a share of the wall-clock budget, progress shown):

1. render the scene data set (and a held-out set of another seed);
2. train the VAE and, at the same time in a second process (one thread each: these small models use two
   cores better as two jobs than as one), the scene-correctness classifier;
3. encode the data set's latents, then train text encoder and UNet jointly (all cores);
4. measure: classifier accuracy on held-out generator scenes, VAE PSNR and the scene correctness of its
   reconstructions, scene correctness of clean images and of the pipeline's at 5/10/25/50 steps;
5. save the pipeline (diffusers layout, float32 safetensors, ``training_info.json`` with the above), the
   classifier, and a sample grid (prompts x step counts).

Outputs default to the package's ``diffusion/weights/`` (the committed model); the defaults reproduce it
(up to the run's timing: budgets are in seconds, not steps).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

EVAL_SEED = 10_000  # scenes of this stream are never trained on
EVAL_PROMPTS = 128  # held-out prompts the pipeline is scored on
SAMPLE_STEPS = (5, 10, 25, 50)
GRID_PROMPTS = (
    "a big red circle on a blue background",
    "a small yellow triangle at the top left on a black background",
    "a blue square on the left and a green cross on the right on a white background",
    "two purple circles on a striped yellow background",
    "three small white crosses on a checkered gray background",
    "a big orange triangle in the center and two small black squares on a green background",
)


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from .correctness import CLASSIFIER_DIR
    from .tiny_sd import SCENES_SD_DIR, WEIGHTS_DIR

    parser = argparse.ArgumentParser(prog="python -m optimum_dynexec.diffusion.train", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=23.0, help="total wall-clock budget (default 23)")
    parser.add_argument("--out", type=Path, default=SCENES_SD_DIR, help="where the pipeline is saved")
    parser.add_argument("--classifier-out", type=Path, default=CLASSIFIER_DIR, help="where the classifier is saved")
    parser.add_argument("--samples", type=Path, default=WEIGHTS_DIR / "samples.png", help="PNG grid of samples")
    parser.add_argument("--scenes", type=int, default=40_000, help="training scenes rendered (default 40000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-share", type=float, default=0.3, help="fraction of the budget for the VAE")
    parser.add_argument("--classifier-minutes", type=float, default=5.5, help="classifier budget (in parallel)")
    parser.add_argument("--skip-classifier", action="store_true", help="keep the saved classifier")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="no training: re-measure the saved pipeline, update its training_info.json and samples")
    return parser.parse_args(argv)


def _train_classifier_job(seed: int, count: int, image_size: int, seconds: float, out: str, progress: bool) -> None:
    """The classifier's training, in its own process (one thread): data, training, held-out accuracy, save."""
    import torch

    from ..exporters.atomic import atomic_directory
    from . import correctness, training
    from .training import Dataset

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = Dataset.generate(seed + 1, count, image_size, progress=False)  # its own stream of scenes
    held_out = Dataset.generate(EVAL_SEED, 2000, image_size, progress=False)
    model = correctness.SceneClassifier(image_size)
    loop = training.train_classifier(model, data, seconds, seed=seed, progress=progress, position=1)
    accuracy = training.classifier_accuracy(model, held_out)
    with atomic_directory(out) as tmp:
        correctness.save_classifier(model, tmp, {"accuracy_on_generator": accuracy, "steps": loop.steps,
                                                 "seconds": round(loop.seconds, 1), "losses": loop.losses})  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the training; returns (and saves next to the pipeline) what it measured."""
    args = _parse(argv)
    import torch

    from ..exporters.atomic import atomic_directory
    from . import correctness, grid, tiny_sd, training
    from .training import Dataset

    threads = args.threads or os.cpu_count() or 1
    if args.evaluate_only:
        return _evaluate_saved(args, threads)
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    start = time.perf_counter()
    budget = args.minutes * 60
    config = tiny_sd.TinySDConfig()
    info: dict = {"command": "python -m optimum_dynexec.diffusion.train", "config": tiny_sd.config_dict(config),
                  "seed": args.seed, "budget_minutes": args.minutes, "scenes": args.scenes}  # fmt: skip

    job = None
    if not args.skip_classifier:
        job = multiprocessing.get_context("spawn").Process(
            target=_train_classifier_job,
            args=(args.seed, args.scenes, config.image_size, args.classifier_minutes * 60, str(args.classifier_out),
                  progress),
        )  # fmt: skip
        job.start()
        torch.set_num_threads(max(1, threads - 1))
    else:
        torch.set_num_threads(threads)
    data = Dataset.generate(args.seed, args.scenes, config.image_size, progress)
    held_out = Dataset.generate(EVAL_SEED, 2000, config.image_size, progress)

    # 1. VAE (alongside the classifier; takes all cores once the classifier is done)
    def all_cores_when_alone(step: int) -> None:
        if job is not None and step % 20 == 0 and not job.is_alive() and torch.get_num_threads() < threads:
            torch.set_num_threads(threads)

    vae = tiny_sd.build_vae(config)
    loop = training.train_vae(vae, data, args.vae_share * budget, seed=args.seed, progress=progress,
                              hook=all_cores_when_alone)  # fmt: skip
    if job is not None:
        job.join()
        if job.exitcode != 0:
            raise RuntimeError(f"classifier training failed (exit code {job.exitcode})")
    torch.set_num_threads(threads)
    correctness._CACHE.clear()
    classifier = correctness.load_classifier(args.classifier_out)
    saved = json.loads((Path(args.classifier_out) / "config.json").read_text())
    info["classifier"] = {k: saved.get(k) for k in ("steps", "seconds", "losses", "accuracy_on_generator")}
    _say(f"classifier: {saved.get('steps')} steps, accuracy on held-out generator scenes "
         f"{_fmt(saved.get('accuracy_on_generator', {}))}")  # fmt: skip

    mean, std = training.encode_latents(vae, data, progress=progress)
    sampled = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))
    scaling_factor = float(1.0 / sampled.std())
    vae.register_to_config(scaling_factor=round(scaling_factor, 5))
    eval_rows = np.arange(512)
    with torch.no_grad():
        recon = vae.decode(vae.encode(held_out.tensor(eval_rows)).latent_dist.mode()).sample
    recon_images = ((recon.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    mse = float(np.mean((recon_images - held_out.images[eval_rows] / 255.0) ** 2))
    captions = [held_out.captions[i] for i in eval_rows]
    info["vae"] = {
        "steps": loop.steps, "seconds": round(loop.seconds, 1), "losses": loop.losses,
        "scaling_factor": round(scaling_factor, 5), "psnr_db": round(-10 * float(np.log10(mse)), 2),
        "reconstruction_scene_correctness": correctness.scene_correctness(recon_images, captions, classifier),
        "clean_scene_correctness": correctness.scene_correctness(held_out.images[eval_rows], captions, classifier),
    }  # fmt: skip
    _say(f"vae: {loop.steps} steps, PSNR {info['vae']['psnr_db']} dB, scene correctness of reconstructions "
         f"{info['vae']['reconstruction_scene_correctness']:.1f} (clean images "
         f"{info['vae']['clean_scene_correctness']:.1f})")  # fmt: skip

    # 2. text encoder + UNet
    tokenizer = tiny_sd.build_tokenizer_for_scenes(config)
    encode = dict(padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    input_ids = tokenizer(data.captions, **encode).input_ids
    empty_ids = tokenizer([""], **encode).input_ids[0]
    text_encoder = tiny_sd.build_text_encoder(config, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    unet = tiny_sd.build_unet(config)
    seconds = max(60.0, budget - (time.perf_counter() - start) - 75)  # leaves ~75 s for evaluation and saving
    loop, text_encoder, unet = training.train_denoiser(
        text_encoder, unet, tiny_sd.build_training_scheduler(), (mean * scaling_factor, std * scaling_factor),
        input_ids, empty_ids, seconds, seed=args.seed, progress=progress,
    )  # fmt: skip
    info["denoiser"] = {"steps": loop.steps, "seconds": round(loop.seconds, 1), "losses": loop.losses}
    _say(f"denoiser: {loop.steps} steps, loss {loop.final_loss:.4f}")

    # 3. evaluation and saving
    pipe = tiny_sd.assemble_pipeline(vae, text_encoder, tokenizer, unet)
    info.update(evaluate(pipe, classifier, held_out, seed=args.seed))
    info["train_seconds"] = round(time.perf_counter() - start, 1)
    with atomic_directory(args.out) as tmp:
        tiny_sd.save_pipeline(pipe, tmp, extra=info)
    grid.sample_grid(pipe, GRID_PROMPTS, SAMPLE_STEPS, args.samples, seed=args.seed,
                     guidance_scale=tiny_sd.RECOMMENDED_GUIDANCE)  # fmt: skip
    _say(f"saved {args.out} and {args.classifier_out} in {time.perf_counter() - start:.0f} s; samples: {args.samples}")
    return info


def evaluate(pipe, classifier, held_out, seed: int = 0, prompts: int = EVAL_PROMPTS) -> dict:
    """Scene correctness (mean and exact-match rate) of the pipeline's images of held-out prompts at each of
    SAMPLE_STEPS, at the recommended guidance scale and at diffusers' default 7.5, and of the clean images."""
    from . import correctness, grid, tiny_sd

    pipe.set_progress_bar_config(disable=True)
    captions = held_out.captions[:prompts]
    result = {
        "clean_scene_correctness": correctness.scene_correctness(held_out.images[:prompts], captions, classifier),
        "eval": {"prompts": prompts, "seed": EVAL_SEED, "scheduler": type(pipe.scheduler).__name__,
                 "recommended_guidance_scale": tiny_sd.RECOMMENDED_GUIDANCE},
    }  # fmt: skip
    for guidance, key in ((tiny_sd.RECOMMENDED_GUIDANCE, ""), (7.5, "_guidance_7.5")):
        mean, exact = {}, {}
        for n in SAMPLE_STEPS:
            images = grid.generate(pipe, captions, n, seed=seed, guidance_scale=guidance)
            mean[str(n)] = correctness.scene_correctness(images, captions, classifier)
            exact[str(n)] = correctness.scene_correctness(images, captions, classifier, strict=True)
        result[f"pipeline_scene_correctness{key}"] = mean
        result[f"pipeline_scene_exact{key}"] = exact
        _say(f"pipeline scene correctness by steps at guidance {guidance}: {_fmt(mean)} (exact {_fmt(exact)}; "
             f"clean images {result['clean_scene_correctness']:.1f})")  # fmt: skip
    return result


def _evaluate_saved(args: argparse.Namespace, threads: int) -> dict:
    import torch

    from . import correctness, grid, tiny_sd
    from .training import Dataset

    torch.set_num_threads(threads)
    pipe = tiny_sd.load_pipeline(args.out)
    path = Path(args.out) / "training_info.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    held_out = Dataset.generate(EVAL_SEED, EVAL_PROMPTS, pipe.unet.config.sample_size * pipe.vae_scale_factor, False)
    info.update(evaluate(pipe, correctness.load_classifier(args.classifier_out), held_out, seed=args.seed))
    path.write_text(json.dumps(info, indent=2) + "\n")
    grid.sample_grid(pipe, GRID_PROMPTS, SAMPLE_STEPS, args.samples, seed=args.seed,
                     guidance_scale=tiny_sd.RECOMMENDED_GUIDANCE)  # fmt: skip
    _say(f"updated {path}; samples: {args.samples}")
    return info


def _fmt(values: dict) -> str:
    return json.dumps({k: round(v, 4) for k, v in values.items()})


def _say(message: str) -> None:
    print(f"[train] {message}", flush=True)


if __name__ == "__main__":
    main()
