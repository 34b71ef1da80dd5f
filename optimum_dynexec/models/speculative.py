"""``OVSpeculativeModelForCausalLM``: an optimum-intel causal LM that drafts with a cheaper model.

Glue only: it resolves the draft, turns ``generate`` arguments into a token selector, a lookahead policy
and stopping rules, and runs :func:`optimum_dynexec.speculative.loop.speculative_generate` on OpenVINO
decoder runners.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Optional, Union

import numpy as np
import torch
from optimum.intel import OVModelForCausalLM
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.stopping_criteria import (
    EosTokenCriteria,
    MaxLengthCriteria,
    MaxTimeCriteria,
    StopStringCriteria,
)

from ..backends.base import DecoderRunner
from ..backends.openvino import OVDecoderRunner
from ..backends.openvino_draft import draft_runtime_properties, logits_width, prune_vocabulary
from ..backends.openvino_paged import OVPagedDecoderRunner, PagedAttentionUnsupported
from ..configuration import CONFIG_NAME, DynExecConfig, SpeculationConfig
from ..exporters.runtime_options import runtime_properties
from ..speculative.drafters import ModelDrafter, PromptLookupDrafter
from ..speculative.logits import TokenSelector, unsupported_generation_options
from ..speculative.loop import speculative_generate
from ..speculative.policies import make_policy
from ..speculative.stats import SpeculationStats
from ..speculative.vocabulary import draft_vocabulary
from .compatibility import check_draft_compatible
from .loading import from_pretrained_checked, local_directory

logger = logging.getLogger(__name__)

SELF_DRAFTS = ("int4-self", "prompt-lookup")
DRAFT_SUBFOLDER = "draft"
_LOOKAHEAD_KWARGS = (
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "max_assistant_tokens",
    "assistant_confidence_threshold",
    "prompt_lookup_num_tokens",
    "max_matching_ngram_size",
    "draft_lookup_num_tokens",
    "draft_after_first_token",
)
# lookahead options upstream ``generate`` must not see when the target runs alone (ours, or values only ours has)
_NOT_UPSTREAM_KWARGS = ("prompt_lookup_num_tokens", "max_assistant_tokens", "num_assistant_tokens_schedule",
                        "draft_lookup_num_tokens", "draft_after_first_token")


class OVSpeculativeModelForCausalLM(OVModelForCausalLM):
    """An OpenVINO causal LM whose ``generate`` verifies tokens proposed by a draft.

    Greedy output is the target's own greedy output; sampling keeps the target's distribution. Load it
    through ``OVModelForCausalLM.from_pretrained(target, draft_model=draft)`` after ``import optimum_dynexec``
    (or directly through this class). After each ``generate``, ``last_generation_stats`` holds the draft
    acceptance, the number of target calls and where the time went.
    """

    draft_model: Optional[OVModelForCausalLM] = None
    draft_kind: Optional[str] = None
    speculation_config: SpeculationConfig = SpeculationConfig()
    #: the ``calibration`` section of a saved pair's dynexec_config.json (DISCO classifier, threshold, latencies)
    calibration: Optional[dict] = None
    last_generation_stats: Optional[SpeculationStats] = None
    #: how the speculative loop holds the KV caches: "paged" (a paged-attention copy of each model, what
    #: openvino.genai runs; rollback is free), "stateful" (the models' own stateful infer requests) or "auto"
    #: (paged on CPU where the model can be transformed, else stateful)
    kv_cache: str = "auto"
    #: make the draft cheaper without changing the output: prune its LM head to ``draft_vocab_size`` tokens and
    #: quantize its activations in groups matching its int4 weights (CPU); False runs the draft as loaded
    optimize_draft: bool = True

    @classmethod
    def from_pretrained(
        cls,
        model_id: Union[str, Path],
        *args: Any,
        draft_model: Union[str, Path, OVModelForCausalLM, None] = None,
        draft: Optional[str] = None,
        speculation: Union[SpeculationConfig, dict, None] = None,
        draft_ov_config: Optional[dict] = None,
        draft_device: Optional[str] = None,
        draft_export: Optional[bool] = None,
        kv_cache: str = "auto",
        optimize_draft: bool = True,
        **kwargs: Any,
    ) -> "OVSpeculativeModelForCausalLM":
        """Load (or export, with ``export=True``) the target and attach a draft.

        Args:
            model_id: the target: an exported OpenVINO directory, or a transformers checkpoint / hub id with
                ``export=True``.
            draft_model: a smaller model with the same tokenizer: a directory, a hub id, or a loaded
                ``OVModelForCausalLM``.
            draft: instead of ``draft_model``, ``"int4-self"`` (an NNCF INT4 copy of the target) or
                ``"prompt-lookup"`` (n-gram lookup in the sequence, no model).
            speculation: defaults for the lookahead (:class:`SpeculationConfig` or a dict of its fields).
            draft_ov_config / draft_device: runtime options of the draft; default to the target's
                ``ov_config`` / ``device``.
            draft_export: export the draft from a transformers checkpoint; defaults to the target's ``export``.
            kv_cache: ``"auto"`` (default): ``"paged"`` on CPU, ``"stateful"`` on other devices. ``"paged"``
                runs a paged-attention copy of target and draft, as openvino.genai does: rollback is free and a
                verification call costs about one decode step (5-25% faster than ``"stateful"`` on CPU here, see
                benchmarks). ``"stateful"`` runs the models' own stateful requests (rollback by masking).
                Models that cannot be transformed run stateful (with a warning when ``"paged"`` was asked for).
            optimize_draft: compile the draft model for drafting (default): its LM head keeps
                ``speculation.draft_vocab_size`` tokens and, on CPU, activations are quantized in groups matching
                its int4 weights. Only what the draft proposes changes, never the output. False: as loaded.
            **kwargs: everything ``OVModelForCausalLM.from_pretrained`` accepts (``ov_config``, ``device``,
                ``export``, ``quantization_config``, ...).
        """
        if draft_model is not None and draft is not None:
            raise ValueError("pass either draft_model=... or draft=..., not both.")
        saved = _saved_pair(model_id) if draft_model is None and draft is None else None
        calibration, draft_kind = None, "model"
        if saved is not None:
            config, draft_dir = saved
            calibration = config.calibration
            if config.draft == "int4-self":
                draft_kind = "int4-self"  # the target's own INT4 copy, saved in draft/
            speculation = speculation if speculation is not None else config.speculation
            if config.draft == "prompt-lookup":
                draft = "prompt-lookup"
            elif draft_dir is not None:
                draft_model, draft_export = draft_dir, False
        if kv_cache not in KV_CACHE_LAYOUTS:
            raise ValueError(f"unknown kv_cache={kv_cache!r}; expected one of {KV_CACHE_LAYOUTS}.")
        if draft is not None and draft not in SELF_DRAFTS:
            raise ValueError(f"unknown draft={draft!r}; expected one of {SELF_DRAFTS}, or pass draft_model=<model>.")
        model = from_pretrained_checked(cls, model_id, *args, **kwargs)
        if not isinstance(model, cls):
            # optimum-intel picked an architecture-specific class (phi3, bloom, ...): keep its behaviour
            model.__class__ = type(f"OVSpeculative{type(model).__name__}", (cls, type(model)), {})
        model.speculation_config = SpeculationConfig.from_any(speculation)
        model.kv_cache = kv_cache
        model.optimize_draft = optimize_draft
        model.calibration = calibration
        model._source_dir = local_directory(model_id)
        draft_options = {
            "ov_config": draft_ov_config if draft_ov_config is not None else kwargs.get("ov_config"),
            "device": draft_device or kwargs.get("device", "CPU"),
        }
        if draft == "prompt-lookup":
            model.draft_kind = "prompt-lookup"
            if model.speculation_config.prompt_lookup_num_tokens is None:
                model.speculation_config = model.speculation_config.updated(prompt_lookup_num_tokens=10)
        elif draft == "int4-self":
            model.attach_draft(model._int4_self_draft(model_id, kwargs, draft_options), kind="int4-self")
        elif draft_model is not None:
            export = kwargs.get("export") if draft_export is None else draft_export
            loaded = _load_draft(draft_model, export, draft_options, kwargs)
            model._check_draft(loaded, kind="model")  # a draft read from disk is always checked
            model.attach_draft(loaded, kind=draft_kind)
        return model

    def save_pretrained(self, save_directory: Union[str, Path], **kwargs: Any) -> None:
        """Write the pair: the target at the root (loadable alone by ``OVModelForCausalLM`` and
        ``openvino_genai.LLMPipeline``), the draft in ``draft/``, and ``dynexec_config.json``. The directory
        is written next to its final place and renamed into it, so it is never left half-written."""
        from ..exporters.atomic import atomic_directory

        with atomic_directory(save_directory) as tmp:
            super().save_pretrained(tmp, **kwargs)
            if self.draft_model is not None:
                self.draft_model.save_pretrained(tmp / DRAFT_SUBFOLDER)
            DynExecConfig(draft=self.draft_kind, speculation=self.speculation_config,
                          calibration=self.calibration).save(tmp)

    def attach_draft(self, draft_model: OVModelForCausalLM, kind: str = "model") -> None:
        """Use ``draft_model`` as the draft (checks that it shares the target's tokenizer)."""
        self._check_draft(draft_model, kind)
        self.draft_model = draft_model
        self.draft_kind = kind
        # runners (and the latencies measured with them) stay cached while their models live: switching drafts
        # back and forth must not recompile the target and its copies or re-measure latencies inside generate

    def _check_draft(self, draft_model: OVModelForCausalLM, kind: str = "model") -> None:
        """Raise ValueError unless ``draft_model`` can draft for this target (stateful, same tokenizer).
        A draft that passed is remembered, so a per-call ``assistant_model`` is checked once, not every call."""
        checked = self.__dict__.setdefault("_checked_drafts", weakref.WeakSet())
        if draft_model in checked:
            return
        if not getattr(draft_model, "stateful", False):
            raise ValueError(
                "the draft model is stateless; speculative decoding needs a stateful export whose KV cache can be "
                "rolled back: re-export it with optimum-intel's default `stateful=True`."
            )
        if kind != "int4-self":
            check_draft_compatible(self.config, draft_model.config, self._tokenizer_dir(), _model_dir(draft_model))
        checked.add(draft_model)

    def _tokenizer_dir(self) -> Optional[Path]:
        for candidate in (getattr(self, "_source_dir", None), _model_dir(self)):
            if candidate is not None and (candidate / "tokenizer_config.json").exists():
                return candidate
        return getattr(self, "_source_dir", None) or _model_dir(self)

    def _int4_self_draft(self, model_id, target_kwargs: dict, draft_options: dict) -> OVModelForCausalLM:
        from ..exporters.weight_compression import compress_to_int4

        if target_kwargs.get("export"):
            from optimum.intel import OVWeightQuantizationConfig

            from ..exporters.weight_compression import int4_group_size

            group_size = int4_group_size(self.config.hidden_size)
            quantization = OVWeightQuantizationConfig(bits=4, sym=False, group_size=group_size, ratio=1.0)
            options = {k: v for k, v in target_kwargs.items() if k not in ("ov_config", "device", "quantization_config")}
            return OVModelForCausalLM.from_pretrained(model_id, quantization_config=quantization, **options, **draft_options)
        compressed = compress_to_int4(self.model, self.config.hidden_size)
        return OVModelForCausalLM(
            compressed,
            config=self.config,
            generation_config=self.generation_config,
            **draft_options,
        )

    # ------------------------------------------------------------------ generation

    def _runner(self, model: OVModelForCausalLM) -> DecoderRunner:
        """The KV-cache runner the loop drives for the target, built once."""
        return self._build_runner(model, role="target")[0]

    def _draft_runner(self, model: OVModelForCausalLM) -> tuple[DecoderRunner, Optional[np.ndarray]]:
        """The runner of a draft model (vocabulary-pruned and tuned when possible) and the token id of each of
        its logits columns (None: all tokens, in order)."""
        return self._build_runner(model, role="draft")

    def _build_runner(self, model: OVModelForCausalLM, role: str) -> tuple[DecoderRunner, Optional[np.ndarray]]:
        compile_only = getattr(model, "_compile_only", False)
        optimize = role == "draft" and self.optimize_draft and not compile_only
        vocabulary = self._draft_vocabulary(model) if optimize else None
        runners = self._live_runners()
        key = (id(model), self.kv_cache, role, optimize, None if vocabulary is None else hash(vocabulary.tobytes()))
        cached = runners.get(key)
        if cached is not None and cached.serves(model):
            return cached.runner, cached.vocabulary
        max_length = getattr(model.config, "max_position_embeddings", None)
        ov_model, ov_config = model.model, dict(model.ov_config)
        if optimize:
            ov_config = draft_runtime_properties(ov_model, model._device, ov_config)
            if vocabulary is not None:
                try:
                    ov_model = prune_vocabulary(ov_model, vocabulary)
                except ValueError as error:
                    logger.warning("the draft's LM head is used whole (%s)", error)
                    vocabulary = None
        runner = None
        if _resolve_kv_cache(self.kv_cache, model._device) == "paged" and not compile_only:
            # the stateful fallback below reuses the model's own compiled request, so only this path retunes
            paged_config = runtime_properties(ov_model, model._device, ov_config) if role == "target" else ov_config
            try:
                runner = OVPagedDecoderRunner.from_model(ov_model, model._device, paged_config, max_length,
                                                         core=_openvino_core())
            except PagedAttentionUnsupported as error:
                if self.kv_cache == "paged":
                    warnings.warn(f"{type(model).__name__}: paged attention is not available ({error}); the "
                                  "speculative loop uses the stateful KV cache instead (kv_cache='stateful').",
                                  stacklevel=4)
                else:
                    logger.info("paged attention is not available (%s); using the stateful KV cache", error)
        if runner is None and ov_model is model.model and ov_config == model.ov_config:
            model.compile()
            runner = OVDecoderRunner(model.request, max_length)
        elif runner is None:
            compiled = _openvino_core().compile_model(ov_model, model._device, ov_config)
            runner = OVDecoderRunner(compiled.create_infer_request(), max_length)
        runners[key] = _CachedRunner(model, runner, vocabulary)
        return runner, vocabulary

    def _live_runners(self) -> dict:
        """The runner cache without the runners of models that no longer exist (with what was learnt from them)."""
        runners = self.__dict__.setdefault("_runners", {})
        dead = [key for key, cached in runners.items() if cached.owner is None]
        for key in dead:
            request_id = id(runners.pop(key).runner.request)
            for cache_name in ("_cost_policies", "_measured_latencies"):
                cache = self.__dict__.get(cache_name, {})
                for cache_key in [k for k in cache if k[0] == request_id]:
                    del cache[cache_key]
        return runners

    def _draft_vocabulary(self, draft: OVModelForCausalLM) -> Optional[np.ndarray]:
        width = min(logits_width(draft.model), self.config.vocab_size)
        ranked = (self.calibration or {}).get("draft_vocabulary", [])
        required = _as_list(self.generation_config.eos_token_id) + _as_list(self.generation_config.pad_token_id)
        return draft_vocabulary(width, self.speculation_config.draft_vocab_size, ranked, required)

    @torch.no_grad()
    def generate(
        self,
        inputs: Optional[torch.Tensor] = None,
        generation_config=None,
        logits_processor=None,
        stopping_criteria=None,
        prefix_allowed_tokens_fn=None,
        synced_gpus=None,
        assistant_model=None,
        streamer=None,
        negative_prompt_ids=None,
        negative_prompt_attention_mask=None,
        **kwargs,
    ):
        """transformers' ``generate``, with the draft verifying-and-accepting loop.

        Lookahead options use transformers' names and override the model's :class:`SpeculationConfig`:
        ``num_assistant_tokens``, ``num_assistant_tokens_schedule`` ("constant" | "heuristic" | "disco" | "cost"),
        ``assistant_confidence_threshold``, ``prompt_lookup_num_tokens``, ``max_matching_ngram_size``, and ours:
        ``max_assistant_tokens``, ``draft_lookup_num_tokens``, ``draft_after_first_token`` (see
        :class:`SpeculationConfig`).
        ``assistant_model`` (an ``OVModelForCausalLM``) drafts for this call only.

        Beam search, and processors speculative decoding does not implement, run the target alone
        (upstream ``generate``) with a warning: the output is the same, only not faster.
        """
        lookahead = {name: kwargs.pop(name) for name in _LOOKAHEAD_KWARGS if name in kwargs}
        if generation_config is not None:
            lookahead = {**_lookahead_set_in(generation_config), **lookahead}
        tokenizer = kwargs.get("tokenizer")
        generation_config_, model_kwargs = self._prepare_generation_config(generation_config, **kwargs)
        speculation = self.speculation_config.updated(**lookahead)
        drafter = self._drafter(speculation, assistant_model)
        fallback_reason = self._fallback_reason(drafter, generation_config_, logits_processor, prefix_allowed_tokens_fn)
        if fallback_reason:
            if drafter is not None:
                warnings.warn(f"running the target alone (no speculation): {fallback_reason}", stacklevel=2)
            self.last_generation_stats = None
            upstream_kwargs = {k: v for k, v in lookahead.items() if k not in _NOT_UPSTREAM_KWARGS}
            return super().generate(
                inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
                synced_gpus, None, streamer, negative_prompt_ids, negative_prompt_attention_mask,
                **kwargs, **upstream_kwargs,
            )
        # typos and arguments the model does not take fail as in transformers' generate (not silently ignored)
        self._validate_model_kwargs(
            {k: v for k, v in model_kwargs.items() if k not in ("tokenizer", "assistant_tokenizer")}
        )
        input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("generate() needs input_ids (or inputs).")
        attention_mask = model_kwargs.pop("attention_mask", None)
        return self._speculative_generate(
            input_ids, attention_mask, generation_config_, speculation, drafter, stopping_criteria, streamer, tokenizer
        )

    def _drafter(self, speculation: SpeculationConfig, assistant_model):
        if speculation.prompt_lookup_num_tokens:
            return PromptLookupDrafter(speculation.max_matching_ngram_size)
        draft = assistant_model if assistant_model is not None else self.draft_model
        if draft is None:
            return None
        if assistant_model is not None:
            if not isinstance(assistant_model, OVModelForCausalLM):
                raise TypeError(
                    f"assistant_model must be an OVModelForCausalLM, got {type(assistant_model).__name__}; "
                    "load the draft with OVModelForCausalLM.from_pretrained(..., export=True)."
                )
            if assistant_model is not self.draft_model:  # drafts for this call only: checked, not attached
                self._check_draft(assistant_model, kind="model")
        runner, vocabulary = self._draft_runner(draft)
        return ModelDrafter(runner, self.config.vocab_size, vocabulary, lookup_tokens=speculation.draft_lookup_num_tokens)

    @staticmethod
    def _fallback_reason(drafter, generation_config, logits_processor, prefix_allowed_tokens_fn) -> Optional[str]:
        if drafter is None:
            return "no draft"
        if (generation_config.num_beams or 1) > 1:
            return f"beam search (num_beams={generation_config.num_beams}) has no speculative variant"
        if (generation_config.num_return_sequences or 1) > 1:
            return "num_return_sequences > 1"
        unsupported = unsupported_generation_options(generation_config)
        if unsupported:
            return f"speculative decoding does not implement {', '.join(unsupported)}"
        if logits_processor or prefix_allowed_tokens_fn is not None:
            return "custom logits processors are not applied inside the speculative loop"
        if generation_config.return_dict_in_generate:
            requested = [name for name in ("output_logits", "output_attentions", "output_hidden_states")
                         if getattr(generation_config, name, False)]
            if requested:
                return f"the speculative loop does not return {', '.join(requested)}"
        return None

    def _speculative_generate(
        self, input_ids, attention_mask, generation_config, speculation, drafter, stopping_criteria, streamer, tokenizer
    ):
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        batch_size = input_ids.shape[0]
        if streamer is not None and batch_size > 1:
            raise ValueError("streamers support batch size 1 only (as in transformers).")
        eos_ids = _as_list(generation_config.eos_token_id)
        pad_id = generation_config.pad_token_id
        if pad_id is None:
            pad_id = eos_ids[0] if eos_ids else 0
        target = self._runner(self)
        widths = _verification_widths(speculation, drafter, self.calibration)
        # widths chosen for this pair on this machine: the same from call to call
        tuned = _calibrated_widths(speculation, drafter, self.calibration) is not None
        if isinstance(drafter, PromptLookupDrafter) and speculation.num_assistant_tokens_schedule == "cost":
            widths, tuned = self._lookup_widths(drafter, target, input_ids, speculation), True
        _set_input_widths(target, widths)
        if hasattr(target, "dedicated_widths"):
            # the smallest width shares the runner's own compiled model with the prompt's prefill
            target.max_copies = self._target_copies()
            # copies serve tuned widths only (calibrated ones, the same few for "disco" and "cost"; prompt lookup's
            # under "cost"): widths of other schedules would each compile copies of their own, and alternating
            # schedules would recompile them. The widest calls get the copies: with "cost", width 1 (the target
            # alone) and the narrowest tuned width share the runner's own model
            target.dedicated_widths = widths[1:][-target.max_copies:] if tuned and target.max_copies else ()
        if isinstance(drafter, ModelDrafter):
            _set_draft_widths(drafter, generation_config.do_sample)
        policy = self._policy(speculation, drafter, target, input_ids, widths)
        criteria = _extra_stopping_criteria(generation_config, stopping_criteria, tokenizer)
        limits = [getattr(self.config, "max_position_embeddings", None)]
        if isinstance(drafter, ModelDrafter):  # the draft of this call
            limits.append(drafter.runner.max_length)
        max_length = min((int(limit) for limit in limits if limit), default=None)
        rng = None
        if generation_config.do_sample:
            # drawn from torch's generator so that torch.manual_seed / transformers.set_seed reproduce runs
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

        rows, all_scores, stats = [], [], SpeculationStats()
        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = None if attention_mask is None else attention_mask.cpu().numpy().astype(bool)
        configured_pad = generation_config.pad_token_id
        if mask is None and configured_pad is not None and configured_pad not in eos_ids:
            if (ids == configured_pad).any():  # as transformers infers the attention mask of padded input_ids
                mask = ids != configured_pad
        for row in range(batch_size):
            prompt = ids[row] if mask is None else ids[row][mask[row]]
            if len(prompt) == 0:
                raise ValueError(f"prompt {row} is empty; speculative decoding needs at least one token.")
            if max_length is not None and len(prompt) >= max_length:
                raise ValueError(
                    f"the prompt has {len(prompt)} tokens but the model supports {max_length} positions; "
                    "shorten the prompt (truncate it with the tokenizer's max_length)."
                )
            max_new_tokens = _max_new_tokens(generation_config, ids.shape[1])
            if max_length is not None and len(prompt) + max_new_tokens > max_length:
                logger.warning(
                    "prompt (%d) + max_new_tokens (%d) exceeds the %d positions of the model; generation stops there.",
                    len(prompt), max_new_tokens, max_length,
                )
            selector = _token_selector(generation_config, eos_ids, len(prompt), padding=ids.shape[1] - len(prompt))
            if streamer is not None:
                streamer.put(torch.from_numpy(prompt.copy()))
            result = speculative_generate(
                target, drafter, policy, prompt, selector, max_new_tokens,
                eos_token_ids=eos_ids, rng=rng,
                on_tokens=None if streamer is None else lambda tokens: streamer.put(torch.from_numpy(tokens.copy())),
                should_stop=_stop_checker(criteria) if criteria else None,
                output_scores=bool(generation_config.output_scores and generation_config.return_dict_in_generate),
                max_length=max_length,
                draft_after_first_token=speculation.draft_after_first_token,
            )
            stats.merge(result.stats)
            rows.append(np.concatenate([ids[row], result.tokens]))
            all_scores.append(result.scores)
        if streamer is not None:
            streamer.end()
        self.last_generation_stats = stats

        width = max(len(r) for r in rows)
        sequences = torch.from_numpy(np.stack([np.pad(r, (0, width - len(r)), constant_values=pad_id) for r in rows]))
        if not generation_config.return_dict_in_generate:
            return sequences
        scores = None
        if generation_config.output_scores:
            steps = max(len(s) for s in all_scores)
            vocab = self.config.vocab_size
            scores = tuple(
                torch.from_numpy(np.stack([s[i] if i < len(s) else np.full(vocab, -np.inf, np.float32) for s in all_scores]))
                for i in range(steps)
            )
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores)


    def _target_copies(self) -> int:
        """Compiled copies of the target the paged runtime may hold for verification widths of their own."""
        copies = self.speculation_config.target_copies
        if copies is None:
            if getattr(self, "_weight_bytes", None) is None:  # a walk over every op: ~6 ms, once per model
                self._weight_bytes = sum(
                    node.get_byte_size() for node in self.model.get_ops() if node.get_type_name() == "Constant")
            copies = 2 if self._weight_bytes <= _AUTO_COPIES_MAX_BYTES else 0
        return max(int(copies), 0)

    def _policy(self, speculation: SpeculationConfig, drafter, target: DecoderRunner, input_ids,
                widths: tuple[int, ...] = ()):
        schedule = speculation.num_assistant_tokens_schedule
        lookup = isinstance(drafter, PromptLookupDrafter)
        if lookup and schedule == "disco":
            raise ValueError(
                "num_assistant_tokens_schedule='disco' needs a draft model (its classifier reads the draft's "
                "distribution); prompt lookup supports 'constant', 'heuristic' and 'cost'."
            )
        if schedule == "cost":
            # one policy per draft and cap, kept across calls: what it learnt (latencies, acceptance, how rarely
            # to probe a draft that does not pay) serves the next call too
            cap = speculation.prompt_lookup_num_tokens if lookup else speculation.max_assistant_tokens
            cap = min(cap, max(widths, default=cap + 1) - 1)  # the widest verification bounds the lookahead
            key = ("lookup" if lookup else id(drafter.runner.request), cap, id(self.calibration), widths)
            policies = self.__dict__.setdefault("_cost_policies", {})
            if key not in policies:
                latencies = self._latencies(drafter, target, input_ids, speculation).with_widths(widths)
                policies[key] = make_policy(
                    cap, "cost", calibration=None if lookup else self.calibration, latencies=latencies,
                    max_assistant_tokens=cap,
                )
            return policies[key]
        return make_policy(
            speculation.prompt_lookup_num_tokens if lookup else speculation.num_assistant_tokens,
            schedule,
            None if lookup else speculation.assistant_confidence_threshold,
            calibration=None if lookup else self.calibration,
            max_assistant_tokens=speculation.prompt_lookup_num_tokens if lookup else speculation.max_assistant_tokens,
        )

    def _lookup_widths(self, drafter, target: DecoderRunner, input_ids, speculation: SpeculationConfig) -> tuple[int, ...]:
        """Verification widths of prompt lookup under "cost": 1, and the widest widths whose calls cost at most
        ``_LOOKUP_WIDTH_COSTS`` times a one-token call on this machine (the lookahead cap bounds them); the policy
        chooses among them token by token.

        A lookup proposal costs nothing but its verification, so the widths set the price. Measured with the
        Qwen2.5-Coder 1.5B target: cap 3 (width 4, 1.23x a one-token call) 1.35x optimum-intel, cap 5 1.31x, cap 8
        (width 9, 1.6x) 1.17x, i.e. no faster than the target alone; SmolLM2-135M: width 9 (1.19x in the loop)
        drafted in every step earned less than static lookup k=5 (width 6, 1.07x).
        """
        latencies = self._latencies(drafter, target, input_ids, speculation)
        single = latencies.verify_time(1)
        cap = speculation.prompt_lookup_num_tokens
        widths = {1}
        for cost in _LOOKUP_WIDTH_COSTS:
            widths.add(max((w for w in range(2, cap + 2) if latencies.verify_time(w) <= cost * single), default=2))
        return tuple(sorted(widths))

    def _latencies(self, drafter, target: DecoderRunner, input_ids, speculation: SpeculationConfig):
        """Draft-step and verify(n) latencies of this machine, measured once per draft and lookahead cap."""
        from ..speculative.cost import LatencyModel, measure_latencies

        lookup = isinstance(drafter, PromptLookupDrafter)
        cap = speculation.prompt_lookup_num_tokens if lookup else speculation.max_assistant_tokens
        draft_runner = None if lookup else drafter.runner
        key = ("lookup" if lookup else id(draft_runner.request), cap)
        cache = self.__dict__.setdefault("_measured_latencies", {})
        if key not in cache:
            prompt = input_ids[0].cpu().numpy().astype(np.int64)
            logger.info("measuring draft and verification latencies for the 'cost' schedule")
            # at a typical context length: attention makes each verified token cost more as the sequence grows
            cache[key] = measure_latencies(target, draft_runner, prompt, cap, rounds=2, context_tokens=256)
        measured = cache[key]
        # every generate call starts from what was measured, refined by its own steps
        return LatencyModel(measured.draft_step, list(measured.verify))


