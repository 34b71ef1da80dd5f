"""OpenVINO backend over a paged-attention copy of the decoder: what openvino.genai runs.

OpenVINO's ``paged_attention_transformation`` turns a stateful SDPA decoder into one whose KV cache is a set of
plain input tensors split into blocks, addressed per call through ``past_lens`` / ``block_indices``. For one
sequence the block table is simply 0..n-1, so a rollback is free and exact: lowering ``past_lens`` makes the
kernel overwrite the rejected slots on the next call. Measured here (2 cores, constant input shapes):
verifying 6 tokens costs 1.1x a decode step on SmolLM2-135M and Qwen2.5-Coder-0.5B/1.5B (stateful SDPA:
1.5x), and every input shape stays the same from call to call when calls are padded (``input_widths``),
which saves the CPU plugin's per-shape work. The speculative loop uses this layout on CPU by default.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np
import openvino as ov

logger = logging.getLogger(__name__)

_SCALAR_INPUTS = ("input_ids", "position_ids", "past_lens", "subsequence_begins", "block_indices_begins",
                  "block_indices", "max_context_len")
_ROWS_INPUT = "logits_indices"
_INITIAL_BLOCKS = 16


class PagedAttentionUnsupported(RuntimeError):
    """The model cannot be driven through paged attention (transformation or compilation failed)."""


def paged_copy(model: ov.Model) -> ov.Model:
    """A paged-attention copy of a stateful optimum-intel decoder (the original is left untouched)."""
    from openvino._offline_transformations import paged_attention_transformation

    copy = model.clone()
    try:
        paged_attention_transformation(copy)
    except Exception as error:  # the transformation raises plain RuntimeErrors for unsupported graphs
        raise PagedAttentionUnsupported(f"paged_attention_transformation failed: {error}") from error
    _gather_before_lm_head(copy)
    names = {name for port in copy.inputs for name in port.get_names()}
    unknown = sorted(n for n in names if n not in (*_SCALAR_INPUTS, _ROWS_INPUT)
                     and not n.startswith(("key_cache.", "value_cache.")))
    if unknown or "max_context_len" not in names:
        raise PagedAttentionUnsupported(f"unexpected inputs after the paged-attention transformation: {unknown}")
    return copy


def _gather_before_lm_head(model: ov.Model) -> None:
    """Let the caller choose which token rows reach the LM head (new input ``logits_indices``), as openvino.genai
    does for its paged models: a prompt needs one row of logits, not one per prompt token (the LM head of
    Qwen2.5-1.5B is 0.23 B of its 1.5 B weights), and a padded call needs only its real rows."""
    from openvino import opset13 as ops

    logits = next((result for result in model.get_results() if "logits" in result.input_value(0).get_names()), None)
    node = None if logits is None else logits.input_value(0).get_node()
    # the LM head MatMul, possibly behind elementwise ops (casts, logit scaling or soft-capping)
    while node is not None and node.get_type_name() != "MatMul":
        passes = node.get_type_name() in ("Convert", "Multiply", "Add", "Divide", "Tanh") and node.get_input_size()
        node = node.input_value(0).get_node() if passes else None
    if node is None or node.input(0).get_partial_shape().rank.get_length() != 3:
        logger.info("no LM head MatMul on [tokens, 1, hidden] found: every row gets logits")
        return
    indices = ops.parameter(ov.PartialShape([-1]), ov.Type.i64, name=_ROWS_INPUT)
    indices.output(0).get_tensor().set_names({_ROWS_INPUT})
    # paged attention lays tokens out on axis 0: [tokens, 1, hidden]
    gathered = ops.gather(node.input_value(0), indices, ops.constant(np.array(0, dtype=np.int64)))
    node.input(0).replace_source_output(gathered.output(0))
    model.add_parameters([indices])
    model.validate_nodes_and_infer_types()


class OVPagedDecoderRunner:
    """A :class:`~optimum_dynexec.backends.base.DecoderRunner` over a compiled paged-attention decoder.

    Args:
        compiled: the compiled output of :func:`paged_copy` (block size and cache layout are read from its
            ``key_cache.*`` / ``value_cache.*`` inputs, which the plugin fixes at compile time).
        max_length: the model's largest position count (``max_position_embeddings``), or None.
        compile_copy: compiles another copy of the same model, for :attr:`dedicated_widths` (None: no copies).
    """

    def __init__(self, compiled: ov.CompiledModel, max_length: Optional[int] = None,
                 compile_copy: Optional[Callable[[], ov.CompiledModel]] = None):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.max_length = max_length
        self._compile_copy = compile_copy
        self._dedicated: tuple[int, ...] = ()
        self._requests: OrderedDict[int, ov.InferRequest] = OrderedDict()
        #: compiled copies kept while their widths are not dedicated (see :attr:`dedicated_widths`)
        self.max_copies = 0
        self._cache_ports = [port for port in compiled.inputs if port.get_any_name().startswith(("key_cache.", "value_cache."))]
        if not self._cache_ports:
            raise PagedAttentionUnsupported("the compiled model has no key_cache.* inputs")
        value_shape = compiled.input("value_cache.0").get_partial_shape()
        # value blocks are [blocks, kv_heads, block_size, head_size(+quantization params)] on CPU and GPU alike;
        # key blocks may be transposed or carry per-channel scales, so the block size is read from the values
        self.block_size = value_shape[2].get_length()
        self._logits_port = next(port for port in compiled.outputs if "logits" in port.get_names())
        self._selects_rows = any(_ROWS_INPUT in port.get_names() for port in compiled.inputs)
        self.vocab_size = int(self._logits_port.get_partial_shape()[-1].get_length())
        #: input lengths calls are padded up to (the smallest one that fits; longer calls run as they are)
        self.input_widths: tuple[int, ...] = (1,)
        self._blocks = 0
        self._block_indices = np.arange(0, dtype=np.int32)
        self._positions = np.arange(max_length or 4096, dtype=np.int64)
        self._past_lens = np.zeros(1, dtype=np.int32)
        self._begins = np.zeros(2, dtype=np.int32)
        self._block_begins = np.zeros(2, dtype=np.int32)
        self._context_len = np.zeros((), dtype=np.int32)
        # padded calls write into input tensors bound once per (width, rows) (see _bind)
        self._buffers: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        # per request: the (width, rows) whose buffers are bound; dropped when the request gets other inputs
        self._bound: dict[int, tuple[int, int]] = {}
        self.cache_length = 0

    @property
    def dedicated_widths(self) -> tuple[int, ...]:
        """Widths (of ``input_widths``) whose calls run on a compiled copy of their own: the CPU plugin redoes
        per-shape work (~5-10 ms on Qwen2.5-1.5B) whenever a request's input length changes, so calls alternating
        between widths each keep their shape on their own request. Each copy holds its own (repacked) weights.
        Copies of widths no longer listed are kept for reuse (compiling one takes seconds) up to
        :attr:`max_copies`, least recently listed released first."""
        return self._dedicated

    @dedicated_widths.setter
    def dedicated_widths(self, widths) -> None:
        self._dedicated = tuple(int(w) for w in widths)
        for width in self._dedicated:
            if width in self._requests:
                self._requests.move_to_end(width)
        self._release_copies()
        # compiled now, not by the first call that needs one: a copy takes seconds to compile, which would
        # otherwise stall a generation midway (and whichever generation a benchmark happens to time)
        for width in self._dedicated:
            self._request(width)

    def _release_copies(self) -> None:
        keep = max(self.max_copies, len(self._dedicated))
        for width in [w for w in self._requests if w not in self._dedicated][: max(len(self._requests) - keep, 0)]:
            self._bound.pop(id(self._requests.pop(width)), None)

    @classmethod
    def from_model(cls, model: ov.Model, device: str, ov_config: Optional[dict], max_length: Optional[int],
                   core: Optional[ov.Core] = None) -> "OVPagedDecoderRunner":
        """Transform ``model`` (a stateful decoder, not modified) and compile the paged copy on ``device``."""
        core = core or ov.Core()
        paged = paged_copy(model)
        config = dict(ov_config or {})
        try:
            compiled = core.compile_model(paged, device, config)
        except Exception as error:
            raise PagedAttentionUnsupported(f"compiling the paged-attention copy failed: {error}") from error
        return cls(compiled, max_length, compile_copy=lambda: core.compile_model(paged, device, config))

    def _reserve(self, tokens: int) -> None:
        needed = -(-tokens // self.block_size)
        if needed <= self._blocks:
            return
        blocks = max(needed, 2 * self._blocks, _INITIAL_BLOCKS)
        if self.max_length is not None:
            blocks = max(needed, min(blocks, -(-self.max_length // self.block_size)))
        for port in self._cache_ports:
            shape = [blocks] + [dim.get_length() for dim in list(port.get_partial_shape())[1:]]
            grown = ov.Tensor(port.get_element_type(), shape)
            if self._blocks:
                old = self.request.get_tensor(port)
                # copy raw bytes: the cache element type may be u8 / f16 / bf16 with embedded scales
                np.asarray(grown.data).view(np.uint8).reshape(blocks, -1)[: self._blocks] = (
                    np.asarray(old.data).view(np.uint8).reshape(self._blocks, -1))
            for request in (self.request, *self._requests.values()):
                request.set_tensor(port.get_any_name(), grown)
        self._blocks = blocks
        self._block_indices = np.arange(blocks, dtype=np.int32)
        self._bound.clear()
        if len(self._positions) < blocks * self.block_size:
            self._positions = np.arange(blocks * self.block_size, dtype=np.int64)

    def reset(self) -> None:
        self.cache_length = 0

    def padded_length(self, count: int) -> int:
        """The input length a call over ``count`` tokens after the cache runs at: the smallest of
        :attr:`input_widths` that fits, within the model's positions. The slots beyond ``count`` cost nothing
        extra, so the speculative loop may fill them with more tokens to verify."""
        width = next((w for w in self.input_widths if w >= count), count)
        if self.max_length is not None:
            width = max(count, min(width, self.max_length - self.cache_length))
        return width

    def forward(self, token_ids: np.ndarray, last: Optional[int] = None) -> np.ndarray:
        count = len(token_ids)
        rows = count if last is None else last
        past = self.cache_length
        # Every new input length costs the CPU plugin shape inference over the whole graph (~3-4 ms here, a
        # third of a SmolLM2 step), while a few more tokens in a call cost far less, so
        # a call runs padded up to the smallest of ``input_widths`` that fits (as openvino.genai pads
        # prompt-lookup candidates). Pads come after the real tokens, so causal attention keeps them out of the
        # real rows; their cache slots lie beyond ``cache_length`` and the next call overwrites them.
        width = self.padded_length(count)
        total = past + width
        self._reserve(total)
        self._past_lens[0] = past
        self._block_begins[1] = -(-total // self.block_size)
        self._context_len[()] = total
        request = self._request(width)
        if width in self.input_widths:
            # The calls of a loop have a few shapes: their inputs are bound once and written in place. Passing a
            # fresh dict of arrays makes every call bind new tensors, ~0.8 ms of a 10 ms SmolLM2 step here.
            buffers = self._bind(request, width, rows)
            buffers["input_ids"][:count] = token_ids
            buffers["input_ids"][count:] = token_ids[-1]
            buffers["position_ids"][:] = self._positions[past:total]
            if self._selects_rows:
                buffers[_ROWS_INPUT][:] = self._positions[count - rows : count]
            request.start_async()
        else:
            self._bound.pop(id(request), None)
            self._begins[1] = width
            inputs = {
                "input_ids": np.ascontiguousarray(
                    np.concatenate([token_ids, np.repeat(token_ids[-1:], width - count)]), dtype=np.int64),
                "position_ids": self._positions[past:total],
                "past_lens": self._past_lens,
                "subsequence_begins": self._begins,
                "block_indices_begins": self._block_begins,
                # the whole reserved table (the sequence uses its first blocks): a constant shape again
                "block_indices": self._block_indices,
                "max_context_len": self._context_len,
            }
            if self._selects_rows:
                inputs[_ROWS_INPUT] = self._positions[count - rows : count]
            request.start_async(inputs, share_inputs=True)
        request.wait()
        self.cache_length = past + count
        logits = request.get_tensor(self._logits_port.get_any_name()).data
        if self._selects_rows:
            return logits.reshape(rows, -1)
        logits = logits.reshape(width, -1) if logits.ndim != 2 else logits
        return logits[count - rows : count]

    def _request(self, width: int) -> ov.InferRequest:
        """The request calls ``width`` tokens wide run on (a dedicated width's copy is compiled when listed)."""
        if width not in self.dedicated_widths or self._compile_copy is None:
            return self.request
        request = self._requests.get(width)
        if request is None:
            request = self._compile_copy().create_infer_request()
            for port in self._cache_ports:  # the copies share the one KV cache
                name = port.get_any_name()
                request.set_tensor(name, self.request.get_tensor(name))
            self._requests[width] = request
            self._release_copies()
        return request

    def _bind(self, request: ov.InferRequest, width: int, rows: int) -> dict[str, np.ndarray]:
        """The input buffers of calls ``width`` tokens wide returning ``rows`` rows, bound to ``request``."""
        buffers = self._buffers.get((width, rows))
        if buffers is None:
            buffers = {"input_ids": np.zeros(width, dtype=np.int64), "position_ids": np.zeros(width, dtype=np.int64),
                       "subsequence_begins": np.array([0, width], dtype=np.int32)}
            if self._selects_rows:
                buffers[_ROWS_INPUT] = np.zeros(rows, dtype=np.int64)
            self._buffers[(width, rows)] = buffers
        key = (width, rows)
        if self._bound.get(id(request)) != key:
            shared = {"past_lens": self._past_lens, "block_indices_begins": self._block_begins,
                      "block_indices": self._block_indices, "max_context_len": self._context_len}
            for name, array in {**buffers, **shared}.items():
                request.set_tensor(name, ov.Tensor(array, shared_memory=True))
            self._bound[id(request)] = key
        return buffers

    def trim(self, length: int) -> None:
        # the next call overwrites slots from ``length`` on; nothing to copy or mask
        self.cache_length = min(self.cache_length, length)
