"""A PNG grid of generated samples: one row per prompt, one column per step count."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np


def generate(pipe, prompts: Sequence[str], steps: int, seed: int = 0, batch_size: int = 32, **kwargs) -> np.ndarray:
    """Images of ``prompts`` at ``steps`` denoising steps as ``(n, h, w, 3)`` floats in [0, 1].

    Works with diffusers' and optimum-intel's pipelines alike. Every prompt starts from the same noise
    (its own generator seeded with ``seed``), so an image does not depend on its batch.
    """
    import torch

    images = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        generators = [torch.Generator().manual_seed(seed) for _ in chunk]
        out = pipe(chunk, num_inference_steps=steps, generator=generators, output_type="np", **kwargs)
        images.append(np.asarray(out.images))
    return np.concatenate(images)


def sample_grid(
    pipe,
    prompts: Sequence[str],
    steps: Sequence[int] = (10, 25, 50),
    path: Union[str, Path] = "samples.png",
    seed: int = 0,
    scale: int = 4,
    **kwargs,
) -> Path:
    """Generate every prompt at every step count (same seed) and save a labelled grid to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = {n: generate(pipe, prompts, n, seed, **kwargs) for n in steps}
    fig, axes = plt.subplots(len(prompts), len(steps), figsize=(2.2 * len(steps) + 3.2, 2.0 * len(prompts)),
                             squeeze=False)  # fmt: skip
    for row, prompt in enumerate(prompts):
        for col, n in enumerate(steps):
            ax = axes[row][col]
            image = np.repeat(np.repeat(columns[n][row], scale, 0), scale, 1)
            ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{n} steps", fontsize=9)
        axes[row][0].set_ylabel(_wrap(prompt), rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 32) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
