"""StepSaver benchmark: adaptive denoising steps on the embedded scenes model (OpenVINO, CPU).

    python -m benchmarks.steps                          # export (cached), predictor (committed or trained), benchmark
    python -m benchmarks.steps --prompts 60 --retrain   # relabel + retrain the predictor first

Methods, on the same held-out prompts (scenes the predictor never saw) and the same seed per prompt:
  full          the pipeline's default step count for every prompt (50);
  auto          num_inference_steps="auto" (the step predictor);
  full+guard    the default step count with the convergence guard alone;
  auto+guard    "auto" with the convergence guard;
  fixed@auto    one fixed step count for every prompt, equal to auto's mean steps (the fairest baseline);
  fixed@guard   the same for auto+guard;
  fixed sweep   (--sweep) more fixed step counts, to draw quality against steps.
Rows: mean steps, wall time per image, SSIM to the full-step image, scene correctness (the scenes model's
CLIP score: a classifier reads shapes, colours, counts and places back from the image). Output: results.json,
results.md and PNG plots (an image grid at predicted vs full steps, quality vs steps) in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import hardware

logger = logging.getLogger("benchmarks.steps")

FULL_STEPS = 50
TRAIN_SEED, BENCH_SEED = 1, 2  # scene streams: predictor training prompts, held-out benchmark prompts
COMMITTED_PREDICTOR = "scenes-step-predictor.json"


def _weights_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def exported_scenes_pipeline(model: Optional[Path] = None) -> Path:
    """The scenes model (default: the committed one) exported to OpenVINO IR once (cached, keyed by its weights)."""
    from optimum.intel import OVStableDiffusionPipeline

    from optimum_dynexec.diffusion.tiny_sd import SCENES_SD_DIR
    from optimum_dynexec.exporters.atomic import atomic_directory
    from optimum_dynexec.offline import cache_dir

    model = Path(model or SCENES_SD_DIR)
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"{model} is not a diffusers pipeline directory; train the scenes model with "
                         "`python -m optimum_dynexec.diffusion.train` or pass --model DIR.")
    out = cache_dir() / "openvino" / f"scenes-sd-{_weights_hash(model)}"
    if not (out / "unet" / "openvino_model.xml").is_file():
        logger.info("exporting %s to %s", model, out)
        with atomic_directory(out, replace=False) as tmp:
            OVStableDiffusionPipeline.from_pretrained(model, export=True, compile=False).save_pretrained(tmp)
    return out


def load_scenes_pipeline(pipeline: Path, scheduler: Optional[str] = None):
    """The exported scenes pipeline, progress bars off, with ``scheduler`` (a diffusers class name) when given."""
    from optimum_dynexec.models.diffusion import OVStepSaverStableDiffusionPipeline

    pipe = OVStepSaverStableDiffusionPipeline.from_pretrained(pipeline)
    pipe.set_progress_bar_config(disable=True)
    if scheduler:
        import diffusers

        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


def scene_prompts(seed: int, count: int) -> list[str]:
    from optimum_dynexec.diffusion.scenes import scenes

    return [scene.caption for scene in scenes(seed, count)]


def predictor_path(pipeline, args) -> Path:
    """The committed predictor, or (--retrain, or none committed) one labelled and trained now on ``pipeline``
    (a loaded pipeline: its scheduler is the one labelled)."""
    from optimum_dynexec.diffusion.tiny_sd import WEIGHTS_DIR
    from optimum_dynexec.step_saving import label_pipeline, train_pipeline_predictor

    committed = WEIGHTS_DIR / COMMITTED_PREDICTOR if args.model is None else args.out / COMMITTED_PREDICTOR
    if committed.is_file() and not args.retrain:
        return committed
    labels_dir = args.out / "labels"
    label_pipeline(pipeline, scene_prompts(TRAIN_SEED, args.train_prompts), labels_dir, seed=0,
                   guidance_scale=args.guidance_scale)
    target = committed if args.retrain or not committed.is_file() else args.out / "step_predictor.json"
    train_pipeline_predictor(pipeline, labels_dir / "labels.json", target)
    return target


def _to_uint8(images) -> np.ndarray:
    return np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def run(args) -> dict:
    import torch

    from optimum_dynexec.diffusion.correctness import scene_scores
    from optimum_dynexec.diffusion.labelling import image_ssim
    from optimum_dynexec.models.diffusion import encode_prompts

    record = {"hardware": hardware.collect(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    pipeline = exported_scenes_pipeline(args.model)
    pipe = load_scenes_pipeline(pipeline, args.scheduler)
    predictor_file = predictor_path(pipe, args)
    pipe.set_step_predictor(predictor_file)
    predictor = pipe.step_predictor
    prompts = scene_prompts(BENCH_SEED, args.prompts)
    guard = {"tolerance": args.guard_tolerance, "patience": 2, "min_steps": predictor.min_steps}

    def call(prompt: str, steps, seed: int, use_guard: bool = False):
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        out = pipe(prompt, num_inference_steps=steps, generator=generator, output_type="np",
                   guidance_scale=args.guidance_scale, convergence_guard=guard if use_guard else False)
        return time.perf_counter() - start, out

    from tqdm.auto import tqdm

    call(prompts[0], 2, 0)  # warm-up: compile and first-call allocations
    methods: dict[str, dict] = {}

    def add(name: str, index: int, seconds: float, out) -> None:
        m = methods.setdefault(name, {"seconds": [], "steps": [], "images": [], "converged": []})
        m["seconds"].append(seconds)
        m["steps"].append(int(out.num_inference_steps[0]))
        m["images"].append(_to_uint8(out.images)[0])
        m["converged"].append(out.converged[0])

    # phase 1, interleaved per prompt: full, auto, auto+guard
    for i, prompt in enumerate(tqdm(prompts, desc="full / auto (+ guard)", unit="prompt")):
        for name, steps, use_guard in (("full", FULL_STEPS, False), ("full+guard", FULL_STEPS, True),
                                       ("auto", "auto", False), ("auto+guard", "auto", True)):
            seconds, out = call(prompt, steps, i, use_guard)
            add(name, i, seconds, out)
    # phase 2: one fixed step count for every prompt, at the mean steps of each adaptive method (+ a sweep)
    fixed = {f"fixed@{name}": int(round(np.mean(methods[name]["steps"]))) for name in ("full+guard", "auto", "auto+guard")}
    fixed.update({f"fixed {s}": s for s in args.sweep if s not in fixed.values()})
    for i, prompt in enumerate(tqdm(prompts, desc="fixed step counts", unit="prompt")):
        for name, steps in fixed.items():
            seconds, out = call(prompt, steps, i)
            add(name, i, seconds, out)

    # predictor overhead: the predictor's own work (a dot product on the pooled embedding the pipeline computes
    # anyway) against one denoising step
    pooled, _ = encode_prompts(pipe, prompts[:1])
    start = time.perf_counter()
    for _ in range(200):
        predictor.predict(pooled)
    predict_seconds = (time.perf_counter() - start) / 200
    step_seconds = float(np.median(methods["full"]["seconds"])) / FULL_STEPS

    full_images = methods["full"]["images"]
    try:
        from optimum_dynexec.diffusion.correctness import load_classifier

        classifier = load_classifier()
    except (FileNotFoundError, OSError) as error:
        logger.warning("no scene classifier (%s): scene correctness is not measured", error)
        classifier = None
    rows = []
    for name, m in methods.items():
        ssim = [image_ssim(a, b) for a, b in zip(m["images"], full_images)]
        correctness = scene_scores(np.stack(m["images"]), prompts, classifier) if classifier is not None else [np.nan]
        rows.append({
            "method": name,
            "mean_steps": float(np.mean(m["steps"])),
            "steps_saved": float(1 - np.mean(m["steps"]) / FULL_STEPS),
            "seconds_per_image": float(np.mean(m["seconds"])),
            "time_vs_full": float(np.mean(m["seconds"]) / np.mean(methods["full"]["seconds"])),
            "ssim_to_full": float(np.mean(ssim)),
            "ssim_to_full_min": float(np.min(ssim)),
            "scene_correctness": float(np.mean(correctness)),
            "steps": m["steps"],
            "ssim": ssim,
            "converged": m["converged"],
        })
    record.update({
        "pipeline": str(pipeline),
        "predictor": str(predictor_file),
        "predictor_metrics": predictor.metrics,
        "prompts": prompts,
        "guidance_scale": args.guidance_scale,
        "scheduler": type(pipe.scheduler).__name__,
        "guard": guard,
        "predict_seconds": predict_seconds,
        "denoising_step_seconds": step_seconds,
        "predictor_overhead_share_of_step": predict_seconds / step_seconds,
        "rows": rows,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    write_markdown(record, args.out / "results.md")
    plot_grid(prompts, methods, args.out / "grid.png", count=args.grid)
    plot_quality(rows, args.out / "quality_vs_steps.png")
    return record


def write_markdown(record: dict, path: Path) -> None:
    lines = [
        "# StepSaver benchmark: the embedded scenes model (OpenVINO)",
        "",
        f"- {hardware.summary_line(record['hardware'])}",
        f"- {len(record['prompts'])} held-out prompts (scene stream seed {BENCH_SEED}; the predictor was trained on "
        f"seed {TRAIN_SEED}), one seed per prompt shared by every method, guidance scale {record['guidance_scale']}, "
        f"scheduler {record['scheduler']}",
        f"- predictor: `{record['predictor']}`; held-out MAE {record['predictor_metrics'].get('held_out_mae_steps', float('nan')):.2f} "
        f"steps (constant prediction: {record['predictor_metrics'].get('held_out_constant_mae_steps', float('nan')):.2f})",
        f"- predictor overhead: {record['predict_seconds'] * 1e6:.0f} us = "
        f"{100 * record['predictor_overhead_share_of_step']:.3f}% of one denoising step "
        f"({record['denoising_step_seconds'] * 1e3:.2f} ms)",
        "",
        "| method | mean steps | steps saved | s / image | time vs full | SSIM to full (mean / min) | scene correctness |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['method']} | {r['mean_steps']:.1f} | {100 * r['steps_saved']:.0f}% | {r['seconds_per_image']:.3f} | "
            f"{r['time_vs_full']:.2f} | {r['ssim_to_full']:.3f} / {r['ssim_to_full_min']:.3f} | "
            f"{r['scene_correctness']:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot_grid(prompts: list[str], methods: dict, path: Path, count: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [name for name in ("full", "auto", "auto+guard", "fixed@auto") if name in methods]
    count = min(count, len(prompts))
    fig, axes = plt.subplots(count, len(columns), figsize=(2.2 * len(columns) + 2.8, 2.2 * count), squeeze=False)
    for row in range(count):
        for col, name in enumerate(columns):
            ax = axes[row][col]
            ax.imshow(methods[name]["images"][row], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {methods[name]['steps'][row]} steps", fontsize=8)
        axes[row][0].set_ylabel("\n".join(_wrap(prompts[row], 30)), fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def plot_quality(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    fixed = sorted((r for r in rows if r["method"].startswith("fixed") or r["method"] == "full"),
                   key=lambda r: r["mean_steps"])
    for ax, key, label in ((axes[0], "ssim_to_full", "SSIM to the full-step image"),
                           (axes[1], "scene_correctness", "scene correctness (%)")):
        ax.plot([r["mean_steps"] for r in fixed], [r[key] for r in fixed], "o-", color="gray", label="one fixed step count")
        for r in rows:
            if r["method"] in ("auto", "auto+guard"):
                ax.plot(r["mean_steps"], r[key], "*", ms=14, label=r["method"])
        ax.set(xlabel="mean denoising steps", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("adaptive steps vs one step count for all prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a scenes pipeline in diffusers layout (default: the committed one); with --model the "
                        "predictor is trained into --out")
    parser.add_argument("--prompts", type=int, default=600,
                        help="held-out prompts (default 600, ~8 min: scene correctness differences between methods "
                        "have a standard error of ~0.3 points at 1000 prompts, ~1.2 at 150)")
    parser.add_argument("--train-prompts", type=int, default=300, help="prompts labelled to train the predictor")
    parser.add_argument("--retrain", action="store_true", help="label and train the predictor again (and commit it)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (default: the scenes model's recommended 2.0; at diffusers' "
                        "7.5 this small model's images fall apart)")
    parser.add_argument("--scheduler", default=None,
                        help="a diffusers scheduler class for labelling and benchmark, e.g. DDIMScheduler "
                        "(default: the pipeline's own)")
    parser.add_argument("--guard-tolerance", type=float, default=0.02,
                        help="relative change of the predicted clean latent per step below which the guard stops "
                        "(default 0.02; this model's changes fall from ~0.08 to ~0.01 over 50 steps)")
    parser.add_argument("--sweep", type=lambda s: [int(x) for x in s.split(",") if x], default=[10, 15, 20, 30],
                        help="more fixed step counts for the quality-vs-steps plot (default 10,15,20,30)")
    parser.add_argument("--grid", type=int, default=8, help="prompts in grid.png")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results") / time.strftime("steps-%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    if args.guidance_scale is None:
        from optimum_dynexec.diffusion.tiny_sd import RECOMMENDED_GUIDANCE

        args.guidance_scale = RECOMMENDED_GUIDANCE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    run(args)
    print((args.out / "results.md").read_text())
    logger.info("wrote %s (%.0f s)", args.out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
