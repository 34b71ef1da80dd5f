"""The small interface the speculative loop needs from a runtime: a stateful decoder on one sequence."""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np


class DecoderRunner(Protocol):
    """One sequence of a stateful causal decoder whose KV cache can be rolled back.

    ``forward`` feeds tokens after the cached ones and returns their logits, one row per fed token. The
    returned array may be a view of runtime memory that is only valid until the next ``forward``.
    """

    #: number of tokens whose keys/values are in the cache
    cache_length: int
    #: logits row width
    vocab_size: int
    #: largest sequence length the model supports (positions), or None if unbounded
    max_length: int | None

    def reset(self) -> None:
        """Forget the cached sequence."""

    def forward(self, token_ids: np.ndarray, last: Optional[int] = None) -> np.ndarray:
        """Run ``token_ids`` (1-D int64) after the cache; return the logits of the ``last`` of them (all when
        None), shape [last, vocab]. Runtimes that can skip the LM head for the other rows do."""

    def trim(self, length: int) -> None:
        """Drop cached positions from ``length`` on (no recomputation)."""

    # Optional: ``padded_length(count) -> int``, the input length a call over ``count`` tokens runs at when the
    # runtime pads calls to a few fixed lengths (the speculative loop fills the padding with tokens to verify).