KV_CACHE_LAYOUTS = ("auto", "paged", "stateful")
#: prompt lookup with "cost" pads its drafting steps up to the widest calls costing at most these many one-token calls
#: (SmolLM2-135M here: widths 5 and 9; its best static lookahead is k=5)
_LOOKUP_WIDTH_COSTS = (1.1, 1.25)
#: targets with up to this many bytes of weights get compiled copies per verification width by default
_AUTO_COPIES_MAX_BYTES = 2 * 2**30


def _resolve_kv_cache(layout: str, device: str) -> str:
    """``"auto"`` -> ``"paged"`` on CPU (measured faster here), ``"stateful"`` elsewhere (not measured)."""
    if layout != "auto":
        return layout
    return "paged" if str(device).upper().startswith("CPU") else "stateful"


def _lookahead_cap(speculation: SpeculationConfig, drafter) -> int:
    """The most draft tokens one step can propose under ``speculation``."""
    if drafter is None:
        return 0
    if isinstance(drafter, PromptLookupDrafter):
        return speculation.prompt_lookup_num_tokens
    if speculation.num_assistant_tokens_schedule == "constant":
        return speculation.num_assistant_tokens
    return max(speculation.max_assistant_tokens, speculation.num_assistant_tokens)


def _verification_widths(speculation: SpeculationConfig, drafter, calibration: Optional[dict] = None) -> tuple[int, ...]:
    """Input lengths the target's verification calls are padded to (runners that support it).

    A new input length costs per-shape work in the CPU plugin (~5-10 ms on Qwen2.5-1.5B, a fifth of a call)
    while verifying a few more tokens costs ~4% each, so calls run at one width (lookahead + 1), or two for
    long lookaheads. A calibrated pair brings the widths its DISCO simulation chose (a width per compiled copy
    of the target: see ``SpeculationConfig.target_copies``). The "cost" schedule also keeps 1: when drafting
    does not pay, the target runs alone at its own single-token cost.
    """
    widest = 1 + _lookahead_cap(speculation, drafter)
    calibrated = _calibrated_widths(speculation, drafter, calibration)
    if calibrated is not None:
        widths = {min(int(w), widest) for w in calibrated}
    else:
        widths = set(uncalibrated_widths(widest - 1))
    if speculation.num_assistant_tokens_schedule == "cost" or widest == 1:
        widths.add(1)
    return tuple(sorted(widths))


