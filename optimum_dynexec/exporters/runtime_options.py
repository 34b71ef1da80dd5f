"""The dynamic-quantization group size an exported target asks OpenVINO for (its IR's ``runtime_options``).

OpenVINO on CPU quantizes the activations of int8/int4 matmuls to int8 on the fly, in groups of 32 values by
default. Larger groups make a call over several tokens cost about what a call over one token costs, and
speculative decoding verifies several tokens per call; plain decoding does not lose. Measured here (AVX-512 CPU,
calls over 1 / 7 / 11 tokens):

* per-channel int8, groups of 128: Qwen2.5-Coder-1.5B 62 / 77 / 96 ms -> 63 / 68 / 80 ms (NLL on code and
  prose +0.02%);
* grouped int4, groups as large as the weights' own: Qwen2.5-Coder-0.5B (groups of 128) 16.6 / 26.4 / 35.5 ms
  -> 16.9 / 21.9 / 29.3 ms (NLL +0.08%); SmolLM2-135M (groups of 64) 7.1 / 10.4 / 12.5 ms -> 7.3 / 9.7 / 11.7 ms.
  Groups larger than the weights' cost more instead (SmolLM2 with 128: 9.7 / 18.1 / 20.8 ms).

optimum-intel writes the same option (``OVWeightQuantizationConfig(dq_group_size=...)``, e.g. in its defaults
for Qwen2.5-Coder-3B), and every runtime compiling the IR (optimum-intel, openvino.genai) applies it unless its
own properties set another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .weight_compression import has_compressed_weights, weights_int4_group_size

DQ_GROUP_OPTION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
#: group size written into per-channel (int8) targets by default (``--dq-group-size auto``)
VERIFY_DQ_GROUP_SIZE = 128
#: OpenVINO CPU's own group size
RUNTIME_DQ_GROUP_SIZE = 32
_MODEL_XML = "openvino_model.xml"


def dq_group_size_of(model) -> Optional[int]:
    """The group size an ``ov.Model``'s runtime options ask for, or None when they leave it to the runtime."""
    if not model.has_rt_info(["runtime_options", DQ_GROUP_OPTION]):
        return None
    return int(model.get_rt_info(["runtime_options", DQ_GROUP_OPTION]).astype(str))


def dq_group_size_for_weights(int4_group_size: Optional[int], compressed: bool) -> Optional[int]:
    """The group size that fits a model's weights: the weights' own group size for grouped int4 weights (larger
    activation groups cost more than they save), :data:`VERIFY_DQ_GROUP_SIZE` for per-channel (int8) ones, None
    for floating-point weights and when the runtime's default already fits."""
    if int4_group_size is not None:
        return int4_group_size if int4_group_size > RUNTIME_DQ_GROUP_SIZE else None
    return VERIFY_DQ_GROUP_SIZE if compressed else None


def auto_dq_group_size(model, per_channel: bool = True) -> Optional[int]:
    """The group size ``--dq-group-size auto`` picks from an ``ov.Model``'s weights
    (:func:`dq_group_size_for_weights`); ``per_channel=False`` leaves per-channel (int8) weights at the runtime's
    default."""
    return dq_group_size_for_weights(weights_int4_group_size(model), per_channel and has_compressed_weights(model))


def runtime_properties(model, device: str, ov_config: Optional[dict], per_channel: bool = True) -> dict:
    """``ov_config`` for compiling ``model``: on CPU, activations quantized in the groups that fit its weights
    (:func:`dq_group_size_for_weights`; verifying several tokens then costs about one token's call), unless the
    caller or the IR chose a group size; a target exported by ``optimum-cli export openvino`` gets what ``export
    dynexec`` would have written. ``per_channel=False`` leaves per-channel (int8) weights at the runtime's default
    (drafts, whose calls are one or two tokens wide)."""
    config = dict(ov_config or {})
    if device.upper().startswith("CPU") and DQ_GROUP_OPTION not in config and dq_group_size_of(model) is None:
        size = auto_dq_group_size(model, per_channel)
        if size is not None:
            config[DQ_GROUP_OPTION] = str(size)
    return config


def write_dq_group_size(model_dir: Union[str, Path], group_size: Union[int, str]) -> Optional[int]:
    """Set the dynamic-quantization group size in ``model_dir``'s IR (0 turns dynamic quantization off). With
    ``"auto"`` an IR that already asks for a size keeps it (the exporter's choice, e.g. an optimum-intel default
    for that model), any other gets :func:`auto_dq_group_size`. Returns the size the IR asks for afterwards, or
    None when it asks for none.

    The IR is saved beside the original and renamed over it (the weights are rewritten too: the OpenVINO API
    saves both files), so a failure leaves the original intact.
    """
    import openvino as ov

    xml = Path(model_dir) / _MODEL_XML
    model = ov.Core().read_model(xml)
    current = dq_group_size_of(model)
    if group_size != "auto":
        size = int(group_size)
    else:
        size = current if current is not None else auto_dq_group_size(model)
    if size is None or size == current:
        return size
    model.set_rt_info(str(size), ["runtime_options", DQ_GROUP_OPTION])
    staged = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
    ov.save_model(model, staged, compress_to_fp16=False)
    del model
    os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(staged, xml)
    return size
