"""``OVStepSaverStableDiffusionPipeline``: optimum-intel's OpenVINO Stable Diffusion pipeline with
``num_inference_steps="auto"`` (StepSaver) and an optional convergence guard.

    import optimum_dynexec
    from optimum.intel import OVStableDiffusionPipeline
    pipe = OVStableDiffusionPipeline.from_pretrained(model_dir, step_predictor="step_predictor.json")
    out = pipe(["a red circle on a blue background"], num_inference_steps="auto")
    out.images, out.num_inference_steps        # steps each image used

"auto" runs the pipeline's text encoder once, reads the predictor from the pooled prompt embedding and hands
the same embeddings to the pipeline (so the predictor costs a dot product, not a second text-encoder
call). An integer ``num_inference_steps`` runs exactly as upstream. ``convergence_guard=True`` (or a
:class:`ConvergenceGuard`) stops once the predicted clean latent stops changing and decodes it.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from optimum.intel.openvino.modeling_diffusion import OVStableDiffusionPipeline

from ..configuration import CONFIG_NAME, DynExecConfig
from ..diffusion.convergence import ConvergenceGuard, predicted_clean_latent
from ..diffusion.predictor import PREDICTOR_NAME, PROBE_PROMPT, EncoderIdentity, StepPredictor
from ..exporters.atomic import atomic_directory
from .registration import original_from_pretrained

logger = logging.getLogger(__name__)

GuardOption = Union[None, bool, dict, ConvergenceGuard]


@dataclass
class StepSaverPipelineOutput(StableDiffusionPipelineOutput):
    """Upstream's output plus, per image, the denoising steps it used, the predictor's choice ("auto" only)
    and whether the convergence guard saw it converge (None without a guard)."""

    num_inference_steps: Optional[list[int]] = None
    predicted_steps: Optional[list[int]] = None
    converged: Optional[list[Optional[bool]]] = None


def encode_prompts(pipe, prompts: list[str]) -> tuple[np.ndarray, torch.Tensor]:
    """The pipeline's own text encoding of ``prompts``: the predictor's input ``(n, 2 * hidden)`` - the pooled
    embedding (CLIP's end-of-text state) next to the mean of the prompt's token states (which keeps what a
    prompt lists: counts, how many objects and attributes) - and the per-token states ``(n, tokens, hidden)``
    the pipeline conditions on (``prompt_embeds``)."""
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    with torch.no_grad():  # a diffusers (PyTorch) pipeline works too
        output = pipe.text_encoder(tokens.input_ids)
    states = output[0]
    mask = tokens.attention_mask.to(states.dtype)
    if "pooler_output" in output and output["pooler_output"] is not None:
        pooled = output["pooler_output"]
    else:  # the end-of-text token's state, as CLIP pools
        last = tokens.attention_mask.sum(dim=1) - 1
        pooled = states[torch.arange(len(prompts)), last]
    mean = (states * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    features = torch.cat([pooled.float(), mean.float()], dim=1)
    return features.numpy().astype(np.float64), states


def encoder_identity(pipe, name: str = "") -> EncoderIdentity:
    """The identity (embedding size, probe embedding) of ``pipe``'s text encoder, for a new predictor."""
    pooled, _ = encode_prompts(pipe, [PROBE_PROMPT])
    return EncoderIdentity(int(pooled.shape[1]), [float(v) for v in pooled[0]], name=name)


def _guard(option: GuardOption) -> Optional[ConvergenceGuard]:
    if option is None or option is False:
        return None
    if option is True:
        return ConvergenceGuard()
    if isinstance(option, ConvergenceGuard):
        return ConvergenceGuard(option.tolerance, option.patience, option.min_steps)
    if isinstance(option, dict):
        return ConvergenceGuard(**option)
    raise TypeError(f"convergence_guard must be True/False, a dict of ConvergenceGuard options or a ConvergenceGuard, "
                    f"got {type(option).__name__}.")


class OVStepSaverStableDiffusionPipeline(OVStableDiffusionPipeline):
    """An :class:`~optimum.intel.OVStableDiffusionPipeline` that picks the number of denoising steps per prompt.

    Attributes:
        step_predictor: the :class:`~optimum_dynexec.diffusion.predictor.StepPredictor` behind
            ``num_inference_steps="auto"`` (None: "auto" is refused).
        convergence_guard: the default of the ``convergence_guard`` call argument.
        last_num_inference_steps: steps per image of the last call.
    """

    step_predictor: Optional[StepPredictor] = None
    convergence_guard: GuardOption = None
    last_num_inference_steps: Optional[list[int]] = None

    @classmethod
    def from_pretrained(cls, model_id, *args, step_predictor: Union[None, str, Path, StepPredictor] = None,
                        convergence_guard: GuardOption = None, min_steps: Optional[int] = None,
                        max_steps: Optional[int] = None, **kwargs):
        """optimum-intel's ``from_pretrained`` plus ``step_predictor`` (a path or a StepPredictor; default: the
        ``step_predictor.json`` of an exported directory), ``convergence_guard``, and a step range overriding
        the predictor's."""
        pipe = original_from_pretrained(cls, model_id, *args, **kwargs)
        saved = None
        try:
            local = Path(model_id)
            saved = DynExecConfig.load(local) if (local / CONFIG_NAME).is_file() else None
        except TypeError:
            pass
        if saved is not None and saved.technique != "step-saver":
            raise ValueError(f"{Path(model_id) / CONFIG_NAME} describes a {saved.technique!r} export, not a diffusion "
                             "pipeline with a step predictor.")
        settings = (saved.step_prediction or {}) if saved is not None else {}
        if step_predictor is None and saved is not None:
            name = settings.get("predictor", PREDICTOR_NAME)
            if not (Path(model_id) / name).is_file():
                raise FileNotFoundError(
                    f"{Path(model_id) / CONFIG_NAME} names the step predictor {name}, which is missing from "
                    f"{model_id}; copy the whole exported directory or export it again with --step-predictor."
                )
            step_predictor = Path(model_id) / name
        if convergence_guard is None and settings.get("convergence_guard") is not None:
            convergence_guard = settings["convergence_guard"]
        pipe.convergence_guard = convergence_guard
        _guard(convergence_guard)  # validate now, not at the first call
        if step_predictor is not None:
            pipe.set_step_predictor(step_predictor, min_steps=min_steps or settings.get("min_steps"),
                                    max_steps=max_steps or settings.get("max_steps"))
        return pipe

    def set_step_predictor(self, predictor: Union[str, Path, StepPredictor, None], min_steps: Optional[int] = None,
                           max_steps: Optional[int] = None, check: bool = True) -> None:
        """Attach (or with None, detach) a step predictor; it must have been trained on this text encoder."""
        if predictor is None:
            self.step_predictor = None
            return
        if not isinstance(predictor, StepPredictor):
            predictor = StepPredictor.load(predictor)
        if min_steps or max_steps:
            predictor = predictor.with_range(min_steps, max_steps)
        if check:
            identity = encoder_identity(self)
            predictor.encoder.check(identity.embedding_size, np.asarray(identity.probe_embedding))
        self.step_predictor = predictor

    def predict_steps(self, prompts: Union[str, list[str]]) -> np.ndarray:
        """The step counts "auto" would use for ``prompts``."""
        prompts = self._auto_prompts(prompts)
        pooled, _ = encode_prompts(self, prompts)
        return self.step_predictor.predict(pooled)

    # ------------------------------------------------------------------------------------------------ calling

    def __call__(self, *args, convergence_guard: GuardOption = None, **kwargs):
        arguments = self._bind(args, kwargs)
        guard_option = self.convergence_guard if convergence_guard is None else convergence_guard
        steps = arguments.get("num_inference_steps", 50)
        if isinstance(arguments.get("guidance_scale", 7.5), (int, float)) and arguments.get("guidance_scale", 7.5) <= 1:
            if arguments.get("negative_prompt") is not None or arguments.get("negative_prompt_embeds") is not None:
                warnings.warn("negative_prompt is ignored with guidance_scale <= 1 (classifier-free guidance is off); "
                              "use guidance_scale > 1 for it to take effect.", stacklevel=2)
        if isinstance(steps, str):
            if steps != "auto":
                raise ValueError(f"num_inference_steps must be a whole number or 'auto', got {steps!r}.")
            return self._call_auto(arguments, guard_option)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"num_inference_steps must be a whole number >= 1 or 'auto', got {steps!r}.")
        return self._call_fixed(arguments, _guard(guard_option), predicted=None)

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        signature = inspect.signature(self.auto_model_class.__call__)
        try:
            bound = signature.bind_partial(self, *args, **kwargs).arguments
        except TypeError as error:
            raise TypeError(f"{type(self).__name__}.__call__: {error}") from None
        bound.pop("self", None)
        extra = bound.pop("kwargs", {})
        bound.update(extra)
        return dict(bound)

    def _auto_prompts(self, prompt) -> list[str]:
        if self.step_predictor is None:
            raise ValueError(
                "num_inference_steps='auto' needs a step predictor: load the pipeline with "
                "`from_pretrained(..., step_predictor='step_predictor.json')`, export it with "
                "`optimum-cli export dynexec --step-predictor`, or pass an integer num_inference_steps."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else []
        if not prompts:
            raise ValueError("num_inference_steps='auto' reads the prompt text: pass `prompt` (prompt_embeds alone "
                             "cannot be read by the step predictor), or an integer num_inference_steps.")
        empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if empty:
            raise ValueError(f"prompt(s) {empty} are empty: the step predictor has nothing to read. Pass an integer "
                             "num_inference_steps for unconditional generation.")
        return prompts

    def _call_auto(self, arguments: dict, guard_option: GuardOption):
        if arguments.get("prompt_embeds") is not None:
            raise ValueError("num_inference_steps='auto' reads the prompt text; pass `prompt` instead of `prompt_embeds`.")
        prompts = self._auto_prompts(arguments.get("prompt"))
        pooled, states = encode_prompts(self, prompts)
        raw = self.step_predictor.raw(pooled)
        predicted = self.step_predictor.steps_for(raw)
        if (raw > self.step_predictor.max_steps + 1e-9).any() or (raw < self.step_predictor.min_steps - 1e-9).any():
            logger.info("step predictions %s clamped to [%d, %d]", np.round(raw, 1).tolist(),
                        self.step_predictor.min_steps, self.step_predictor.max_steps)
        per_image = int(arguments.get("num_images_per_prompt") or 1)
        groups = [np.flatnonzero(predicted == s) for s in np.unique(predicted)]
        parts = []
        for indices in groups:
            call = dict(arguments, prompt=None, prompt_embeds=states[indices], num_inference_steps=int(predicted[indices[0]]))
            for key in ("negative_prompt", "negative_prompt_embeds"):
                call[key] = _select(arguments.get(key), indices, 1, len(prompts))
            for key in ("generator", "latents"):
                call[key] = _select(arguments.get(key), indices, per_image, len(prompts))
            result = self._call_fixed(call, _guard(guard_option), predicted=int(predicted[indices[0]]))
            parts.append((indices, result, list(self.last_num_inference_steps)))
        if len(parts) == 1:
            return parts[0][1]
        merged, self.last_num_inference_steps = _merge(parts, len(prompts), per_image, arguments.get("return_dict", True))
        return merged

    def _call_fixed(self, arguments: dict, guard: Optional[ConvergenceGuard], predicted: Optional[int]):
        steps = int(arguments.get("num_inference_steps", 50))
        if guard is None:
            result = super().__call__(**arguments)
            used, converged = steps, None
        else:
            result, used, converged = self._call_guarded(arguments, guard, steps)
        images = result.images if not isinstance(result, tuple) else result[0]
        count = len(images)
        self.last_num_inference_steps = [used] * count
        if isinstance(result, tuple):
            return result
        return StepSaverPipelineOutput(
            images=result.images, nsfw_content_detected=result.nsfw_content_detected,
            num_inference_steps=[used] * count, predicted_steps=None if predicted is None else [predicted] * count,
            converged=[converged] * count,
        )

    def _call_guarded(self, arguments: dict, guard: ConvergenceGuard, steps: int):
        scheduler = self.scheduler
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ValueError(f"the convergence guard needs a diffusion scheduler with alphas_cumprod; "
                             f"{type(scheduler).__name__} has none. Call without convergence_guard.")
        alphas = alphas.float().numpy() if torch.is_tensor(alphas) else np.asarray(alphas, dtype=np.float32)
        prediction_type = scheduler.config.get("prediction_type", "epsilon")
        unet = self.unet
        upstream_forward = unet.forward
        seen: dict[str, Any] = {}

        def recording_forward(sample, timestep, *a, **kw):
            output = upstream_forward(sample, timestep, *a, **kw)
            seen["sample"], seen["timestep"], seen["output"] = sample, timestep, output[0]
            return output

        user_callback = arguments.get("callback_on_step_end")
        inputs = list(arguments.get("callback_on_step_end_tensor_inputs") or ["latents"])
        if "latents" not in inputs:
            inputs.append("latents")
        state = {"stopped_at": None}

        def on_step_end(pipe, index: int, timestep, callback_kwargs: dict) -> dict:
            outputs = user_callback(pipe, index, timestep, callback_kwargs) if user_callback is not None else {}
            outputs = dict(outputs or {})
            sample = _numpy(seen["sample"])
            model_output = _numpy(seen["output"])
            if pipe.do_classifier_free_guidance:
                uncond, cond = np.split(model_output, 2)
                model_output = uncond + pipe.guidance_scale * (cond - uncond)
                sample = np.split(sample, 2)[0]
            t = int(np.clip(round(float(_numpy(seen["timestep"]).ravel()[0])), 0, len(alphas) - 1))
            x0 = predicted_clean_latent(sample, model_output, float(alphas[t]), prediction_type)
            if guard.observe(x0) and index < steps - 1 and state["stopped_at"] is None:
                state["stopped_at"] = index + 1
                latents = callback_kwargs["latents"]
                outputs["latents"] = torch.from_numpy(x0.astype(np.float32)).to(latents.dtype)
                pipe._interrupt = True
            return outputs

        call = dict(arguments, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=inputs)
        guard.reset()
        unet.forward = recording_forward  # an instance attribute: OVPipelinePart.__call__ looks up self.forward
        try:
            result = super().__call__(**call)
        finally:
            del unet.forward
        used = state["stopped_at"] or steps
        return result, used, guard.converged

    # ------------------------------------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: Union[str, Path], **kwargs) -> None:
        """optimum-intel's layout, plus ``step_predictor.json`` and ``dynexec_config.json``; written atomically."""
        with atomic_directory(save_directory) as tmp:
            super().save_pretrained(tmp, **kwargs)
            write_step_saver_files(tmp, self.step_predictor, self.convergence_guard)


def write_step_saver_files(directory: Union[str, Path], predictor: Optional[StepPredictor],
                           convergence_guard: GuardOption = None) -> None:
    """Put the predictor and a ``step-saver`` dynexec_config.json into an exported pipeline directory."""
    directory = Path(directory)
    settings: dict[str, Any] = {}
    if predictor is not None:
        predictor.save(directory / PREDICTOR_NAME)
        settings = {"predictor": PREDICTOR_NAME, "min_steps": predictor.min_steps, "max_steps": predictor.max_steps}
    guard = _guard(convergence_guard)
    if guard is not None:
        settings["convergence_guard"] = {"tolerance": guard.tolerance, "patience": guard.patience,
                                         "min_steps": guard.min_steps}
    DynExecConfig(technique="step-saver", step_prediction=settings).save(directory)


def step_saver_class(requested: type, model_id) -> type:
    """Our pipeline class for a ``from_pretrained`` on ``requested`` (OVStableDiffusionPipeline or
    OVDiffusionPipeline); a clear error for pipelines StepSaver does not cover."""
    if requested is not OVStableDiffusionPipeline:
        try:
            class_name = json.loads((Path(model_id) / "model_index.json").read_text()).get("_class_name")
        except (OSError, ValueError, TypeError):
            class_name = None
        if class_name not in (None, "StableDiffusionPipeline", "OVStableDiffusionPipeline"):
            raise ValueError(f"{model_id} is a {class_name}; step_predictor / num_inference_steps='auto' support Stable "
                             "Diffusion 1.x/2.x text-to-image pipelines (StableDiffusionPipeline).")
    return OVStepSaverStableDiffusionPipeline


def _numpy(value) -> np.ndarray:
    return value.detach().float().numpy() if torch.is_tensor(value) else np.asarray(value, dtype=np.float32)


def _select(value, indices: np.ndarray, per_prompt: int, prompts: int):
    """The rows of a per-prompt (or per-image) argument that belong to the prompts ``indices``."""
    if value is None or isinstance(value, (str, torch.Generator)):
        return value
    rows = [i * per_prompt + j for i in indices for j in range(per_prompt)]
    if isinstance(value, list):
        if len(value) != prompts * per_prompt:
            raise ValueError(f"got a list of {len(value)} values where {prompts * per_prompt} (one per "
                             f"{'prompt' if per_prompt == 1 else 'image'}) were expected.")
        return [value[r] for r in rows]
    if torch.is_tensor(value) and value.shape[0] == prompts * per_prompt:
        return value[rows]
    return value


def _merge(parts: list, prompts: int, per_image: int, return_dict: bool):
    """Images of several calls (one per step count) back in prompt order; also returns the steps per image."""
    rows = prompts * per_image
    slots, steps, predicted, converged, nsfw = ([None] * rows for _ in range(5))
    nsfw_any = False
    for indices, result, used in parts:
        images, flags = (result[0], result[1]) if isinstance(result, tuple) else (result.images, result.nsfw_content_detected)
        for k, row in enumerate(i * per_image + j for i in indices for j in range(per_image)):
            slots[row], steps[row] = images[k], used[k]
            if flags is not None:
                nsfw_any, nsfw[row] = True, flags[k]
            if not isinstance(result, tuple):
                predicted[row], converged[row] = result.predicted_steps[k], result.converged[k]
    first = slots[0]
    images = np.stack(slots) if isinstance(first, np.ndarray) else torch.stack(slots) if torch.is_tensor(first) else slots
    flags = nsfw if nsfw_any else None
    if not return_dict:
        return (images, flags), steps
    return StepSaverPipelineOutput(images=images, nsfw_content_detected=flags, num_inference_steps=steps,
                                   predicted_steps=predicted, converged=converged), steps


def image_generator(pipe, guidance_scale: Optional[float] = None, **call_kwargs):
    """``generate(prompt, steps, seed) -> (H, W, 3) uint8`` over ``pipe`` (a diffusers or OpenVINO pipeline):
    the callable the StepSaver labelling expects. The seed drives a torch Generator, so every rung of a
    ladder starts from the same noise."""
    extra = dict(call_kwargs)
    if guidance_scale is not None:
        extra["guidance_scale"] = guidance_scale

    def generate(prompt: str, steps: int, seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(int(seed))
        output = pipe(prompt, num_inference_steps=int(steps), generator=generator, output_type="np", **extra)
        image = np.asarray(output.images[0])
        return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)

    return generate
