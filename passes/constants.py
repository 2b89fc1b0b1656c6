"""Reading constant tensors from values: initializers (not overridable graph inputs) and
Constant outputs, the only values whose contents a fusion may fold."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents when it is a constant a pass may fold, else None.

    An initializer that is also a graph input can be overridden by the caller: not constant.
    """
    if value is None or value.is_graph_input():
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if (
        producer is not None
        and producer.op_type == "Constant"
        and producer.domain in ("", "ai.onnx")
    ):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor().numpy()
    return None


def per_channel(
    array: np.ndarray, out_rank: int, channels: int, axis: int = 1
) -> np.ndarray | None:
    """`array` as a vector of `channels` when it broadcasts along `axis` of a rank-`out_rank`
    tensor only (size 1 or `channels` there, 1 everywhere else), else None."""
    if array.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis):
        return None
    if shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).copy()
