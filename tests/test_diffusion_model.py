"""The embedded scenes model: generator, tokenizer, pipelines (diffusers and OpenVINO), scene correctness.

A tiny random pipeline (``TinySDConfig.random()``) covers building, saving, loading and the OpenVINO export
through optimum-intel; the committed pipeline and classifier are checked for what they were trained to do.
Every generation runs a few steps only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from optimum_dynexec.diffusion import correctness, grid, scenes, tiny_sd  # noqa: E402
from optimum_dynexec.diffusion.tokenizer import build_tokenizer  # noqa: E402

PROMPTS = ["a big red circle on a blue background", "two small white crosses and a green square on the left on a gray background"]


def test_generator_is_deterministic():
    first, again = scenes.scenes(5, 50), scenes.scenes(5, 50)
    assert [s.caption for s in first] == [s.caption for s in again]
    np.testing.assert_array_equal(scenes.render_batch(first), scenes.render_batch(again))
    assert scenes.scenes(5, 10, start=40) == first[40:]  # scene i does not depend on how many are drawn
    assert [s.caption for s in scenes.scenes(6, 50)] != [s.caption for s in first]


def test_captions_match_labels():
    for scene in scenes.scenes(1, 300):
        spec, label = scene.spec, scene.label
        assert scenes.parse_caption(scene.caption) == spec
        assert scenes.BACKGROUND_KINDS[label.background] == (spec.background, spec.pattern)
        assert ("striped" in scene.caption or "checkered" in scene.caption) == (spec.pattern != "plain")
        assert np.count_nonzero(label.cells) == spec.num_objects <= scenes.MAX_OBJECTS
        for group in spec.groups:
            where = np.flatnonzero(label.cells == group.object_class)
            assert len(where) == group.count and group.colour != spec.background
            if group.size:
                assert all(scenes.SIZES[s] == group.size for s in label.sizes[where])
            if group.position:
                assert scenes.POSITIONS[where[0]] == group.position
        image = scene.render(32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        if label.cells[0] == 0:  # an empty corner cell shows the background
            corner = tuple(image[0, 0])
            if spec.pattern == "plain":
                assert corner == scenes.RGB[spec.background]
            else:  # mostly one of the pattern's two colours (the edge between them is anti-aliased)
                colours = np.array([scenes.RGB[spec.background], scenes.pattern_shade(spec.background)])
                assert np.abs(colours - np.array(corner)).sum(1).min() < 0.6 * np.abs(colours[0] - colours[1]).sum()


def test_patterned_backgrounds_show_both_colours():
    spec = scenes.parse_caption("a red circle on a checkered blue background")
    assert spec.pattern == "checkered" and spec.background == "blue"
    for pattern in ("striped", "checkered"):
        drawn = scenes.Scene(scenes.SceneSpec("blue", (), pattern), (), (0.3, 0.7)).render(32).reshape(-1, 3)
        plain_share = np.mean(np.all(drawn == scenes.RGB["blue"], axis=1))
        shade_share = np.mean(np.all(drawn == scenes.pattern_shade("blue"), axis=1))
        assert 0.25 < plain_share < 0.75 and 0.25 < shade_share < 0.75, pattern


def test_scenes_vary_in_difficulty():
    drawn = scenes.scenes(2, 300)
    assert {s.spec.num_objects for s in drawn} == set(range(1, scenes.MAX_OBJECTS + 1))
    patterns = [s.spec.pattern for s in drawn]
    assert set(patterns) == set(scenes.PATTERNS) and 0.35 < patterns.count("plain") / len(patterns) < 0.65


def test_parse_caption_rejects_other_text():
    with pytest.raises(ValueError, match="background"):
        scenes.parse_caption("a photo of a cat")
    with pytest.raises(ValueError, match="shape"):
        scenes.parse_caption("two red circle on a blue background")
    with pytest.raises(ValueError, match="background"):
        scenes.parse_caption("a red circle on a dotted blue background")


def test_tokenizer_has_one_token_per_word():
    tokenizer = build_tokenizer(scenes.vocabulary(), model_max_length=32)
    for word in scenes.vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    caption = scenes.scene(0, 3).caption
    ids = tokenizer(caption, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 32) and ids[0, 0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == caption
    assert len(tokenizer("an unknown zebra").input_ids) > 3  # other words still encode, letter by letter


@pytest.fixture(scope="module")
def committed_pipeline():
    pipe = tiny_sd.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_committed_pipeline_loads_with_diffusers(committed_pipeline):
    assert committed_pipeline.vae_scale_factor == 4 and committed_pipeline.tokenizer.model_max_length == 32
    images = grid.generate(committed_pipeline, PROMPTS, steps=3)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    info = json.loads((tiny_sd.SCENES_SD_DIR / "training_info.json").read_text())
    assert info["vae"]["scaling_factor"] == pytest.approx(committed_pipeline.vae.config.scaling_factor, rel=1e-3)
    assert set(info["pipeline_scene_correctness"]) == {"5", "10", "25", "50"}


def test_committed_weights_are_small():
    files = [f for d in (tiny_sd.SCENES_SD_DIR, correctness.CLASSIFIER_DIR) for f in d.rglob("*") if f.is_file()]
    assert all(f.suffix != ".bin" for f in files)  # safetensors only
    assert sum(f.stat().st_size for f in files) < 8.5e6


@pytest.fixture(scope="module")
def random_pipeline_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-random-sd")
    tiny_sd.save_pipeline(tiny_sd.build_pipeline(tiny_sd.TinySDConfig.random(), seed=1), directory)
    return directory


def test_tiny_random_pipeline_round_trips(random_pipeline_dir):
    pipe = tiny_sd.build_pipeline(tiny_sd.TinySDConfig.random(), seed=1)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (random_pipeline_dir / part).is_dir()
    tokenizer_dir = random_pipeline_dir / "tokenizer"
    assert (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file()
    loaded = tiny_sd.load_pipeline(random_pipeline_dir)
    loaded.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(grid.generate(loaded, PROMPTS[:1], 2), grid.generate(pipe, PROMPTS[:1], 2), atol=1e-5)


def test_tiny_random_pipeline_runs_on_openvino(random_pipeline_dir):
    from optimum.intel import OVStableDiffusionPipeline

    ov_pipe = OVStableDiffusionPipeline.from_pretrained(
        str(random_pipeline_dir), export=True, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
    ov_pipe.set_progress_bar_config(disable=True)
    ov_images = grid.generate(ov_pipe, PROMPTS, steps=3, height=32, width=32)
    assert ov_images.shape == (2, 32, 32, 3)
    torch_pipe = tiny_sd.load_pipeline(random_pipeline_dir)
    torch_pipe.set_progress_bar_config(disable=True)
    # same model, same noise, same scheduler
    np.testing.assert_allclose(ov_images, grid.generate(torch_pipe, PROMPTS, steps=3), atol=0.02)


def test_classifier_reads_clean_generator_images():
    drawn = scenes.scenes(777, 100)  # a stream neither training nor evaluation used
    backgrounds, cells, sizes = scenes.stack_labels(s.label for s in drawn)
    reading = correctness.read_scenes(scenes.render_batch(drawn))
    occupied = cells > 0
    assert np.mean(reading.background == backgrounds) >= 0.95
    assert np.mean(reading.cells[occupied] == cells[occupied]) >= 0.9
    assert np.mean(reading.cells[~occupied] == 0) >= 0.95
    assert np.mean(reading.sizes[occupied] == sizes[occupied]) >= 0.9


def test_scene_correctness_of_clean_images_is_high_and_of_noise_low():
    drawn = scenes.scenes(778, 100)
    images = scenes.render_batch(drawn)
    prompts = [s.caption for s in drawn]
    scores = correctness.scene_scores(images, prompts)
    assert scores.shape == (100,) and ((0 <= scores) & (scores <= 100)).all()
    assert scores.mean() > 90
    assert correctness.scene_correctness(images, [s.spec for s in drawn], strict=True) > 70
    noise = np.random.default_rng(0).integers(0, 256, size=images.shape, dtype=np.uint8)
    assert correctness.scene_correctness(noise, prompts) < 40
    shuffled = prompts[1:] + prompts[:1]  # right images, wrong prompts
    assert correctness.scene_correctness(images, shuffled) < 60


def test_scene_correctness_accepts_pil_and_float_images():
    drawn = scenes.scenes(3, 4)
    images = scenes.render_batch(drawn)
    from PIL import Image

    as_pil = [Image.fromarray(im).resize((64, 64)) for im in images]
    scores = [correctness.scene_correctness(x, [s.caption for s in drawn]) for x in (images, images / 255.0, as_pil)]
    assert scores[0] == scores[1] and abs(scores[0] - scores[2]) <= 25
    with pytest.raises(ValueError, match="2 images and 4 prompts"):
        correctness.scene_scores(images[:2], [s.caption for s in drawn])
