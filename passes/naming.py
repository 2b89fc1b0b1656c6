"""New names for values a pass creates: the one place names are made, never by gluing suffixes
onto names in the hope they are free."""

from __future__ import annotations

import onnx_ir as ir


def fresh_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_1`, `base_2`, ...: the first not used by a value of the graph."""
    taken = {v.name for v in graph.initializers.values()} | {v.name for v in graph.inputs}
    for node in graph:
        taken.update(v.name for v in node.outputs)
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def add_initializer(graph: ir.Graph, base: str, array) -> ir.Value:
    """A new initializer holding `array`, under a fresh name derived from `base`."""
    value = ir.Value(name=fresh_name(graph, base), const_value=ir.tensor(array))
    value.shape = value.const_value.shape
    value.type = ir.TensorType(value.const_value.dtype)
    graph.register_initializer(value)
    return value
