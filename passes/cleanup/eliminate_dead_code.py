"""eliminate_dead_code: nodes whose outputs nobody reads, and initializers nobody reads."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.graph_stats import count_nodes
from edgepress.passes.registry import PassResult, register_pass


@register_pass("eliminate_dead_code")
def eliminate_dead_code(model: ir.Model) -> PassResult:
    """Remove nodes that feed no graph output and initializers no node reads.

    Counts nodes and initializers removed. Graph inputs stay (remove_unused_inputs drops them).
    """
    nodes = count_nodes(model)
    initializers = len(model.graph.initializers)
    common_passes.RemoveUnusedNodesPass()(model)
    return PassResult(
        model, (nodes - count_nodes(model)) + (initializers - len(model.graph.initializers))
    )
