"""StepSaver labels: the fewest denoising steps after which a prompt's image stops changing.

Each prompt is generated over a ladder of step counts with one seed. SSIM (scikit-image) is measured between
neighbouring rungs and between every rung and the largest one; the label is the smallest rung whose image
is both stable (SSIM to the next rung >= ``neighbour_ssim``) and close to the full-step image (SSIM to the
largest rung >= ``full_ssim``). A prompt that never settles is labelled with the largest rung.

Backend-free: the caller passes ``generate(prompt, steps, seed) -> (H, W, 3) uint8`` (see
``optimum_dynexec.models.diffusion.image_generator`` for an OpenVINO pipeline).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

#: the default ladder: dense where easy prompts settle, sparse towards the usual 50 steps
DEFAULT_LADDER = (4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
DEFAULT_NEIGHBOUR_SSIM = 0.95
DEFAULT_FULL_SSIM = 0.92
LABELS_FORMAT = "optimum-dynexec/step-labels/v1"

Generator = Callable[[str, int, int], np.ndarray]


def check_ladder(ladder: Sequence[int]) -> tuple[int, ...]:
    """``ladder`` as a tuple of increasing positive step counts (at least two); ValueError otherwise."""
    try:
        rungs = tuple(int(s) for s in ladder)
    except (TypeError, ValueError):
        raise ValueError(f"a step ladder is a list of whole numbers, got {ladder!r}.") from None
    if len(rungs) < 2:
        raise ValueError(f"a step ladder needs at least two step counts to compare, got {list(rungs)}.")
    if any(s < 1 for s in rungs) or any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise ValueError(f"step ladder {list(rungs)} must be positive and strictly increasing, e.g. 5,10,20,30,50.")
    return rungs


def image_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ``(H, W, 3)`` uint8 images (scikit-image, channels averaged, 7x7 Gaussian-free window)."""
    from skimage.metrics import structural_similarity

    if a.shape != b.shape:
        raise ValueError(f"SSIM needs images of one shape, got {a.shape} and {b.shape}.")
    side = min(a.shape[0], a.shape[1])
    window = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=window))


@dataclass
class PromptLabel:
    """The ladder of one prompt: SSIM of each rung to the next one and to the largest, and the label."""

    prompt: str
    steps: int
    ssim_to_next: list[float]  # one per rung except the last
    ssim_to_full: list[float]  # one per rung (the last is 1.0)


@dataclass
class StepLabels:
    """Labels of a prompt list, with how they were made (written as JSON by :meth:`save`)."""

    ladder: tuple[int, ...]
    seed: int
    neighbour_ssim: float
    full_ssim: float
    labels: list[PromptLabel] = field(default_factory=list)
    pipeline: dict = field(default_factory=dict)  # what generated the images (path, scheduler, guidance, size)
    format: str = LABELS_FORMAT

    @property
    def prompts(self) -> list[str]:
        return [label.prompt for label in self.labels]

    @property
    def steps(self) -> np.ndarray:
        return np.array([label.steps for label in self.labels], dtype=np.int64)

    def summary(self) -> dict:
        """Mean label, share of prompts per rung, steps saved against the largest rung."""
        steps = self.steps
        full = self.ladder[-1]
        return {
            "prompts": len(self.labels),
            "mean_steps": float(steps.mean()) if len(steps) else math.nan,
            "steps_saved": float(1 - steps.mean() / full) if len(steps) else math.nan,
            "histogram": {int(s): int((steps == s).sum()) for s in self.ladder},
        }

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**asdict(self), "summary": self.summary()}, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "StepLabels":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"step labels {path} do not exist; write them with `optimum-cli dynexec label-steps`.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); label the prompts again.") from error
        if not isinstance(data, dict) or data.get("format") != LABELS_FORMAT:
            raise ValueError(f"{path} is not a step-label file of this optimum-dynexec (format {LABELS_FORMAT}).")
        data.pop("summary", None)
        data["ladder"] = check_ladder(data["ladder"])
        data["labels"] = [PromptLabel(**item) for item in data["labels"]]
        return cls(**data)


