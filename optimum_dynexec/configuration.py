"""Configuration of dynamic execution, saved as ``dynexec_config.json`` next to an exported model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from .speculative.vocabulary import DEFAULT_DRAFT_VOCAB_SIZE

CONFIG_NAME = "dynexec_config.json"
#: OpenVINO CPU properties under which speculative greedy output equals the target's own token for token (the
#: default bf16 compute, u8/f16 KV cache and dynamic activation quantization make near-ties flip: README, Exactness)
EXACT_OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
CONFIG_VERSION = 3  # 2: adds `calibration` (lookahead classifier, latencies); 3: `step_prediction`. Older files load


@dataclass
class SpeculationConfig:
    """Speculative decoding defaults of a model; ``generate`` keyword arguments of the same (transformers)
    names override them per call.

    Attributes:
        num_assistant_tokens: draft lookahead (the start value for the heuristic schedule).
        num_assistant_tokens_schedule: "constant" or "heuristic" (transformers' names), "disco" (a calibrated
            classifier stops drafting when the next token is unlikely to be accepted) or "cost" (drafts while the
            expected tokens per second, from latencies measured on this machine, still rise; may not draft at all).
        max_assistant_tokens: most draft tokens per step for the "disco" and "cost" schedules.
        assistant_confidence_threshold: stop drafting after a draft token with a lower probability (None: off).
        prompt_lookup_num_tokens: draft by n-gram prompt lookup with this many tokens instead of a draft model.
        max_matching_ngram_size: longest n-gram prompt lookup tries to match.
        draft_vocab_size: the draft model's LM head keeps this many tokens (the ones calibration saw the target
            write first, then the tokenizer's order); vocabularies under twice the size, and None or 0, are not
            pruned. Output is unchanged (the target verifies every token); the draft step gets cheaper.
        draft_lookup_num_tokens: n-gram guesses a draft model checks per call under greedy drafting (cascade
            drafting: a run of right guesses costs the draft one call instead of one per token; the draft's
            proposals, and so the output, are unchanged). The same guesses fill the padding of the target's
            verification calls (free tokens verified like drafts). 0 turns both off.
        target_copies: compiled copies of the target the paged runtime may add so that each verification width
            of the calibrated schedules keeps its own input shape (on CPU a call whose input length differs from
            the previous one redoes per-shape work, ~5-10 ms on Qwen2.5-1.5B). Each copy holds the target's
            weights again. None: 2 for targets up to 2 GiB of weights, else 0; 0 turns copies off.
        draft_after_first_token: the target's prefill emits the first token before the draft reads the prompt
            (OpenVINO GenAI's order): the time to the first token is the target's prefill alone, and the whole
            generation takes one target call more (Qwen2.5-Coder 1.5B/0.5B here: TTFT ~800 instead of ~1060 ms,
            ~1% fewer tokens/s over 128 tokens). Off: the first call verifies drafts already (the most tokens/s).
    """

    num_assistant_tokens: int = 4
    num_assistant_tokens_schedule: str = "constant"
    max_assistant_tokens: int = 10
    assistant_confidence_threshold: Optional[float] = None
    prompt_lookup_num_tokens: Optional[int] = None
    max_matching_ngram_size: int = 3
    draft_vocab_size: Optional[int] = DEFAULT_DRAFT_VOCAB_SIZE
    draft_lookup_num_tokens: int = 3
    target_copies: Optional[int] = None
    draft_after_first_token: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.draft_after_first_token, bool):
            raise ValueError(f"draft_after_first_token must be True or False, got {self.draft_after_first_token!r}.")
        if not isinstance(self.draft_lookup_num_tokens, int) or self.draft_lookup_num_tokens < 0:
            raise ValueError(f"draft_lookup_num_tokens must be an integer >= 0 (0 turns n-gram guesses off), got "
                             f"{self.draft_lookup_num_tokens!r}.")

    @classmethod
    def from_any(cls, value: Union["SpeculationConfig", dict, None]) -> "SpeculationConfig":
        """Accept a config, a dict of its fields (unknown keys are an error), or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"speculation must be a SpeculationConfig or a dict, got {type(value).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown speculation option(s) {unknown}; known options: {sorted(known)}.")
        return cls(**value)

    def updated(self, **overrides: Any) -> "SpeculationConfig":
        """A copy with the non-None ``overrides`` applied."""
        values = asdict(self)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return SpeculationConfig(**values)


@dataclass
class DynExecConfig:
    """What was built and how to run it; written as ``dynexec_config.json``."""

    technique: str = "speculative"  # or "step-saver" (a diffusion pipeline with a step predictor)
    draft: Optional[str] = None
    speculation: SpeculationConfig = None  # type: ignore[assignment]
    version: int = CONFIG_VERSION
    #: written by calibration (`optimum-cli dynexec calibrate`): the lookahead classifier, the tuned threshold,
    #: latencies measured on the calibrating machine; see optimum_dynexec.speculative.calibration
    calibration: Optional[dict] = None
    #: technique "step-saver" (diffusion pipelines): predictor file, step range, convergence-guard defaults
    step_prediction: Optional[dict] = None
    extra: Optional[dict] = None

    def __post_init__(self) -> None:
        self.speculation = SpeculationConfig.from_any(self.speculation)

    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``dynexec_config.json`` into ``directory`` atomically (a reader never sees half a file)."""
        path = Path(directory) / CONFIG_NAME
        tmp = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "DynExecConfig":
        path = Path(directory) / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); re-export the model or delete the file.") from error
        version = data.get("version")
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ValueError(
                f"{path} has version {version!r}, this optimum-dynexec understands up to {CONFIG_VERSION}; "
                "upgrade optimum-dynexec (`pip install -U optimum-dynexec`) or re-export the model."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{path} has unknown field(s) {unknown}; it was written by another optimum-dynexec version: "
                "upgrade optimum-dynexec or re-export the model."
            )
        data["version"] = CONFIG_VERSION
        return cls(**data)
