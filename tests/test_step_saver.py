"""StepSaver: step labels (SSIM ladder), the step predictor, the convergence guard, and the OpenVINO pipeline
with num_inference_steps="auto" - on tiny random Stable Diffusion pipelines exported by optimum-intel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("skimage")

import torch  # noqa: E402

from optimum_dynexec.diffusion.convergence import ConvergenceGuard, predicted_clean_latent  # noqa: E402
from optimum_dynexec.diffusion.labelling import (  # noqa: E402
    StepLabels,
    check_ladder,
    image_ssim,
    label_from_ssim,
    label_prompts,
    plot_labels,
)
from optimum_dynexec.diffusion.predictor import (  # noqa: E402
    PREDICTOR_NAME,
    EncoderIdentity,
    StepPredictor,
    train_predictor,
)

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
PROMPTS = [
    "a red circle on a blue background",
    "two small green squares on a white background",
    "a big yellow triangle at the top left on a black background",
    "three purple crosses and a red circle on a gray background",
    "a blue square in the center on a yellow background",
    "an orange circle on the right and two white triangles on a green background",
    "a black cross at the bottom on a red background",
    "two big blue circles and a small red square on a white background",
    "a green triangle on a purple background",
    "three small orange squares on a blue background",
]
LADDER = (2, 3, 4, 6)


# ------------------------------------------------------------------------------------------------ algorithms


def test_ssim_is_scikit_image_and_checks_shapes():
    rng = np.random.default_rng(0)
    image = np.broadcast_to(np.linspace(0, 255, 32)[None, :, None], (32, 32, 3)).astype(np.uint8)  # a smooth ramp
    assert image_ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image.astype(int) + rng.integers(-60, 60, image.shape), 0, 255).astype(np.uint8)
    assert image_ssim(image, noisy) < 0.9
    with pytest.raises(ValueError, match="one shape"):
        image_ssim(image, image[:16])


def test_label_is_the_first_stable_rung_close_to_full():
    ladder = (5, 10, 20, 50)
    # rung 5 is close to full but still changing; rung 10 is stable and close
    assert label_from_ssim(ladder, [0.90, 0.97, 0.99], [0.95, 0.96, 0.99, 1.0], 0.95, 0.92) == 10
    assert label_from_ssim(ladder, [0.99, 0.99, 0.99], [0.80, 0.85, 0.90, 1.0], 0.95, 0.92) == 50  # never settles
    assert label_from_ssim(ladder, [0.99, 0.99, 0.99], [0.99, 0.99, 0.99, 1.0], 0.95, 0.92) == 5


def test_labelling_finds_when_a_synthetic_image_settles(tmp_path):
    rng = np.random.default_rng(1)
    targets = {p: rng.integers(0, 256, (32, 32, 3)).astype(np.float64) for p in ("easy", "hard")}
    noise = rng.normal(0, 1, (32, 32, 3))

    def generate(prompt, steps, seed):  # the image approaches its target as 1/steps (easy) or 1/sqrt(steps) (hard)
        decay = 1 / steps if prompt == "easy" else 1 / np.sqrt(steps)
        return np.clip(targets[prompt] + 400 * decay * noise, 0, 255).astype(np.uint8)

    labels = label_prompts(generate, ["easy", "hard"], ladder=(2, 4, 8, 16, 32, 64), progress=False)
    easy, hard = labels.steps
    assert easy < hard
    assert labels.labels[0].ssim_to_full[-1] == pytest.approx(1.0)
    path = labels.save(tmp_path / "labels.json")
    again = StepLabels.load(path)
    assert again.prompts == ["easy", "hard"] and list(again.steps) == [easy, hard] and again.ladder == labels.ladder
    assert json.loads(path.read_text())["summary"]["prompts"] == 2
    for png in plot_labels(labels, tmp_path):
        assert png.stat().st_size > 1000


def test_labelling_refuses_bad_input(tmp_path):
    def generate(prompt, steps, seed):
        return np.zeros((8, 8, 3), np.uint8)

    with pytest.raises(ValueError, match="empty"):
        label_prompts(generate, ["a red circle", "  "], ladder=(2, 4), progress=False)
    for ladder in ((5,), (10, 5), (0, 5), ("a", 3)):
        with pytest.raises(ValueError, match="ladder"):
            check_ladder(ladder)
    with pytest.raises(ValueError, match="SSIM threshold"):
        label_prompts(generate, ["x"], ladder=(2, 4), full_ssim=1.5, progress=False)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a step-label file"):
        StepLabels.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="label-steps"):
        StepLabels.load(tmp_path / "missing.json")


def _identity(size: int, seed: int = 0) -> EncoderIdentity:
    return EncoderIdentity(size, list(np.random.default_rng(seed).normal(size=size)), name="toy")


def test_predictor_learns_steps_from_embeddings_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    ladder = (5, 10, 15, 20, 30, 40, 50)
    steps = np.array([min((s for s in ladder if s >= v), default=50) for v in 25 + 8 * x[:, 0] + 4 * x[:, 1]])
    predictor = train_predictor(x, steps, ladder, _identity(16))
    metrics = predictor.metrics
    assert metrics["held_out_mae_steps"] < 0.5 * metrics["held_out_constant_mae_steps"]
    predicted = predictor.predict(x)
    assert set(predicted) <= set(ladder)  # moved to a rung of the ladder
    assert np.abs(predicted - steps).mean() < 4
    path = predictor.save(tmp_path)
    assert path.name == PREDICTOR_NAME
    loaded = StepPredictor.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict(x), predicted)
    assert "pickle" not in path.read_text()


def test_predictor_margin_keeps_the_target_ssim_on_held_out_prompts():
    rng = np.random.default_rng(2)
    ladder = (5, 10, 20, 30, 50)
    x = rng.normal(size=(200, 8))
    difficulty = 2.0 + x[:, 0] + 0.7 * rng.normal(size=200)  # the embedding explains part of it
    # SSIM to full rises with steps, later for harder prompts; the label is the first rung >= 0.9
    table = np.array([[1 - 0.5 * np.exp(-(s / 10) / max(d, 0.3)) if s < 50 else 1.0 for s in ladder] for d in difficulty])
    steps = np.array([ladder[int(np.argmax(row >= 0.9))] for row in table])
    plain = train_predictor(x, steps, ladder, _identity(8))
    tuned = train_predictor(x, steps, ladder, _identity(8), ssim_to_full=table, target_ssim=0.93)
    metrics = tuned.metrics
    assert metrics["held_out_simulated_ssim"] >= 0.93 and tuned.margin >= 0 and plain.margin == 0
    assert tuned.predict(x).mean() >= plain.predict(x).mean()  # safety costs steps, never saves them
    assert {"held_out_fixed_steps_at_equal_mean", "held_out_fixed_simulated_ssim"} <= set(metrics)
    with pytest.raises(ValueError, match="prompts x rungs"):
        train_predictor(x, steps, ladder, _identity(8), ssim_to_full=table[:, :2], target_ssim=0.9)


def test_quality_floor_is_the_first_rung_whose_mean_ssim_reaches_it():
    rng = np.random.default_rng(3)
    ladder = (5, 10, 20, 30, 50)
    x = rng.normal(size=(120, 8))
    # labels say many prompts settle at 5 or 10 steps, but 95% of the images reach 0.98 only at 20
    table = np.tile([0.90, 0.95, 0.985, 0.995, 1.0], (120, 1)) + rng.normal(scale=0.002, size=(120, 5))
    table[:, -1] = 1.0
    steps = rng.choice([5, 10, 20], size=120)
    floored = train_predictor(x, steps, ladder, _identity(8), ssim_to_full=table, floor_ssim=0.98)
    assert floored.min_steps == 20 and floored.metrics["floor_steps"] == 20
    assert floored.predict(x).min() >= 20
    assert train_predictor(x, steps, ladder, _identity(8), ssim_to_full=table, floor_ssim=0.85).min_steps == 5
    table[:12, 2] = 0.9  # 10% of the images still change at 20 steps
    assert train_predictor(x, steps, ladder, _identity(8), ssim_to_full=table, floor_ssim=0.98).min_steps == 30
    # an explicit min_steps wins; without the table there is no floor
    assert train_predictor(x, steps, ladder, _identity(8), min_steps=10, ssim_to_full=table, floor_ssim=0.98).min_steps == 10
    assert train_predictor(x, steps, ladder, _identity(8), floor_ssim=0.98).min_steps == 5
    with pytest.raises(ValueError, match="step range"):
        train_predictor(x, steps, ladder, _identity(8), max_steps=10, ssim_to_full=table, floor_ssim=0.98)


def test_predictor_snaps_to_rungs_and_clamps():
    identity = _identity(2)
    predictor = StepPredictor(coef=[1.0, 0.0], intercept=0.0, mean=[0, 0], scale=[1, 1], ladder=(5, 10, 20, 50),
                              min_steps=10, max_steps=20, encoder=identity)
    assert list(predictor.predict(np.array([[5.5, 0], [0.0, 0], [-100, 0], [14.0, 0], [16.0, 0], [1000, 0]]))) == [
        10, 10, 10, 10, 20, 20]
    wider = predictor.with_range(5, 50)
    assert list(wider.predict(np.array([[5.5, 0], [7.5, 0], [36, 0], [1000, 0]]))) == [5, 10, 50, 50]
    with pytest.raises(ValueError, match="embeddings of size 2"):
        predictor.predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        predictor.predict(np.array([[np.nan, 0]]))


def test_predictor_refuses_corrupt_files_and_other_encoders(tmp_path):
    identity = _identity(4)
    good = StepPredictor([1, 0, 0, 0], 20.0, [0] * 4, [1] * 4, (10, 20, 30), 10, 30, identity)
    path = good.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    cases = {
        "not valid JSON": "{oops",
        "not a step predictor": json.dumps({**data, "format": "other"}),
        "corrupt step predictor": json.dumps({**data, "coef": [1.0, 2.0]}),
        "incomplete or corrupt": json.dumps({k: v for k, v in data.items() if k != "encoder"}),
    }
    for message, text in cases.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            StepPredictor.load(tmp_path / "bad.json")
    data["scale"] = [0, 1, 1, 1]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="non-positive scales"):
        StepPredictor.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="train-steps"):
        StepPredictor.load(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="embedding size|gives 8"):
        identity.check(8, None)
    with pytest.raises(ValueError, match="another text encoder"):
        identity.check(4, -np.asarray(identity.probe_embedding))
    identity.check(4, np.asarray(identity.probe_embedding) * 1.001)  # precision noise passes


def test_predicted_clean_latent_inverts_the_forward_process():
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(1, 4, 8, 8)), rng.normal(size=(1, 4, 8, 8))
    a = 0.3
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    np.testing.assert_allclose(predicted_clean_latent(xt, eps, a, "epsilon"), x0, atol=1e-12)
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    np.testing.assert_allclose(predicted_clean_latent(xt, v, a, "v_prediction"), x0, atol=1e-12)
    with pytest.raises(ValueError, match="prediction_type"):
        predicted_clean_latent(xt, eps, a, "flow")


def test_convergence_guard_waits_for_patience_and_min_steps():
    guard = ConvergenceGuard(tolerance=0.01, patience=2, min_steps=4)
    base = np.ones(10)
    decisions = [guard.observe(base * (1 + 0.001 * i)) for i in range(6)]
    assert decisions == [False, False, False, True, True, True]  # calm from step 2, min_steps holds until step 4
    guard.reset()
    assert not any(guard.observe(base * (1 + 0.5 * i)) for i in range(6))  # always moving
    for bad in ({"tolerance": 0}, {"patience": 0}, {"min_steps": 0}):
        with pytest.raises(ValueError):
            ConvergenceGuard(**bad)


# ------------------------------------------------------------------------------------------------ pipelines


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random Stable Diffusion checkpoint (diffusers layout) and its OpenVINO export."""
    from optimum.intel import OVStableDiffusionPipeline

    from optimum_dynexec.diffusion.tiny_sd import TinySDConfig, build_pipeline, save_pipeline

    root = tmp_path_factory.mktemp("tiny-sd")
    checkpoint = save_pipeline(build_pipeline(TinySDConfig.random(), seed=0), root / "diffusers")
    exported = root / "openvino"
    OVStableDiffusionPipeline.from_pretrained(checkpoint, export=True, compile=False).save_pretrained(exported)
    other = save_pipeline(build_pipeline(TinySDConfig.random(), seed=1), root / "diffusers-other")
    return {"checkpoint": checkpoint, "exported": exported, "other": other, "root": root}


