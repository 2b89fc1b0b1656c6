"""one_hot_matmul_as_gather: an embedding written as a one-hot matrix product, as a lookup.

    MatMul(Cast(Equal(i[..., 1], arange(V)[1, ..., V]), float), W[V, D])
        => Reshape(Gather(W_0[V + 1, D], Where(0 <= i < V, i, V)), [0, ..., 0, D])

jax.nn.one_hot and Keras' one-hot encodings followed by a dense layer export so (magika:
2048 bytes one-hot over 257 classes, then a [257, 64] matrix: 67 MFLOP, 0.6 ms of its 8 on
one thread, for what is a copy of 2048 rows). Each one-hot row holds one 1 (or none, for an
index outside the classes), so its product with W is W's row, exactly: the lookup reads that
row, and an index outside [0, V) reads the zero row W_0 appends.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
INDEX_TYPES = frozenset({ir.DataType.INT32, ir.DataType.INT64})


def _only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    """The one node reading `value`, if it is an `op_type` of the default domain and the
    value is no graph output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0].node
    return node if node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _classes(equal: ir.Node) -> tuple[ir.Value, int] | None:
    """(the index operand, V) where `equal` compares an integer tensor whose last axis is 1
    with the constant arange(V) along a last axis (all others 1), in either order."""
    for index, classes in (equal.inputs, reversed(equal.inputs)):
        values = constant_array(classes)
        if values is None or index is None or constant_array(index) is not None:
            continue
        if index.dtype not in INDEX_TYPES or index.shape is None or len(index.shape) < 1:
            continue
        if index.shape[-1] != 1 or values.ndim > len(index.shape) or values.ndim < 1:
            continue
        if any(d != 1 for d in values.shape[:-1]):
            continue
        count = values.shape[-1]
        if np.array_equal(values.reshape(-1), np.arange(count)):
            return index, count
    return None


def _plan(equal: ir.Node):
    """(index, V, cast, matmul, W) for an Equal that starts the pattern, else None."""
    if equal.op_type != "Equal" or equal.domain not in ("", "ai.onnx"):
        return None
    found = _classes(equal)
    if found is None:
        return None
    index, count = found
    cast = _only_use(equal.outputs[0], "Cast")
    if cast is None or cast.outputs[0].dtype not in FLOAT_TYPES:
        return None
    matmul = _only_use(cast.outputs[0], "MatMul")
    if matmul is None or matmul.inputs[0] is not cast.outputs[0]:
        return None
    weight = constant_array(matmul.inputs[1])
    if weight is None or weight.ndim != 2 or weight.shape[0] != count:
        return None
    if matmul.inputs[1].dtype != cast.outputs[0].dtype:
        return None
    return index, count, matmul, weight


@register_pass("one_hot_matmul_as_gather")
def one_hot_matmul_as_gather(model: ir.Model) -> PassResult:
    """One-hot encodings times a constant matrix, as Gathers of the matrix's rows.

    Each Equal with arange and Cast read only by a MatMul with a constant [V, D] matrix."""
    graph = model.graph
    rewritten = 0
    for node in list(graph):
        planned = _plan(node)
        if planned is None:
            continue
        index, count, matmul, weight = planned
        base = matmul.name or "one_hot"
        padded = np.concatenate([weight, np.zeros((1, weight.shape[1]), weight.dtype)])
        table = add_initializer(graph, f"{base}_rows", padded)
        dtype = index.dtype.numpy()
        zero = add_initializer(graph, f"{base}_zero", np.array(0, dtype))
        past = add_initializer(graph, f"{base}_classes", np.array(count, dtype))
        rank = len(index.shape)
        shape = add_initializer(
            graph, f"{base}_shape", np.array([0] * (rank - 1) + [weight.shape[1]], np.int64)
        )
        tape = ir.tape.Tape()
        below = tape.op("Less", [index, zero])
        beyond = tape.op("Not", [tape.op("Less", [index, past])])
        outside = tape.op("Or", [below, beyond])
        rows = tape.op("Where", [outside, past, index])
        gathered = tape.op("Gather", [table, rows], attributes={"axis": 0})
        out = tape.op("Reshape", [gathered, shape])
        replace_node(matmul, tape.nodes, [out])
        out.producer().name = matmul.name
        rewritten += 1
    if rewritten:  # the Equal and Cast nothing reads now
        common_passes.RemoveUnusedNodesPass()(model)
    return PassResult(model, rewritten)