def uncalibrated_widths(lookahead: int) -> tuple[int, ...]:
    """Verification widths of a lookahead of at most ``lookahead`` tokens without calibrated widths: one call
    width, lookahead + 1, or for long lookaheads also 6 so that short proposals do not pay for the longest."""
    widest = lookahead + 1
    return (widest,) if widest <= 8 else (6, widest)


def _calibrated_widths(speculation: SpeculationConfig, drafter, calibration: Optional[dict]) -> Optional[list]:
    """The verification widths calibration chose, when this call's schedule uses them (else None)."""
    widths = (calibration or {}).get("verification_widths") if isinstance(drafter, ModelDrafter) else None
    if widths and speculation.num_assistant_tokens_schedule in ("disco", "cost"):
        return list(widths)
    return None


def _set_draft_widths(drafter: ModelDrafter, do_sample: bool) -> None:
    """A draft model is fed one token per call, two after a fully accepted step: both run at width 2 (one token
    more costs a memory-bound draft next to nothing, a change of input length costs the CPU plugin ~4 ms). Calls
    that also check n-gram guesses run on a compiled copy of their own at the widest such call."""
    guessing = drafter.lookup_tokens > 0 and not do_sample
    widths = (2, 2 + drafter.lookup_tokens) if guessing else (2,)
    _set_input_widths(drafter.runner, widths)
    if hasattr(drafter.runner, "dedicated_widths"):
        drafter.runner.max_copies = 1
        drafter.runner.dedicated_widths = widths[1:]