@pytest.fixture(scope="session")
def tiny_predictor(tiny_sd):
    """Labels of PROMPTS on the tiny pipeline and the predictor trained from them."""
    from optimum_dynexec.step_saving import label_pipeline, train_pipeline_predictor

    out = tiny_sd["root"] / "labels"
    labels = label_pipeline(tiny_sd["exported"], PROMPTS, out, ladder=LADDER, progress=False)
    predictor = train_pipeline_predictor(tiny_sd["exported"], out / "labels.json", tiny_sd["root"] / PREDICTOR_NAME)
    return {"labels": labels, "predictor": predictor, "path": tiny_sd["root"] / PREDICTOR_NAME, "out": out}


def _load(path, **kwargs):
    import optimum_dynexec  # noqa: F401  (registers the step_predictor flag)
    from optimum.intel import OVStableDiffusionPipeline

    return OVStableDiffusionPipeline.from_pretrained(path, ov_config=F32, **kwargs)


def _ours(path, **kwargs):
    from optimum_dynexec.models.diffusion import OVStepSaverStableDiffusionPipeline

    return OVStepSaverStableDiffusionPipeline.from_pretrained(path, ov_config=F32, **kwargs)


def _images(output) -> np.ndarray:
    return np.asarray(output.images)


def test_labelling_and_training_on_a_real_pipeline(tiny_predictor):
    labels, predictor = tiny_predictor["labels"], tiny_predictor["predictor"]
    assert labels.prompts == PROMPTS and set(labels.steps) <= set(LADDER)
    assert all(len(label.ssim_to_full) == len(LADDER) for label in labels.labels)
    assert (tiny_predictor["out"] / "ssim_vs_steps.png").is_file()
    assert predictor.embedding_size == 64 and predictor.ladder == LADDER  # TinySDConfig.random(): 32-wide CLIP, x2
    assert {"held_out_mae_steps", "held_out_under_predicted", "labels"} <= set(predictor.metrics)


