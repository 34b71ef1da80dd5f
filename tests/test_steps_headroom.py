"""The StepSaver headroom analysis on ladders of images whose step needs are known by construction."""

import numpy as np
import pytest

from benchmarks.steps import scene_prompts
from benchmarks.steps_headroom import analyse

LADDER = (2, 4, 8, 16)


def _ladders(needs_by_seed: np.ndarray, side: int = 16) -> np.ndarray:
    """Images that are noise below each prompt's need and one fixed image from it on."""
    rng = np.random.default_rng(0)
    seeds, count = needs_by_seed.shape
    images = rng.integers(0, 256, size=(seeds, count, len(LADDER), side, side, 3), dtype=np.uint8)
    for s in range(seeds):
        for i in range(count):
            settled = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            for j, steps in enumerate(LADDER):
                if steps >= needs_by_seed[s, i]:
                    images[s, i, j] = settled
    return images


def test_a_prompt_decided_need_is_found_learned_and_exploited():
    count = 30
    needs = np.array(LADDER[:3])[np.arange(count) % 3]
    prompts = scene_prompts(2, count)
    embeddings = np.stack([needs, np.random.default_rng(1).normal(size=count)], axis=1).astype(float)
    record = analyse(_ladders(np.stack([needs, needs])), prompts, embeddings, LADDER)

    assert record["label_histogram"] == {2: 20, 4: 20, 8: 20, 16: 0}
    assert record["label_correlation_between_seeds"] == pytest.approx(1.0)
    assert record["embedding_ridge_cv_r2"] > 0.9
    seed_oracle, prompt_oracle, by_pattern = record["policies"]
    assert prompt_oracle["mean_steps"] == pytest.approx(needs.mean())
    assert prompt_oracle["ssim_to_full"] == pytest.approx(1.0)
    # one fixed count with the same mean steps leaves the prompts that need 8 steps unsettled
    assert prompt_oracle["fixed_ssim_at_equal_mean"] < 0.9
    assert seed_oracle["mean_steps"] == prompt_oracle["mean_steps"]


def test_a_seed_decided_need_leaves_the_prompt_oracle_nothing():
    count = 30
    rng = np.random.default_rng(2)
    needs = rng.choice(LADDER[:3], size=(2, count))
    prompts = scene_prompts(2, count)
    record = analyse(_ladders(needs), prompts, rng.normal(size=(count, 4)), LADDER)

    seed_oracle, prompt_oracle, by_pattern = record["policies"]
    assert seed_oracle["ssim_to_full"] == pytest.approx(1.0)
    assert abs(record["label_correlation_between_seeds"]) < 0.5
    assert record["embedding_ridge_cv_r2"] < 0.2
    # seed 0's labels say nothing about seed 1's images: no better than a fixed count of the same mean
    assert prompt_oracle["ssim_to_full"] < prompt_oracle["fixed_ssim_at_equal_mean"] + 0.1


def test_pattern_allocation_gives_the_slow_pattern_more_steps():
    from benchmarks.steps_headroom import pattern_allocation

    ladder = np.array(LADDER)
    patterns = np.array(["plain", "striped"] * 10)
    # plain prompts are settled at 2 steps, striped ones only at 8
    curves = {"plain": [1.0, 1.0, 1.0, 1.0], "striped": [0.2, 0.5, 1.0, 1.0]}
    to_full = np.array([curves[p] for p in patterns])
    choice = pattern_allocation(to_full, patterns, ladder)
    assert set(choice[patterns == "plain"]) == {2} and set(choice[patterns == "striped"]) == {8}