def _set_input_widths(runner: DecoderRunner, widths: tuple[int, ...]) -> None:
    """Pad the runner's short calls up to one of ``widths`` where the runner supports it (stable shapes)."""
    if hasattr(runner, "input_widths"):
        runner.input_widths = tuple(widths)


class _CachedRunner:
    """A runner and what it was built from: a model moved to another device or recompiled gets a new one.

    The owner's own infer request is remembered even when the runner compiled its own graph (a tuned or pruned
    draft): ``to()``, ``compile()`` and ``clear_requests()`` replace that request, which is how a change shows.
    """

    def __init__(self, owner: OVModelForCausalLM, runner: DecoderRunner, vocabulary: Optional[np.ndarray] = None):
        # weak: a draft the user dropped frees its runner (the owner keeps it alive while it is attached)
        self._owner = weakref.ref(owner)
        self.runner = runner
        self.vocabulary = vocabulary
        self.device = owner._device
        self.owner_request = owner.request

    @property
    def owner(self) -> Optional[OVModelForCausalLM]:
        return self._owner()

    def serves(self, model: OVModelForCausalLM) -> bool:
        return self.owner is model and self.device == model._device and self.owner_request is model.request


def _openvino_core():
    from optimum.intel.openvino.modeling_base import core

    return core