def test_integer_steps_behave_exactly_as_upstream(tiny_sd, tiny_predictor):
    from optimum.intel import OVStableDiffusionPipeline

    from optimum_dynexec.models.diffusion import OVStepSaverStableDiffusionPipeline
    from optimum_dynexec.models.registration import original_from_pretrained

    ours = _load(tiny_sd["exported"], step_predictor=tiny_predictor["path"])
    assert isinstance(ours, OVStepSaverStableDiffusionPipeline)
    upstream = original_from_pretrained(OVStableDiffusionPipeline, tiny_sd["exported"], ov_config=F32)
    assert type(upstream) is OVStableDiffusionPipeline
    for steps in (2, 5):
        kwargs = dict(num_inference_steps=steps, output_type="np")
        mine = ours(PROMPTS[:2], generator=torch.Generator().manual_seed(3), **kwargs)
        theirs = upstream(PROMPTS[:2], generator=torch.Generator().manual_seed(3), **kwargs)
        np.testing.assert_array_equal(_images(mine), _images(theirs))
        assert mine.num_inference_steps == [steps, steps] and mine.predicted_steps is None


def test_auto_uses_the_predicted_steps_per_prompt(tiny_sd):
    pipe = _ours(tiny_sd["exported"])
    from optimum_dynexec.models.diffusion import encode_prompts, encoder_identity

    # a predictor whose steps follow the first embedding dimension: the prompts get different step counts
    pooled, _ = encode_prompts(pipe, PROMPTS[:4])
    identity = encoder_identity(pipe)
    coef = np.zeros(identity.embedding_size)
    coef[0] = 1.0
    mean, scale = pooled.mean(axis=0), np.ones(identity.embedding_size)
    scale[0] = pooled[:, 0].std() / 3
    predictor = StepPredictor(coef, 4.0, mean, scale, (2, 3, 4, 5, 6), 2, 6, identity)
    pipe.set_step_predictor(predictor)
    expected = predictor.predict(pooled)
    assert len(set(expected)) > 1, "the test needs prompts with different predicted steps"
    generators = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    out = pipe(PROMPTS[:4], num_inference_steps="auto", generator=generators, output_type="np")
    assert out.num_inference_steps == list(expected) == out.predicted_steps
    assert pipe.last_num_inference_steps == list(expected)
    for i, prompt in enumerate(PROMPTS[:4]):  # each image is what the integer call with its step count gives
        alone = pipe(prompt, num_inference_steps=int(expected[i]), generator=torch.Generator().manual_seed(10 + i),
                     output_type="np")
        np.testing.assert_allclose(_images(out)[i], _images(alone)[0], atol=1e-3)  # batch vs single: float noise
    assert list(pipe.predict_steps(PROMPTS[:4])) == list(expected)
    two = pipe(PROMPTS[:2], num_inference_steps="auto", num_images_per_prompt=2, output_type="np")
    assert len(two.images) == 4 and two.num_inference_steps == [expected[0]] * 2 + [expected[1]] * 2


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                       "PNDMScheduler"])
def test_auto_and_guard_run_with_any_scheduler(tiny_sd, tiny_predictor, scheduler):
    import diffusers

    pipe = _load(tiny_sd["exported"], step_predictor=tiny_predictor["path"])
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    out = pipe(PROMPTS[:2], num_inference_steps="auto", output_type="np")
    assert out.num_inference_steps == list(tiny_predictor["predictor"].predict(
        __import__("optimum_dynexec.models.diffusion", fromlist=["x"]).encode_prompts(pipe, PROMPTS[:2])[0]))
    assert np.isfinite(_images(out)).all()
    # a loose guard stops at its min_steps and decodes the predicted clean latent; a strict one runs to the end
    loose = pipe(PROMPTS[0], num_inference_steps=8, output_type="np",
                 convergence_guard={"tolerance": 1e6, "patience": 1, "min_steps": 3})
    assert loose.num_inference_steps == [3] and loose.converged == [True]
    assert np.isfinite(_images(loose)).all() and _images(loose).std() > 0
    strict = pipe(PROMPTS[0], num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0),
                  convergence_guard=ConvergenceGuard(tolerance=1e-12, patience=1, min_steps=1))
    assert strict.num_inference_steps == [5] and strict.converged == [False]
    plain = pipe(PROMPTS[0], num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(_images(strict), _images(plain), atol=1e-6)  # the guard only watches


def test_bad_input_gets_clear_errors(tiny_sd, tiny_predictor):
    without = _ours(tiny_sd["exported"])
    with pytest.raises(ValueError, match="needs a step predictor"):
        without(PROMPTS[0], num_inference_steps="auto")
    pipe = _load(tiny_sd["exported"], step_predictor=tiny_predictor["path"])
    with pytest.raises(ValueError, match="empty"):
        pipe(["a red circle on a blue background", ""], num_inference_steps="auto")
    with pytest.raises(ValueError, match="pass `prompt`"):
        pipe(prompt_embeds=torch.zeros(1, 32, 32), num_inference_steps="auto")
    with pytest.raises(ValueError, match="whole number or 'auto'"):
        pipe(PROMPTS[0], num_inference_steps="fast")
    with pytest.raises(ValueError, match="whole number >= 1"):
        pipe(PROMPTS[0], num_inference_steps=0)
    with pytest.raises(TypeError, match="convergence_guard"):
        pipe(PROMPTS[0], num_inference_steps=2, convergence_guard="yes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe(PROMPTS[0], num_inference_steps="auto", guidance_scale=1.0, negative_prompt="a blue square",
                   output_type="np")
    assert any("negative_prompt is ignored" in str(w.message) for w in caught)
    assert len(out.images) == 1
    # a predictor trained on another text encoder (other random weights, same size) is refused at load time
    with pytest.raises(ValueError, match="another text encoder"):
        _load(tiny_sd["other"], export=True, step_predictor=tiny_predictor["path"])
    wide = StepPredictor.load(tiny_predictor["path"])
    wide = StepPredictor(np.zeros(96), 5.0, np.zeros(96), np.ones(96), wide.ladder, 2, 6,
                         EncoderIdentity(96, [1.0] * 96, name="wider"))
    with pytest.raises(ValueError, match="96-dimensional"):
        pipe.set_step_predictor(wide)


def test_save_and_reload_bundles_the_predictor(tiny_sd, tiny_predictor, tmp_path):
    from optimum_dynexec.models.diffusion import OVStepSaverStableDiffusionPipeline

    pipe = _load(tiny_sd["exported"], step_predictor=tiny_predictor["path"], convergence_guard=True)
    pipe.save_pretrained(tmp_path / "bundle")
    config = json.loads((tmp_path / "bundle" / "dynexec_config.json").read_text())
    assert config["technique"] == "step-saver" and config["step_prediction"]["predictor"] == PREDICTOR_NAME
    reloaded = _load(tmp_path / "bundle")
    assert isinstance(reloaded, OVStepSaverStableDiffusionPipeline)
    assert reloaded.step_predictor is not None and reloaded.convergence_guard
    out = reloaded(PROMPTS[0], num_inference_steps="auto", output_type="np")
    assert out.converged[0] is not None
    (tmp_path / "bundle" / PREDICTOR_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="step_predictor.json"):
        _load(tmp_path / "bundle")
    assert not any(p.name.startswith(".bundle") for p in tmp_path.iterdir())  # no temporary directory left


def _cli(*args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_cli_label_train_export_and_load(tiny_sd, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    done = _cli("dynexec", "label-steps", tiny_sd["exported"], "--prompts", prompts, "--out", tmp_path / "labels",
                "--ladder", "2,3,4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["prompts"] == len(PROMPTS)
    done = _cli("dynexec", "train-steps", tiny_sd["exported"], "--labels", tmp_path / "labels" / "labels.json",
                "--out", tmp_path / "predictor.json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held_out_mae_steps" in json.loads(done.stdout)
    done = _cli("export", "dynexec", "--model", tiny_sd["checkpoint"], "--step-predictor", tmp_path / "predictor.json",
                "--convergence-guard", tmp_path / "sd-steps")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "sd-steps" / PREDICTOR_NAME).is_file() and (tmp_path / "sd-steps" / "unet").is_dir()
    # a predictor for another text encoder: refused, nothing written
    done = _cli("export", "dynexec", "--model", tiny_sd["other"], "--step-predictor", tmp_path / "predictor.json",
                tmp_path / "wrong")
    assert done.returncode == 1 and "another text encoder" in done.stderr
    assert not (tmp_path / "wrong").exists() and not list(tmp_path.glob(".wrong*"))
    done = _cli("export", "dynexec", "--model", tiny_sd["checkpoint"], "--step-predictor", tmp_path / "predictor.json",
                "--lookahead", "disco", tmp_path / "bad-flags")
    assert done.returncode == 2 and "--lookahead is for speculative pairs" in done.stderr
    # without `import optimum_dynexec` the export is a plain upstream pipeline; with it, "auto" works
    script = (
        "import sys\nfrom optimum.intel import OVStableDiffusionPipeline\n"
        f"p = OVStableDiffusionPipeline.from_pretrained({str(tmp_path / 'sd-steps')!r})\n"
        "print(type(p).__name__)\n"
        "import optimum_dynexec\n"
        f"q = OVStableDiffusionPipeline.from_pretrained({str(tmp_path / 'sd-steps')!r})\n"
        "out = q('a red circle on a blue background', num_inference_steps='auto', output_type='np')\n"
        "print(type(q).__name__, out.num_inference_steps[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split()
    assert lines[0] == "OVStableDiffusionPipeline" and lines[1] == "OVStepSaverStableDiffusionPipeline"
    assert int(lines[2]) in (2, 3, 4)
