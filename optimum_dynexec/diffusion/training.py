"""Training of the scenes model's parts on generated scenes, each within a time budget.

* ``train_vae``: the ``AutoencoderKL`` on reconstruction (MSE) with a small KL term;
* ``encode_latents``: the data set's latent distributions, once (the denoiser never runs the VAE);
* ``train_denoiser``: text encoder and UNet jointly on the noise-prediction loss (min-SNR weighted), the
  caption dropped to the empty prompt 10% of the time (classifier-free guidance), with an EMA of the weights;
* ``train_classifier``: the scene-correctness CNN on generator images, lightly blurred and noised.

Budgets are wall-clock seconds: a loop's learning-rate schedule follows the elapsed fraction of its
budget. Progress is shown with tqdm.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import scenes
from .correctness import SceneClassifier, read_scenes

@dataclass
class Dataset:
    """Scenes rendered once: images ``(n, s, s, 3)`` uint8, their captions and labels."""

    images: np.ndarray
    captions: list[str]
    backgrounds: np.ndarray
    cells: np.ndarray
    sizes: np.ndarray

    @classmethod
    def generate(cls, seed: int, count: int, image_size: int = 32, progress: bool = True) -> "Dataset":
        """``count`` scenes of the stream ``seed``, rendered at ``image_size``."""
        drawn = [scenes.scene(seed, i) for i in tqdm(range(count), desc="scenes", disable=not progress)]
        backgrounds, cells, sizes = scenes.stack_labels(s.label for s in drawn)
        return cls(scenes.render_batch(drawn, image_size), [s.caption for s in drawn], backgrounds, cells, sizes)

    def __len__(self) -> int:
        return len(self.images)

    def tensor(self, index: np.ndarray) -> torch.Tensor:
        """Images ``index`` as a ``(b, 3, s, s)`` float tensor in [-1, 1]."""
        return torch.from_numpy(self.images[index]).permute(0, 3, 1, 2).float() / 127.5 - 1


@dataclass
class LoopResult:
    """What a training loop did: steps, seconds and the loss curve (mean per 1/20 of the run)."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def _schedule(progress: float, warmup: float, floor: float = 0.05) -> float:
    """Learning-rate factor at ``progress`` (0-1) of a run: linear warm-up over ``warmup``, then cosine."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    progress = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def run_loop(
    step_fn: Callable[[int, float], float],
    seconds: float,
    lr: float,
    desc: str,
    warmup: float = 0.03,
    max_steps: Optional[int] = None,
    progress: bool = True,
    position: int = 0,
) -> LoopResult:
    """Call ``step_fn(step, learning_rate) -> loss`` until ``seconds`` have passed (or ``max_steps`` steps).

    The learning rate follows the elapsed fraction of the budget (warm-up over ``warmup`` of it, then a
    cosine decay), so a run ends with its budget even when the machine's speed changes along the way.
    """
    start = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(total=round(seconds) if max_steps is None else max_steps, desc=desc, disable=not progress,
               mininterval=2.0, position=position, unit="s" if max_steps is None else "it")  # fmt: skip
    step, shown = 0, 0
    while True:
        elapsed = time.perf_counter() - start
        done = step / max_steps if max_steps else elapsed / seconds
        if done >= 1:
            break
        losses.append(step_fn(step, lr * _schedule(done, warmup)))
        step += 1
        now = step if max_steps else round(time.perf_counter() - start)
        if now > shown:
            bar.update(now - shown)
            shown = now
        if step % 25 == 0:
            bar.set_postfix(step=step, loss=f"{np.mean(losses[-25:]):.4f}", refresh=False)
    bar.close()
    chunk = max(1, len(losses) // 20)
    curve = [float(np.mean(losses[i : i + chunk])) for i in range(0, len(losses), chunk)]
    return LoopResult(step, time.perf_counter() - start, curve)


def train_vae(vae, data: Dataset, seconds: float, batch_size: int = 16, lr: float = 2e-3, kl_weight: float = 1e-6,
              seed: int = 0, progress: bool = True, hook: Optional[Callable[[int], None]] = None) -> LoopResult:  # fmt: skip
    """Train ``vae`` to reconstruct ``data``'s images (random flips) within ``seconds``.

    The loss is L1 + MSE (L1 keeps the edges of flat-coloured shapes sharp) plus ``kl_weight`` times the
    mean KL per latent element; the reported loss is the MSE. ``hook(step)`` runs before every step.
    """
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()

    def step(index: int, learning_rate: float) -> float:
        if hook is not None:
            hook(index)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        x = data.tensor(rng.integers(len(data), size=batch_size))
        if rng.random() < 0.5:
            x = x.flip(-1)
        if rng.random() < 0.5:
            x = x.flip(-2)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.l1_loss(recon, x) + mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return mse.item()

    result = run_loop(step, seconds, lr, "vae", warmup=0.02, progress=progress)
    vae.eval()
    return result


@torch.no_grad()
def encode_latents(vae, data: Dataset, batch_size: int = 512, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each image's latent distribution, ``(n, c, h, w)`` each."""
    means, stds = [], []
    for i in tqdm(range(0, len(data), batch_size), desc="encode", disable=not progress):
        dist = vae.encode(data.tensor(np.arange(i, min(i + batch_size, len(data))))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def train_denoiser(
    text_encoder,
    unet,
    scheduler,
    latents: tuple[torch.Tensor, torch.Tensor],
    input_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    seconds: float,
    batch_size: int = 128,
    lr: float = 1.5e-3,
    drop_caption: float = 0.1,
    min_snr_gamma: float = 5.0,
    ema_decay: float = 0.998,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LoopResult, nn.Module, nn.Module]:
    """Train text encoder and UNet jointly to predict the noise of scaled latents given the caption.

    Args:
        latents: mean and std of each training image's latent distribution, already times the VAE's
            scaling factor; each step samples from them.
        input_ids: ``(n, max_length)`` padded caption ids; ``empty_ids``: ``(max_length,)`` ids of "".
        drop_caption: fraction of captions replaced by "" (what the pipeline's guidance uses as negative).
        min_snr_gamma: loss weight ``min(SNR, gamma) / SNR`` per timestep (Hang et al., 2023).

    Returns:
        the loop's result, and EMA copies of the text encoder and UNet (the weights to keep).
    """
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = latents
    params = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=min_snr_gamma) / snr
    text_encoder.train()
    unet.train()

    def step(index: int, learning_rate: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        rows = torch.from_numpy(rng.integers(len(mean), size=batch_size))
        x0 = mean[rows] + std[rows] * torch.randn(mean[rows].shape, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (batch_size,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        ids = input_ids[rows].clone()
        ids[torch.rand(batch_size, generator=generator) < drop_caption] = empty_ids
        states = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=states).sample
        loss = (weights[t] * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(ema_decay, (1 + index) / (10 + index))
        _ema_update(ema_text, text_encoder, decay)
        _ema_update(ema_unet, unet, decay)
        return loss.item()

    result = run_loop(step, seconds, lr, "denoiser", warmup=0.03, progress=progress)
    return result, ema_text, ema_unet


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, noise and colour jitter of random strength per image, so the classifier also reads imperfect
    (generated, blurry) images; a quarter of the images are left clean."""
    n = x.shape[0]
    strength = (torch.rand(n, 1, 1, 1, generator=generator) > 0.25).float()
    blur = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(n, 1, 1, 1, generator=generator) * strength
    x = x * (1 - mix) + blur * mix
    noise = torch.rand(n, 1, 1, 1, generator=generator) * 0.1 * strength
    x = x + torch.randn(x.shape, generator=generator) * noise
    x = x + (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.1 * strength
    return x.clamp(-1, 1)


def train_classifier(model: SceneClassifier, data: Dataset, seconds: float, batch_size: int = 48, lr: float = 3e-3,
                     seed: int = 0, progress: bool = True, max_steps: Optional[int] = None,
                     position: int = 0) -> LoopResult:  # fmt: skip
    """Train the scene classifier on ``data`` (augmented) within ``seconds`` (or ``max_steps``)."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()

    def step(_: int, learning_rate: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        rows = rng.integers(len(data), size=batch_size)
        background, cells, sizes = model(augment(data.tensor(rows), generator))
        occupied = torch.from_numpy(data.cells[rows] > 0)
        loss = (
            F.cross_entropy(background, torch.from_numpy(data.backgrounds[rows]))
            + F.cross_entropy(cells.flatten(0, 1), torch.from_numpy(data.cells[rows]).flatten())
            + 0.5 * F.cross_entropy(sizes[occupied], torch.from_numpy(data.sizes[rows])[occupied])
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    result = run_loop(step, seconds, lr, "classifier", warmup=0.03, max_steps=max_steps, progress=progress,
                      position=position)
    model.eval()
    return result


def classifier_accuracy(model: SceneClassifier, data: Dataset) -> dict[str, float]:
    """Accuracy of ``model`` on ``data``: background, cell class, size of occupied cells, whole scene."""
    reading = read_scenes(data.images, model)
    cells_ok = reading.cells == data.cells
    occupied = data.cells > 0
    sizes_ok = np.where(occupied, reading.sizes == data.sizes, True)
    return {
        "background": float(np.mean(reading.background == data.backgrounds)),
        "cell": float(np.mean(cells_ok)),
        "object_cell": float(np.mean(cells_ok[occupied])),
        "size": float(np.mean(sizes_ok[occupied])),
        "scene": float(np.mean((reading.background == data.backgrounds) & cells_ok.all(1) & sizes_ok.all(1))),
    }
