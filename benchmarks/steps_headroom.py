"""How much of an image's step need its prompt decides: the headroom of any prompt-to-steps predictor.

    python -m benchmarks.steps_headroom [--prompts 300] [--seeds 2] [--scheduler EulerDiscreteScheduler]

StepSaver predicts a step count from the prompt alone, before the noise is drawn. That can only beat one fixed
step count for every prompt when the prompt, not the seed, decides how many steps an image needs. This script
generates each held-out prompt (scene stream seed 2, as ``benchmarks.steps``) at every rung of the labelling
ladder with ``--seeds`` seeds and measures:

* per rung, the mean SSIM to the full-step image and the scene correctness, overall and per background pattern;
* how the labels (the fewest steps after which the image stops changing) of one prompt under two seeds agree;
* the cross-validated R^2 of a ridge regression from the predictor's input (the pipeline's own text embedding)
  to the label: the share of the label a predictor of this kind learns;
* policies judged on seed 1's images, each against one fixed step count with the same mean steps: the prompt
  oracle (every image at the steps its prompt needed under seed 0: one seed's label, noisy), the allocation by
  background pattern (each pattern at the steps its prompts need on average under seed 0: what a predictor
  that reads the pattern from the prompt can do), and the seed oracle (every image at its own label: the bound
  of methods that watch the image itself).

Writes ``headroom.json``, ``headroom.md`` and ``headroom.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import hardware
from benchmarks.steps import BENCH_SEED, exported_scenes_pipeline, load_scenes_pipeline, scene_prompts

logger = logging.getLogger("benchmarks.steps_headroom")


def generate_ladders(pipe, prompts: list[str], ladder: tuple[int, ...], seeds: int,
                     guidance_scale: float) -> np.ndarray:
    """Images ``(seeds, prompts, rungs, H, W, 3)`` uint8: every prompt at every rung under seeds 0..seeds-1."""
    from tqdm.auto import tqdm

    from optimum_dynexec.models.diffusion import image_generator

    generate = image_generator(pipe, guidance_scale=guidance_scale)
    first = generate(prompts[0], ladder[0], 0)
    images = np.zeros((seeds, len(prompts), len(ladder), *first.shape), dtype=np.uint8)
    with tqdm(total=seeds * len(prompts), desc="ladders", unit="image set") as bar:
        for seed in range(seeds):
            for i, prompt in enumerate(prompts):
                for j, steps in enumerate(ladder):
                    images[seed, i, j] = generate(prompt, steps, seed)
                bar.update()
    return images


def fixed_at(mean_steps: float, ladder: np.ndarray, values: np.ndarray) -> float:
    """A fixed step count's metric at ``mean_steps`` (linear between the rungs around it)."""
    return float(np.interp(mean_steps, ladder, values))


