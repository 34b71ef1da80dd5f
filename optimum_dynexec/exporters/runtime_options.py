"""The dynamic-quantization group size an exported target asks OpenVINO for (its IR's ``runtime_options``).

OpenVINO on CPU quantizes the activations of int8/int4 matmuls to int8 on the fly, in groups of 32 values by
default. For a per-channel int8 target a group of 128 makes a call over several tokens cost about what a
call over one token costs (Qwen2.5-Coder-1.5B int8 here: 7 tokens 68 ms against 77 ms with groups of 32, one
token 62-63 ms either way; perplexity on code and prose moves by 0.02%). Speculative decoding verifies
several tokens per call, so it gains; plain decoding does not lose. optimum-intel writes the same option
(``OVWeightQuantizationConfig(dq_group_size=...)``, 128 in its int8 default for Qwen2.5-Coder-3B), and every
runtime compiling the IR (optimum-intel, openvino.genai) applies it unless its own properties set another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

DQ_GROUP_OPTION = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
#: group size written into int8 targets by default (``--dq-group-size auto``)
VERIFY_DQ_GROUP_SIZE = 128
_MODEL_XML = "openvino_model.xml"


def dq_group_size_of(model) -> Optional[int]:
    """The group size an ``ov.Model``'s runtime options ask for, or None when they leave it to the runtime."""
    if not model.has_rt_info(["runtime_options", DQ_GROUP_OPTION]):
        return None
    return int(model.get_rt_info(["runtime_options", DQ_GROUP_OPTION]).astype(str))


def auto_dq_group_size(model) -> Optional[int]:
    """The group size ``--dq-group-size auto`` writes: :data:`VERIFY_DQ_GROUP_SIZE` for int8 weights (per
    channel: any group fits them), None for floating-point weights and for grouped int4 ones (their groups bound
    the activation groups; the draft runtime already matches them, see ``openvino_draft``)."""
    from ..backends.openvino_draft import int4_group_size
    from .weight_compression import has_compressed_weights

    if has_compressed_weights(model) and int4_group_size(model) is None:
        return VERIFY_DQ_GROUP_SIZE
    return None


def write_dq_group_size(model_dir: Union[str, Path], group_size: Union[int, str]) -> Optional[int]:
    """Set the dynamic-quantization group size in ``model_dir``'s IR (``"auto"``: :func:`auto_dq_group_size`;
    0 turns dynamic quantization off). Returns the size written, or None when "auto" leaves the IR as it is.

    The IR is saved beside the original and renamed over it (the weights are rewritten too: the OpenVINO API
    saves both files), so a failure leaves the original intact.
    """
    import openvino as ov

    xml = Path(model_dir) / _MODEL_XML
    model = ov.Core().read_model(xml)
    size = auto_dq_group_size(model) if group_size == "auto" else int(group_size)
    if size is None or dq_group_size_of(model) == size:
        return size
    model.set_rt_info(str(size), ["runtime_options", DQ_GROUP_OPTION])
    staged = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
    ov.save_model(model, staged, compress_to_fp16=False)
    del model
    os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(staged, xml)
    return size
