"""OpenVINO backend: a stateful exported decoder driven one sequence at a time.

The KV cache lives in the infer request's variable states ([batch, kv_heads, seq, head_dim]); rolling it
back sets each state to a region-of-interest view of itself (the plugin copies the kept part), as
openvino.genai's ``trim_kv_cache`` does.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import openvino as ov

_DEFAULT_CAPACITY = 4096


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
        self._grow(_DEFAULT_CAPACITY if max_length is None else min(max_length, _DEFAULT_CAPACITY))
        self._beam = np.zeros(1, dtype=np.int32)
        self._states: list = []
        self._sequence_axis: Optional[int] = None
        self.vocab_size = int(self._logits_port.get_partial_shape()[-1].get_length())
        self.cache_length = 0
        self.runtime_seconds = 0.0

    def _grow(self, capacity: int) -> None:
        self._mask = np.ones((1, capacity), dtype=np.int64)
        self._positions = np.arange(capacity, dtype=np.int64)[None]

    def reset(self) -> None:
        self.request.reset_state()
        self.cache_length = 0

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        past = self.cache_length
        total = past + len(token_ids)
        if total > self._mask.shape[1]:
            self._grow(max(total, 2 * self._mask.shape[1]))
        inputs = {"input_ids": token_ids.reshape(1, -1)}
        if self._feeds_mask:
            inputs["attention_mask"] = self._mask[:, :total]
        if self._feeds_positions:
            inputs["position_ids"] = self._positions[:, past:total]
        if self._feeds_beam:
            inputs["beam_idx"] = self._beam
        self.request.infer(inputs, share_inputs=True, share_outputs=True)
        self.cache_length = total
        return self.request.get_tensor(self._logits_port).data[0]

    def trim(self, length: int) -> None:
        if length >= self.cache_length:
            return
        if not self._states:
            self._states = self.request.query_state()
        for state in self._states:
            cached = state.state
            end = list(cached.shape)
            if self._sequence_axis is None:
                # [batch, kv_heads, seq, head_dim] for almost every export; found once from the cached length
                self._sequence_axis = 2 if end[2] == self.cache_length else end.index(self.cache_length)
            end[self._sequence_axis] = length
            state.state = ov.Tensor(cached, [0] * len(end), end)
        self.cache_length = length