def analyse(images: np.ndarray, prompts: list[str], embeddings: np.ndarray, ladder: tuple[int, ...]) -> dict:
    """The measurements of the module docstring from ladders of images."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict

    from optimum_dynexec.diffusion.correctness import scene_scores
    from optimum_dynexec.diffusion.labelling import (DEFAULT_FULL_SSIM, DEFAULT_NEIGHBOUR_SSIM, image_ssim,
                                                     label_from_ssim)
    from optimum_dynexec.diffusion.scenes import PATTERNS, parse_caption

    seeds, count, rungs = images.shape[:3]
    rung_steps = np.array(ladder)
    to_full = np.array([[[image_ssim(images[s, i, j], images[s, i, -1]) for j in range(rungs)]
                         for i in range(count)] for s in range(seeds)])
    to_next = np.array([[[image_ssim(images[s, i, j], images[s, i, j + 1]) for j in range(rungs - 1)]
                         for i in range(count)] for s in range(seeds)])
    correct = np.stack([np.stack([scene_scores(images[s, :, j], prompts) for j in range(rungs)], axis=1)
                        for s in range(seeds)])
    labels = np.array([[label_from_ssim(ladder, to_next[s, i], to_full[s, i], DEFAULT_NEIGHBOUR_SSIM,
                                        DEFAULT_FULL_SSIM) for i in range(count)] for s in range(seeds)])
    patterns = np.array([parse_caption(p).pattern for p in prompts])
    per_pattern = {
        pattern: {"prompts": int((patterns == pattern).sum()),
                  "mean_label": float(labels[:, patterns == pattern].mean()),
                  "ssim_to_full": to_full[:, patterns == pattern].mean(axis=(0, 1)).round(4).tolist(),
                  "scene_correctness": correct[:, patterns == pattern].mean(axis=(0, 1)).round(2).tolist()}
        for pattern in PATTERNS if (patterns == pattern).any()
    }
    ridge = RidgeCV(alphas=[1.0, 10.0, 100.0, 1000.0, 10000.0])
    x = (embeddings - embeddings.mean(0)) / np.maximum(embeddings.std(0), 1e-8)
    target = labels.mean(axis=0)  # the seed-averaged label: the part a prompt could decide
    predicted = cross_val_predict(ridge, x, target, cv=5)
    record = {
        "ladder": list(ladder),
        "seeds": seeds,
        "fixed": {"ssim_to_full": to_full.mean(axis=(0, 1)).round(4).tolist(),
                  "scene_correctness": correct.mean(axis=(0, 1)).round(2).tolist()},
        "per_pattern": per_pattern,
        "mean_label": float(labels.mean()),
        "label_histogram": {int(r): int((labels == r).sum()) for r in ladder},
        "embedding_ridge_cv_r2": float(1 - ((predicted - target) ** 2).mean() / max(target.var(), 1e-12)),
    }
    rows = np.arange(count)

    def policy(name: str, choice_of: np.ndarray, seed: int) -> dict:
        index = np.searchsorted(rung_steps, choice_of)
        steps = float(rung_steps[index].mean())
        ssim, correctness = to_full[seed, rows, index].mean(), correct[seed, rows, index].mean()
        return {"policy": name, "mean_steps": steps, "ssim_to_full": float(ssim),
                "scene_correctness": float(correctness),
                "fixed_ssim_at_equal_mean": fixed_at(steps, rung_steps, to_full[seed].mean(0)),
                "fixed_correctness_at_equal_mean": fixed_at(steps, rung_steps, correct[seed].mean(0))}

    evaluated = seeds - 1  # the last seed's images are judged; the first seed's labels stand for the prompt
    record["policies"] = [policy("seed oracle (each image at its own label)", labels[evaluated], evaluated)]
    if seeds > 1:
        record["label_correlation_between_seeds"] = float(np.corrcoef(labels[0], labels[1])[0, 1])
        record["policies"].append(policy("prompt oracle (seed 0's label)", labels[0], evaluated))
        choice = pattern_allocation(to_full[0], patterns, rung_steps)
        record["policies"].append(policy("per background pattern (seed 0's mean curves)", choice, evaluated))
    return record


def pattern_allocation(to_full: np.ndarray, patterns: np.ndarray, ladder: np.ndarray,
                       targets: np.ndarray = np.linspace(0.90, 0.999, 45)) -> np.ndarray:
    """Steps per prompt from what its caption says about difficulty (the background pattern), learned on one
    seed's images ``to_full`` (prompts x rungs): each pattern gets the fewest rungs at which its prompts' mean SSIM
    to the full-step image reaches a target, and the target is the one at which this allocation beats one fixed
    count of the same mean steps by the most on those images. The best any predictor reading only the pattern
    does (and a predictor can read the pattern from the prompt without error)."""
    fixed_curve = to_full.mean(axis=0)
    best, best_gain = np.full(len(patterns), ladder[-1]), -np.inf
    for target in targets:
        choice = np.empty(len(patterns), dtype=np.int64)
        for pattern in np.unique(patterns):
            reached = to_full[patterns == pattern].mean(axis=0) >= target
            choice[patterns == pattern] = ladder[int(np.argmax(reached))] if reached.any() else ladder[-1]
        index = np.searchsorted(ladder, choice)
        gain = to_full[np.arange(len(choice)), index].mean() - fixed_at(choice.mean(), ladder, fixed_curve)
        if gain > best_gain:
            best, best_gain = choice, gain
    return best


def write_markdown(record: dict, path: Path) -> None:
    ladder = record["ladder"]
    lines = [
        "# StepSaver headroom: how much of an image's step need its prompt decides",
        "",
        f"- {hardware.summary_line(record['hardware'])}",
        f"- {record['prompts']} held-out prompts x {record['seeds']} seeds, scheduler {record['scheduler']}, guidance "
        f"{record['guidance_scale']}; mean label {record['mean_label']:.1f} steps",
        f"- labels of one prompt under two seeds correlate at "
        f"{record.get('label_correlation_between_seeds', float('nan')):.2f}; "
        f"ridge from the text embedding to the seed-averaged label: cross-validated R^2 "
        f"{record['embedding_ridge_cv_r2']:.2f}",
        "",
        "| steps | " + " | ".join(str(s) for s in ladder) + " |",
        "|---|" + "---:|" * len(ladder),
        "| SSIM to full, all | " + " | ".join(f"{v:.3f}" for v in record["fixed"]["ssim_to_full"]) + " |",
        "| scene correctness, all | " + " | ".join(f"{v:.1f}" for v in record["fixed"]["scene_correctness"]) + " |",
    ]
    for pattern, values in record["per_pattern"].items():
        lines.append(f"| SSIM, {pattern} ({values['prompts']}; label {values['mean_label']:.1f}) | "
                     + " | ".join(f"{v:.3f}" for v in values["ssim_to_full"]) + " |")
    lines += ["", "| policy (judged on the last seed's images) | mean steps | SSIM to full | fixed count at equal mean "
              "| scene correctness | fixed count at equal mean |", "|---|---:|---:|---:|---:|---:|"]
    for p in record["policies"]:
        lines.append(f"| {p['policy']} | {p['mean_steps']:.1f} | {p['ssim_to_full']:.3f} | "
                     f"{p['fixed_ssim_at_equal_mean']:.3f} | {p['scene_correctness']:.1f} | "
                     f"{p['fixed_correctness_at_equal_mean']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladder = record["ladder"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for pattern, values in record["per_pattern"].items():
        axes[0].plot(ladder, values["ssim_to_full"], "o-", label=pattern)
        axes[1].plot(ladder, values["scene_correctness"], "o-", label=pattern)
    axes[0].set(xlabel="denoising steps", ylabel="SSIM to the full-step image", title="quality by background")
    axes[1].set(xlabel="denoising steps", ylabel="scene correctness (%)", title="correctness by background")
    histogram = record["label_histogram"]
    axes[2].bar(range(len(histogram)), list(histogram.values()), color="gray", tick_label=list(histogram))
    axes[2].set(xlabel="label (steps)", ylabel="images", title="labels, all seeds")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steps_headroom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=300, help="held-out prompts (default 300, ~8 min per seed)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2; the prompt oracle needs 2)")
    parser.add_argument("--scheduler", default=None, help="a diffusers scheduler class (default: the pipeline's own)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the scenes model's recommended")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/steps-headroom"))
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.prompts < 10:
        parser.error("need at least 1 seed and 10 prompts (the ridge regression is cross-validated 5-fold)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from optimum_dynexec.diffusion.labelling import DEFAULT_LADDER
    from optimum_dynexec.diffusion.tiny_sd import RECOMMENDED_GUIDANCE
    from optimum_dynexec.models.diffusion import encode_prompts

    guidance = RECOMMENDED_GUIDANCE if args.guidance_scale is None else args.guidance_scale
    pipe = load_scenes_pipeline(exported_scenes_pipeline(), args.scheduler)
    prompts = scene_prompts(BENCH_SEED, args.prompts)
    started = time.perf_counter()
    images = generate_ladders(pipe, prompts, DEFAULT_LADDER, args.seeds, guidance)
    embeddings = np.concatenate([encode_prompts(pipe, prompts[i : i + 64])[0] for i in range(0, len(prompts), 64)])
    record = {"hardware": hardware.collect(), "prompts": len(prompts), "scheduler": type(pipe.scheduler).__name__,
              "guidance_scale": guidance}
    record.update(analyse(images, prompts, embeddings, DEFAULT_LADDER))
    record["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "headroom.json").write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(record, args.out / "headroom.md")
    plot(record, args.out / "headroom.png")
    print((args.out / "headroom.md").read_text())
    return record


if __name__ == "__main__":
    main()
