"""remove_unused_inputs: graph inputs that no node and no output reads.

Exporters keep inputs a traced branch never used; a caller of the compiled artifact would have
to feed them for nothing. The artifact's manifest lists the inputs that remain.
"""

from __future__ import annotations

import onnx_ir as ir

from edgepress.passes.registry import PassResult, register_pass


@register_pass("remove_unused_inputs")
def remove_unused_inputs(model: ir.Model) -> PassResult:
    """Drop graph inputs with no use (initializers listed as inputs included).

    Keeps an input that is also a graph output.
    """
    graph = model.graph
    outputs = set(map(id, graph.outputs))
    unused = [v for v in graph.inputs if not v.uses() and id(v) not in outputs]
    for value in unused:
        graph.inputs.remove(value)
        if value.name in graph.initializers:
            graph.initializers.pop(value.name)
    return PassResult(model, len(unused))