def label_from_ssim(ladder: Sequence[int], to_next: Sequence[float], to_full: Sequence[float],
                    neighbour_ssim: float, full_ssim: float) -> int:
    """The smallest rung that is stable and close to the full-step image (the largest rung if none is)."""
    for i, steps in enumerate(ladder[:-1]):
        if to_next[i] >= neighbour_ssim and to_full[i] >= full_ssim:
            return int(steps)
    return int(ladder[-1])


def label_prompt(generate: Generator, prompt: str, ladder: Sequence[int], seed: int = 0,
                 neighbour_ssim: float = DEFAULT_NEIGHBOUR_SSIM, full_ssim: float = DEFAULT_FULL_SSIM) -> PromptLabel:
    """Generate ``prompt`` at every rung of ``ladder`` with ``seed`` and label it."""
    images = [np.asarray(generate(prompt, steps, seed)) for steps in ladder]
    to_next = [image_ssim(a, b) for a, b in zip(images, images[1:])]
    to_full = [image_ssim(image, images[-1]) for image in images]
    steps = label_from_ssim(ladder, to_next, to_full, neighbour_ssim, full_ssim)
    return PromptLabel(prompt, steps, to_next, to_full)


def label_prompts(generate: Generator, prompts: Sequence[str], ladder: Sequence[int] = DEFAULT_LADDER, seed: int = 0,
                  neighbour_ssim: float = DEFAULT_NEIGHBOUR_SSIM, full_ssim: float = DEFAULT_FULL_SSIM,
                  pipeline: Optional[dict] = None, progress: bool = True) -> StepLabels:
    """Label every prompt (tqdm progress over prompts); see the module docstring."""
    from tqdm.auto import tqdm

    ladder = check_ladder(ladder)
    for name, value in (("neighbour_ssim", neighbour_ssim), ("full_ssim", full_ssim)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} is an SSIM threshold in (0, 1], got {value}.")
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty:
        raise ValueError(f"prompts {empty} are empty; a step label describes a prompt, remove them.")
    labels = StepLabels(ladder, seed, neighbour_ssim, full_ssim, pipeline=dict(pipeline or {}))
    for prompt in tqdm(prompts, desc="labelling steps", unit="prompt", disable=not progress):
        labels.labels.append(label_prompt(generate, prompt, ladder, seed, neighbour_ssim, full_ssim))
    return labels


def plot_labels(labels: StepLabels, directory: Union[str, Path], max_curves: int = 40) -> list[Path]:
    """``ssim_vs_steps.png`` (SSIM to the full-step image and to the next rung, per prompt, labels marked)
    and ``label_histogram.png`` in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ladder = list(labels.ladder)
    shown = labels.labels[:max_curves]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.cm.viridis(np.linspace(0, 1, max(len(shown), 1)))
    for colour, label in zip(colours, shown):
        axes[0].plot(ladder, label.ssim_to_full, color=colour, alpha=0.6, lw=1)
        axes[0].plot([label.steps], [label.ssim_to_full[ladder.index(label.steps)]], "o", color=colour, ms=4)
        axes[1].plot(ladder[:-1], label.ssim_to_next, color=colour, alpha=0.6, lw=1)
    axes[0].axhline(labels.full_ssim, color="k", ls="--", lw=1, label=f"threshold {labels.full_ssim}")
    axes[1].axhline(labels.neighbour_ssim, color="k", ls="--", lw=1, label=f"threshold {labels.neighbour_ssim}")
    axes[0].set(title="SSIM to the full-step image (dot: label)", xlabel="denoising steps", ylabel="SSIM")
    axes[1].set(title="SSIM to the next rung", xlabel="denoising steps")
    for ax in axes:
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(labels.labels)} prompts (first {len(shown)} drawn), seed {labels.seed}")
    fig.tight_layout()
    curves = directory / "ssim_vs_steps.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    summary = labels.summary()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([str(s) for s in ladder], [summary["histogram"][s] for s in ladder], color="tab:blue")
    ax.set(title=f"step labels: mean {summary['mean_steps']:.1f} of {ladder[-1]} "
                 f"({100 * summary['steps_saved']:.0f}% saved)", xlabel="label (steps)", ylabel="prompts")
    fig.tight_layout()
    histogram = directory / "label_histogram.png"
    fig.savefig(histogram, dpi=110)
    plt.close(fig)
    return [curves, histogram]