def _lookahead_set_in(generation_config) -> dict:
    """Lookahead options a user set on a GenerationConfig object (values other than transformers' defaults)."""
    defaults = generation_config._get_default_generation_params()
    values = {name: getattr(generation_config, name, None) for name in _LOOKAHEAD_KWARGS}
    return {name: value for name, value in values.items() if value is not None and value != defaults.get(name)}


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _max_new_tokens(generation_config, input_length: int) -> int:
    if generation_config.max_new_tokens is not None:
        return int(generation_config.max_new_tokens)
    return max(0, int(generation_config.max_length) - input_length)


def _token_selector(generation_config, eos_ids: list[int], prompt_length: int, padding: int) -> TokenSelector:
    """The token choice rule of one (unpadded) prompt from transformers' generation options."""
    min_length = 0
    if eos_ids and ((generation_config.min_length or 0) > 0 or (generation_config.min_new_tokens or 0) > 0):
        # transformers counts min_length over the padded row: the unpadded prompt needs fewer tokens
        min_length = max((generation_config.min_length or 0) - padding,
                         prompt_length + (generation_config.min_new_tokens or 0))
    return TokenSelector(
        do_sample=bool(generation_config.do_sample),
        temperature=generation_config.temperature if generation_config.temperature is not None else 1.0,
        top_k=generation_config.top_k or 0,
        top_p=generation_config.top_p if generation_config.top_p is not None else 1.0,
        min_p=generation_config.min_p,
        repetition_penalty=generation_config.repetition_penalty or 1.0,
        eos_token_ids=eos_ids,
        min_length=min_length,
    )


