"""Scene correctness: does an image show what its prompt says? The scenes model's CLIP score.

A small CNN, trained on the scene generator, reads an image back into a structured label: the background
colour and pattern, and for each cell of the 3x3 grid whether it holds an object, of which shape and colour, at which
size. ``scene_correctness`` then checks each statement of the prompt against that reading:

* the background colour, and its pattern (plain, striped, checkered);
* for each group ("two small red circles"): the number of red circles, their size if the prompt says it,
  the cell of a single object whose position the prompt names;
* no objects beyond those the prompt asks for;

and scores an image by the fraction of checks it passes (0-100, averaged over images). Generator images
score ~100 and pure noise scores low; a text-to-image model's images land in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from . import scenes
from .scenes import SceneLabel, SceneSpec

CLASSIFIER_DIR = Path(__file__).parent / "weights" / "scene-classifier"
_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"

ImageInput = Union[np.ndarray, Sequence]  # (n, h, w, 3) uint8 / float in [0, 1], or a list of PIL images / arrays
PromptInput = Sequence[Union[str, SceneSpec]]


class SceneClassifier(nn.Module):
    """Reads an image in [-1, 1] into background, cell-class and cell-size logits.

    The image is resized so each grid cell is ``cell_pixels`` square, and each of the 9 cells is cropped
    with a margin of half a cell on every side (objects are jittered and big ones reach over a cell's
    border; the image is edge-padded for the outer cells). One small CNN, shared by all cells (a circle is a
    circle in any cell), classifies each crop: what is in its centre (empty, or shape x colour) and at which
    size. Its flattened last feature map keeps where things are in the crop, so it learns to name the
    object in the middle and ignore a neighbour reaching in. The background is read from the crops'
    pooled features.
    """

    def __init__(self, image_size: int = 32, width: int = 16, hidden: int = 128, cell_pixels: int = 12):
        super().__init__()
        if cell_pixels % 4:
            raise ValueError("cell_pixels must be a multiple of 4 (crops of 2 cells are pooled by 8)")
        self.image_size = image_size
        self.width = width
        self.hidden = hidden
        self.cell_pixels = cell_pixels

        def conv(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + [nn.MaxPool2d(2)] if pool else layers

        w = width
        self.features = nn.Sequential(
            *conv(3, w, True), *conv(w, 2 * w, True), *conv(2 * w, 4 * w, True), *conv(4 * w, 4 * w, False)
        )
        side = 2 * cell_pixels // 8  # crop side after three poolings
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, hidden), nn.ReLU())
        self.cells = nn.Linear(hidden, scenes.NUM_OBJECT_CLASSES)
        self.sizes = nn.Linear(hidden, len(scenes.SIZES))
        self.background = nn.Linear(4 * w, len(scenes.BACKGROUND_KINDS))

    def crops(self, images: torch.Tensor) -> torch.Tensor:
        """The 9 cell crops of each image, ``(n * 9, 3, 2c, 2c)`` with ``c = cell_pixels``, row by row."""
        c = self.cell_pixels
        x = nn.functional.interpolate(images, size=(3 * c, 3 * c), mode="bilinear", align_corners=False,
                                      antialias=images.shape[-1] > 3 * c)  # fmt: skip
        x = nn.functional.pad(x, (c // 2,) * 4, mode="replicate")  # (n, 3, 4c, 4c)
        patches = x.unfold(2, 2 * c, c).unfold(3, 2 * c, c)  # (n, 3, 3, 3, 2c, 2c)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 2 * c, 2 * c)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits: background ``(n, B)``, cells ``(n, 9, C)``, sizes ``(n, 9, 2)``."""
        n = images.shape[0]
        features = self.features(self.crops(images))  # (n * 9, 4w, s, s)
        h = self.trunk(features)
        pooled = features.mean(dim=(2, 3)).view(n, 9, -1).mean(1)
        return (
            self.background(pooled),
            self.cells(h).view(n, 9, -1),
            self.sizes(h).view(n, 9, -1),
        )

    def config(self) -> dict:
        return {"image_size": self.image_size, "width": self.width, "hidden": self.hidden,
                "cell_pixels": self.cell_pixels}  # fmt: skip


@dataclass(frozen=True)
class Reading:
    """What the classifier sees in a batch of images: background ``(n,)``, cells ``(n, 9)``, sizes ``(n, 9)``."""

    background: np.ndarray
    cells: np.ndarray
    sizes: np.ndarray

    def __getitem__(self, i: int) -> SceneLabel:
        return SceneLabel(int(self.background[i]), self.cells[i], self.sizes[i])


