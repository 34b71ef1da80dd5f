"""Turning logit rows into token choices, the way transformers' logits processors and warpers do.

Only the processors that keep a row-local, prefix-dependent definition are implemented here in numpy
(repetition penalty, minimum length, temperature, top-k, top-p, min-p); everything else is refused by
``TokenSelector.from_generation_config`` so that a speculative run never silently differs from the
target's own ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

_NEG_INF = np.float32(-np.inf)

# GenerationConfig attributes whose non-default values change the output and are not implemented here.
_UNSUPPORTED_OPTIONS = {
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_h": None,
    "watermarking_config": None,
    "guidance_scale": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
}


def unsupported_generation_options(generation_config) -> list[str]:
    """Names of the options set in ``generation_config`` that speculative decoding does not implement."""
    unsupported = []
    for name, neutral in _UNSUPPORTED_OPTIONS.items():
        value = getattr(generation_config, name, neutral)
        if value is None or value == neutral:
            continue
        if name == "guidance_scale" and value == 1:
            continue
        if name in ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size") and not value:
            continue
        unsupported.append(f"{name}={value!r}")
    return unsupported


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float32."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


@dataclass
class TokenSelector:
    """How the next token is chosen from a logit row: greedy or sampled, after the configured processors.

    ``min_length`` is the sequence length (prompt included) below which every ``eos_token_ids`` is masked,
    matching transformers' ``MinLengthLogitsProcessor`` / ``MinNewTokensLengthLogitsProcessor``.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0
    eos_token_ids: Sequence[int] = field(default_factory=tuple)
    min_length: int = 0

    def __post_init__(self) -> None:
        self.eos_token_ids = np.asarray(list(self.eos_token_ids), dtype=np.int64)
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")

    @property
    def is_plain_greedy(self) -> bool:
        """True when a raw argmax is the whole rule (no processor changes the winner)."""
        return not self.do_sample and self.repetition_penalty == 1.0 and self.min_length == 0

    def process(self, row: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """Processed logits (a new float32 array) for the row that follows ``prefix`` (all tokens so far)."""
        scores = np.array(row, dtype=np.float32)
        if self.repetition_penalty != 1.0 and len(prefix):
            seen = np.unique(prefix)
            seen = seen[seen < scores.shape[-1]]
            picked = scores[seen]
            scores[seen] = np.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
        if len(prefix) < self.min_length and len(self.eos_token_ids):
            scores[self.eos_token_ids] = _NEG_INF
        if not self.do_sample:
            return scores
        if self.temperature != 1.0:
            scores /= np.float32(self.temperature)
        vocab = scores.shape[-1]
        if 0 < self.top_k < vocab:
            kth = np.partition(scores, vocab - self.top_k)[vocab - self.top_k]
            scores[scores < kth] = _NEG_INF
        if self.top_p < 1.0:
            order = np.argsort(scores)  # ascending, as transformers' TopPLogitsWarper
            cumulative = np.cumsum(softmax(scores[order]))
            remove = cumulative <= (1 - self.top_p)
            remove[-1] = False  # keep at least one token
            scores[order[remove]] = _NEG_INF
        if self.min_p is not None:
            probs = softmax(scores.copy())
            scores[probs < self.min_p * probs.max()] = _NEG_INF
        return scores

    def probabilities(self, row: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """The distribution the next token is drawn from (sampling) after all processors."""
        return softmax(self.process(row, prefix))

    def greedy(self, row: np.ndarray, prefix: np.ndarray) -> int:
        """The greedy choice for one row."""
        if self.is_plain_greedy:
            return int(row.argmax())
        return int(self.process(row, prefix).argmax())
