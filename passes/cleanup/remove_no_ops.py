"""remove_no_ops: operators that pass their input through, and pairs that cancel.

Identity; Dropout at inference (training_mode absent or constant false, mask unused); Cast to
the input's own type; Reshape, Expand and Slice (positive steps) to the input's own static
shape; Transpose with the identity permutation. Pairs: Transpose -> Transpose (composed;
dropped when the composition is the identity), Cast -> Cast (the first dropped when it cannot
change values), Reshape -> Reshape (the first dropped). Each becomes an Identity, then
onnx-ir's IdentityEliminationPass removes the Identities (keeping graph output names).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    cast_cast_rule,
    no_op_cast_rule,
    no_op_expand_rule,
    no_op_transpose_rule,
    reshape_reshape_rule,
    transpose_transpose_rule,
)

from edgepress.passes.graph_stats import count_nodes
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules

log = logging.getLogger(__name__)


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def why_not_no_op_dropout(node: ir.Node) -> str | None:
    """None when this Dropout passes its input through at inference, else why not."""
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return "its mask output is used"
    if len(node.outputs) > 1 and node.outputs[1].is_graph_output():
        return "its mask output is a graph output"
    if node.attributes.get_int("is_test", 1) == 0:  # opset < 7
        return "is_test is 0 (training)"
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = node.inputs[2].const_value
        if mode is None:
            return "training_mode is not a constant"
        if bool(np.asarray(mode.numpy()).item()):
            return "training_mode is true"
    return None


def _keeps_shape(x: ir.Value, y: ir.Value, verb: str) -> pattern.MatchResult:
    """A match where y has x's own static shape (the no-op Reshape's and Slice's test)."""
    result = pattern.MatchResult()
    before, after = _static_shape(x), _static_shape(y)
    if before is None or after is None:
        return result.fail("input or output shape is not static")
    if before != after:
        return result.fail(f"{verb} {before} to {after}")
    return result


class NoOpReshape(pattern.RewriteRuleClassBase):
    """Reshape(x, shape) whose output has x's own static shape => Identity(x)."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, shape, y, **_) -> pattern.MatchResult:
        return _keeps_shape(x, y, "reshapes")

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class NoOpSlice(pattern.RewriteRuleClassBase):
    """Slice(x, starts, ends[, axes[, steps]]) whose output has x's own static shape, with
    constant positive steps => Identity(x): it takes every element in order (tf2onnx writes a
    Keras strided slice with masked bounds around every Conv1D)."""

    def pattern(self, op, x, starts, ends):
        return op.Slice(x, starts, ends, _allow_other_inputs=True, _outputs=["y"])

    def check(self, context, x, starts, ends, y, **_) -> pattern.MatchResult:
        result = _keeps_shape(x, y, "slices")
        if not result:
            return result
        node = y.producer()
        steps = node.inputs[4] if len(node.inputs) > 4 else None
        if steps is not None:
            known = steps.const_value
            if known is None:
                return result.fail("its steps are not constant")
            if (np.asarray(known.numpy()) <= 0).any():
                return result.fail("a negative step reverses an axis")
        return result

    def rewrite(self, op, x, **_):
        return op.Identity(x)


RULES = [
    NoOpSlice.rule(),
    no_op_cast_rule,
    no_op_expand_rule,
    no_op_transpose_rule,
    NoOpReshape.rule(),
    transpose_transpose_rule,
    cast_cast_rule,
    reshape_reshape_rule,
]


def _dropouts_to_identity(graph: ir.Graph) -> None:
    for node in list(graph):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
            continue
        if reason := why_not_no_op_dropout(node):
            log.debug("keep Dropout %s: %s", node.name, reason)
            continue
        old = node.outputs[0]
        identity = ir.node("Identity", [node.inputs[0]], name=node.name)
        new = identity.outputs[0]
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        graph.insert_after(node, identity)
        graph.remove(node, safe=True)
        new.name, new.shape, new.type = old.name, old.shape, old.type


def _merge_shape(x: ir.Value, y: ir.Value) -> None:
    if x.shape is None or (y.shape is not None and _static_shape(x) is None and _static_shape(y)):
        x.shape = y.shape
    if x.type is None:
        x.type = y.type


def _eliminate_identities(model: ir.Model) -> None:
    """y = Identity(x) => uses of y read x, in every graph and subgraph.

    Where y is its graph's output, x takes y's place (and name) only if a node of that same
    graph makes x and x is no output already; else the Identity stays. onnx-ir's
    IdentityEliminationPass also moves x into a subgraph's outputs when x comes from the outer
    graph, leaving an output no node of the subgraph makes (an If branch ending in
    Identity(outer value): seen on a real voice detector).
    """
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.inputs) != 1 or len(node.outputs) != 1 or node.inputs[0] is None:
            continue
        x, y = node.inputs[0], node.outputs[0]
        output = y.is_graph_output()
        if output:
            producer = x.producer()
            if producer is None or producer.graph is not node.graph or x.is_graph_output():
                continue
        _merge_shape(x, y)
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
        if output:
            x.name = y.name
        node.graph.remove(node, safe=True)


@register_pass("remove_no_ops")
def remove_no_ops(model: ir.Model) -> PassResult:
    """Remove Identity, inference Dropout, no-op Cast/Reshape/Expand/Transpose/Slice, pairs.

    Counts nodes removed.
    """
    before = count_nodes(model)
    # The no-op checks compare types and static shapes, which exporters rarely annotate.
    common_passes.ShapeInferencePass()(model)
    _dropouts_to_identity(model.graph)
    apply_rules(model, RULES)
    _eliminate_identities(model)
    common_passes.RemoveUnusedNodesPass()(model)
    return PassResult(model, before - count_nodes(model))