def save_classifier(model: SceneClassifier, directory: Union[str, Path] = CLASSIFIER_DIR, extra: dict = None) -> Path:
    """Write ``model.safetensors`` (fp16) and ``config.json`` (sizes and ``extra``, e.g. accuracies)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}  # fmt: skip
    save_file(state, str(directory / _WEIGHTS))
    (directory / _CONFIG).write_text(json.dumps({**model.config(), **(extra or {})}, indent=2) + "\n")
    return directory


_CACHE: dict[str, SceneClassifier] = {}


def load_classifier(directory: Union[str, Path] = CLASSIFIER_DIR) -> SceneClassifier:
    """The classifier saved in ``directory`` (the embedded one by default), in eval mode, fp32; cached."""
    from safetensors.torch import load_file

    key = str(Path(directory).resolve())
    if key not in _CACHE:
        config = json.loads((Path(directory) / _CONFIG).read_text())
        model = SceneClassifier(config["image_size"], config["width"], config["hidden"], config["cell_pixels"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(Path(directory) / _WEIGHTS)).items()}
        model.load_state_dict(state)
        _CACHE[key] = model.eval()
    return _CACHE[key]


def to_tensor(images: ImageInput, image_size: int) -> torch.Tensor:
    """Images (uint8 or [0, 1] float arrays, or PIL images) as a ``(n, 3, s, s)`` float tensor in [-1, 1]."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    arrays = [np.asarray(im) for im in images]
    batch = []
    for a in arrays:
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
            a = a.transpose(1, 2, 0)  # CHW -> HWC
        batch.append(a[..., :3])
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).clamp(0, 1) * 2 - 1
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = nn.functional.interpolate(x, size=(image_size, image_size), mode="area")
    return x


@torch.no_grad()
def read_scenes(images: ImageInput, classifier: SceneClassifier = None, batch_size: int = 256) -> Reading:
    """Read background, cell classes and sizes from images."""
    classifier = classifier or load_classifier()
    x = to_tensor(images, classifier.image_size)
    parts = [classifier(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return Reading(
        torch.cat([p[0] for p in parts]).argmax(-1).numpy(),
        torch.cat([p[1] for p in parts]).argmax(-1).numpy(),
        torch.cat([p[2] for p in parts]).argmax(-1).numpy(),
    )


def checks(spec: SceneSpec, seen: SceneLabel) -> list[bool]:
    """Each statement of ``spec`` checked against a reading ``seen`` of an image (see the module doc)."""
    colour, pattern = scenes.BACKGROUND_KINDS[seen.background]
    results = [colour == spec.background, pattern == spec.pattern]
    for group in spec.groups:
        cls = group.object_class
        where = np.flatnonzero(seen.cells == cls)
        results.append(len(where) == group.count)
        if group.size is not None:
            results.append(len(where) > 0 and bool(np.all(seen.sizes[where] == scenes.SIZES.index(group.size))))
        if group.position is not None:
            results.append(int(seen.cells[scenes.POSITIONS.index(group.position)]) == cls)
    results.append(int(np.count_nonzero(seen.cells)) == spec.num_objects)
    return results


def _specs(prompts: PromptInput) -> list[SceneSpec]:
    return [p if isinstance(p, SceneSpec) else scenes.parse_caption(p) for p in prompts]


def scene_scores(images: ImageInput, prompts: PromptInput, classifier: SceneClassifier = None) -> np.ndarray:
    """Per image, the percentage of its prompt's checks that pass (0-100)."""
    specs = _specs(prompts)
    reading = read_scenes(images, classifier)
    if len(specs) != len(reading.background):
        raise ValueError(f"got {len(reading.background)} images and {len(specs)} prompts")
    return np.array([100.0 * float(np.mean(checks(spec, reading[i]))) for i, spec in enumerate(specs)])


def scene_correctness(
    images: ImageInput, prompts: PromptInput, classifier: SceneClassifier = None, strict: bool = False
) -> float:
    """How well images show their prompts, in [0, 100] (the scenes model's CLIP score).

    Args:
        images: ``(n, h, w, 3)`` uint8 or [0, 1] float array, or a list of PIL images / arrays (any size:
            they are resized to the classifier's).
        prompts: captions of the scene grammar, or ``SceneSpec`` objects.
        classifier: default: the embedded one.
        strict: score an image 100 only if every check passes, else 0 (exact-match rate).
    """
    scores = scene_scores(images, prompts, classifier)
    if strict:
        scores = np.where(scores >= 100.0, 100.0, 0.0)
    return float(scores.mean()) if len(scores) else 0.0
