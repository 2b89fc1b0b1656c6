"""Counts over an onnx_ir model (nodes in every subgraph, parameter bytes) for pass reports."""

from __future__ import annotations

import onnx_ir as ir


def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph and in every subgraph (If/Loop bodies)."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def parameter_bytes(model: ir.Model) -> int:
    """Bytes held by initializers and Constant nodes' tensors."""
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain == "":
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                total += attr.as_tensor().nbytes
    return total
