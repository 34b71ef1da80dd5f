"""How a model's weights are compressed, and INT4 copies of them (NNCF), used as a self-speculation draft."""

from __future__ import annotations

import logging
from typing import Optional

import openvino as ov

logger = logging.getLogger(__name__)

_COMPRESSED_TYPES = {"u8", "i8", "u4", "i4", "nf4", "f4e2m1"}


def has_compressed_weights(model: ov.Model) -> bool:
    """True if the model already stores integer-compressed weights (e.g. an int8/int4 export)."""
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in _COMPRESSED_TYPES:
            return True
    return False


def weights_int4_group_size(model: ov.Model) -> Optional[int]:
    """The group size of the model's grouped int4 weights ([rows, groups, group] constants), or None."""
    four_bit = {ov.Type.u4, ov.Type.i4}
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Constant" and node.get_output_element_type(0) in four_bit:
            shape = node.get_output_partial_shape(0)
            if shape.rank.get_length() == 3:
                return shape[2].get_length()
    return None


def int4_group_size(hidden_size: int, preferred: int = 128) -> int:
    """Largest group size <= ``preferred`` that divides the hidden size (SmolLM2's 576 needs 64)."""
    for size in (preferred, 64, 32, 16):
        if size <= preferred and hidden_size % size == 0:
            return size
    return -1  # per-channel


def compress_to_int4(model: ov.Model, hidden_size: int, ratio: float = 1.0) -> ov.Model:
    """An INT4 (asymmetric, grouped) copy of an uncompressed OpenVINO model; the original is untouched."""
    import nncf

    if has_compressed_weights(model):
        raise ValueError(
            "the target's weights are already compressed (int8/int4), so an INT4 self-draft cannot be made from them. "
            "Pass `draft_model=` an INT4 export of the original checkpoint instead, e.g. "
            "`optimum-cli export openvino --model <checkpoint> --weight-format int4 <dir>`, or load the target from its "
            "transformers checkpoint with `export=True`."
        )
    group_size = int4_group_size(hidden_size)
    logger.info("Compressing a copy of the target to INT4 (group size %d) for self-speculation...", group_size)
    return nncf.compress_weights(
        model.clone(), mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size, ratio=ratio
    )