def _extra_stopping_criteria(generation_config, stopping_criteria, tokenizer) -> list:
    """Stopping criteria beyond max length and eos (which the loop handles itself), checked per token."""
    criteria = []
    if generation_config.max_time is not None:
        criteria.append(MaxTimeCriteria(max_time=generation_config.max_time))
    if generation_config.stop_strings is not None:
        if tokenizer is None:
            raise ValueError(
                "stop_strings need the tokenizer: pass tokenizer=<the model's tokenizer> to generate() (as in transformers)."
            )
        criteria.append(StopStringCriteria(stop_strings=generation_config.stop_strings, tokenizer=tokenizer))
    criteria.extend(c for c in (stopping_criteria or []) if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria)))
    return criteria


def _stop_checker(criteria):
    def should_stop(sequence: np.ndarray) -> bool:
        ids = torch.from_numpy(sequence)[None]
        return any(bool(criterion(ids, None).any()) for criterion in criteria)

    return should_stop


def _model_dir(model: OVModelForCausalLM) -> Optional[Path]:
    save_dir = getattr(model, "model_save_dir", None)
    if isinstance(save_dir, TemporaryDirectory):
        save_dir = save_dir.name
    return Path(save_dir) if save_dir is not None else None


def _saved_pair(model_id) -> Optional[tuple[DynExecConfig, Optional[Path]]]:
    """The dynexec config and draft directory of a saved pair, or None when ``model_id`` is not one."""
    path = local_directory(model_id)
    if path is None or not (path / CONFIG_NAME).exists():
        return None
    config = DynExecConfig.load(path)
    if config.draft in (None, "prompt-lookup"):
        return config, None
    draft_dir = path / DRAFT_SUBFOLDER
    if not draft_dir.is_dir():
        raise FileNotFoundError(
            f"{path / CONFIG_NAME} names a {config.draft!r} draft in {draft_dir}, which is missing; "
            "copy the whole exported directory, or export the pair again."
        )
    return config, draft_dir


def _load_draft(draft_model, export: Optional[bool], draft_options: dict, target_kwargs: dict) -> OVModelForCausalLM:
    if isinstance(draft_model, OVModelForCausalLM):
        return draft_model
    if not isinstance(draft_model, (str, Path)):
        raise TypeError(
            f"draft_model must be a path, a hub id or an OVModelForCausalLM, got {type(draft_model).__name__}."
        )
    passthrough = {k: target_kwargs[k] for k in ("trust_remote_code", "local_files_only", "token", "revision", "cache_dir")
                   if k in target_kwargs}
    if export is not None:
        passthrough["export"] = export
    return from_pretrained_checked(OVModelForCausalLM, draft_model, role="draft", **passthrough, **draft_options)
