"""Multiply-accumulate counts of the compute-heavy ops, from inferred static shapes.

Conv: N * Cout * prod(out spatial) * (Cin / group) * prod(kernel). ConvTranspose: N * Cin *
prod(in spatial) * (Cout / group) * prod(kernel). Gemm: M * N * K. MatMul: prod(batch) * M * N * K.
Other ops count as zero: they are memory-bound and cheap next to these.
"""

from __future__ import annotations

import math

import onnx_ir as ir


def _shape(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def node_macs(node: ir.Node) -> int | None:
    """MACs of one node, 0 for ops not counted, None when a needed shape is unknown."""
    if node.domain not in ("", "ai.onnx"):
        return 0
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w, y = _shape(node.inputs[1]), _shape(node.outputs[0])
        x = _shape(node.inputs[0])
        if w is None or y is None or x is None:
            return None
        # The weight's dim 1 is already per group (Cin/group, or Cout/group for ConvTranspose).
        kernel = math.prod(w[2:])
        if op == "Conv":
            return y[0] * y[1] * math.prod(y[2:]) * w[1] * kernel
        return x[0] * x[1] * math.prod(x[2:]) * w[1] * kernel
    if op == "Gemm":
        a, y = _shape(node.inputs[0]), _shape(node.outputs[0])
        if a is None or y is None:
            return None
        k = a[0] if node.attributes.get_int("transA", 0) else a[1]
        return y[0] * y[1] * k
    if op == "MatMul":
        a, y = _shape(node.inputs[0]), _shape(node.outputs[0])
        if a is None or y is None:
            return None
        return math.prod(y) * a[-1]
    return 0


def count_macs(model: ir.Model) -> int | None:
    """Total MACs of the main graph, or None when some counted op has unknown shapes."""
    total = 0
    for node in model.graph:
        macs = node_macs(node)
        if macs is None:
            return None
        total += macs
    return total
