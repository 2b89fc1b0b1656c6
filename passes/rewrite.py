"""Applying onnxscript rewrite rules inside a registered pass: the count, then dead-node cleanup.

onnxscript's matcher replaces a pattern only when none of its intermediate values has a use
outside the pattern (or is a graph output), so a chain whose middle feeds another node is left
as it is. Rules run to a fixed point: a rewrite can expose another match.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern

MAX_ROUNDS = 8


def apply_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule]) -> int:
    """Apply `rules` until none matches; returns how many rewrites were made."""
    rule_set = pattern.RewriteRuleSet(list(rules), commute=True)
    total = 0
    for _ in range(MAX_ROUNDS):
        count = rule_set.apply_to_model(model)
        total += count
        if count == 0:
            break
    if total:
        common_passes.RemoveUnusedNodesPass()(model)
    return total


def onnx_opset(model: ir.Model) -> int:
    """The model's default-domain opset version."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def replace_node(node: ir.Node, new_nodes: Sequence[ir.Node], outputs: Sequence) -> None:
    """Put `new_nodes` where `node` stands and let `outputs[i]` take the place of its output i
    (None: that output is unused); a graph output keeps its name."""
    graph = node.graph
    graph.insert_before(node, list(new_nodes))
    for old, new in zip(node.outputs, outputs):
        if new is None:
            continue
        new.shape, new.type = old.shape, old.type
        keep_name = old.name if old.is_graph_output() else None
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        if keep_name is not None:
            old.name = None
            new.name = keep_name
    graph.remove(node, safe=True)
