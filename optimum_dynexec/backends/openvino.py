"""OpenVINO backend: a stateful exported decoder driven one sequence at a time.

The KV cache lives in the infer request's variable states ([batch, kv_heads, seq, head_dim]). Reading and
writing those states back (openvino.genai's ``trim_kv_cache``) copies the whole cache: ~75 ms for
SmolLM2-135M's 60 states here, more than a decode step. So a rollback copies nothing: rejected slots stay in
the cache and are masked out through ``attention_mask`` (zeros, like left padding), while ``position_ids``
carry the logical positions. Only when holes outnumber live tokens is the cache compacted for real.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import openvino as ov

_DEFAULT_CAPACITY = 4096
# holes may exceed live tokens by this many slots before the cache is compacted
_COMPACT_SLACK = 256


class OVDecoderRunner:
    """A :class:`~optimum_dynexec.backends.base.DecoderRunner` over an OpenVINO infer request.

    Args:
        request: infer request of a *stateful* model exported by optimum-intel (inputs ``input_ids`` and
            optionally ``attention_mask``, ``position_ids``, ``beam_idx``; output ``logits``).
        max_length: the model's largest position count (``max_position_embeddings``), or None.
    """

    def __init__(self, request: ov.InferRequest, max_length: Optional[int] = None):
        self.request = request
        self.max_length = max_length
        compiled = request.get_compiled_model()
        input_names = {name for port in compiled.inputs for name in port.get_names()}
        if "input_ids" not in input_names:
            raise ValueError(
                f"the OpenVINO model has no 'input_ids' input (inputs: {sorted(input_names)}); "
                "export a causal LM with `optimum-cli export openvino --task text-generation-with-past`."
            )
        if not any(port.get_names() & {"logits"} for port in compiled.outputs):
            raise ValueError("the OpenVINO model has no 'logits' output; it is not a causal LM export.")
        if any("past_key_values" in name or "present" in name for name in input_names):
            raise ValueError(
                "this OpenVINO model is stateless (past_key_values are inputs); speculative decoding needs a stateful "
                "export whose KV cache can be rolled back: re-export with optimum-intel's default `stateful=True`."
            )
        self._feeds_mask = "attention_mask" in input_names
        self._feeds_positions = "position_ids" in input_names
        self._feeds_beam = "beam_idx" in input_names
        self._logits_port = next(port for port in compiled.outputs if "logits" in port.get_names())
        if not self._feeds_mask:
            raise ValueError("the OpenVINO model has no 'attention_mask' input, which KV-cache rollback relies on.")
        self._beam = np.zeros(1, dtype=np.int32)
        self._sequence_axis: Optional[int] = None
        self.vocab_size = int(self._logits_port.get_partial_shape()[-1].get_length())
        capacity = _DEFAULT_CAPACITY if max_length is None else min(max_length, _DEFAULT_CAPACITY)
        self._mask = np.zeros((1, capacity), dtype=np.int64)  # 1 = live cache slot, 0 = rolled-back hole
        self._positions = np.arange(capacity, dtype=np.int64)[None]
        self._slots = np.zeros(capacity, dtype=np.int64)  # cache slot of each logical position
        self.cache_length = 0  # live tokens (logical length)
        self._slots_used = 0  # physical cache length, holes included
        self.compactions = 0

    def _ensure_capacity(self, slots: int, positions: int) -> None:
        if slots > self._mask.shape[1]:
            mask = np.zeros((1, max(slots, 2 * self._mask.shape[1])), dtype=np.int64)
            mask[:, : self._slots_used] = self._mask[:, : self._slots_used]
            self._mask = mask
        if positions > self._positions.shape[1]:
            size = max(positions, 2 * self._positions.shape[1])
            self._positions = np.arange(size, dtype=np.int64)[None]
            slots = np.zeros(size, dtype=np.int64)
            slots[: self.cache_length] = self._slots[: self.cache_length]
            self._slots = slots

    def reset(self) -> None:
        self.request.reset_state()
        self.cache_length = 0
        self._slots_used = 0

    def forward(self, token_ids: np.ndarray, last: Optional[int] = None) -> np.ndarray:
        count = len(token_ids)
        past, used = self.cache_length, self._slots_used
        self._ensure_capacity(used + count, past + count)
        self._mask[0, used : used + count] = 1
        self._slots[past : past + count] = np.arange(used, used + count)
        inputs = {"input_ids": token_ids.reshape(1, -1), "attention_mask": self._mask[:, : used + count]}
        if self._feeds_positions:
            inputs["position_ids"] = self._positions[:, past : past + count]
        if self._feeds_beam:
            inputs["beam_idx"] = self._beam
        # start_async + wait skips the result dictionary infer() builds: ~1 ms less per call here
        self.request.start_async(inputs, share_inputs=True)
        self.request.wait()
        self.cache_length = past + count
        self._slots_used = used + count
        logits = self.request.get_tensor(self._logits_port).data[0]
        return logits if last is None else logits[count - last :]

    def trim(self, length: int) -> None:
        if length >= self.cache_length:
            return
        # slots grow with the logical position, so everything from this slot on is rolled back
        self._mask[0, self._slots[length] : self._slots_used] = 0
        self.cache_length = length
        if self._slots_used - length > length + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Copy the live slots to the front of every state (rare: holes outnumber live tokens)."""
        live = self._slots[: self.cache_length]
        for state in self.request.query_state():
            cached = state.state.data
            if self._sequence_axis is None:
                self._sequence_axis = 2 if cached.shape[2] == self._slots_used else cached.shape.index(self._slots_used)
            state.state = ov.Tensor(np.ascontiguousarray(np.take(cached, live, axis=self._sequence_axis)))
        self._mask[0, : self.cache_length] = 1
        self._mask[0, self.cache_length : self._slots_used] = 0
        self._slots[: self.cache_length] = np.arange(self.cache_length)
        self._slots_used = self.cache_length
        self.compactions += 1
