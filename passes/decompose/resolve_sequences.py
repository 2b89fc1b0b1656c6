"""resolve_sequences: ONNX sequences whose length and positions are known at build time, as
the tensors they hold.

SequenceConstruct / SequenceEmpty / SequenceInsert / SequenceErase build a list of values;
SequenceAt picks one, SequenceLength counts them, ConcatFromSequence concatenates them and
SplitToSequence cuts a tensor of static shape into them. With constant positions all of it is
bookkeeping done here: what remains is Concat, Slice and Reshape on tensors. TVM's sequence
support returned wrong values (onnx's sequence_model3: insert, erase, at) or failed to import
(split_to_sequence with a length). A graph where any sequence escapes this (a run-time position,
a sequence input or output, a sequence crossing into a subgraph) is left as it is.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass

log = logging.getLogger(__name__)

SEQUENCE_OPS = {
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
    "SequenceLength", "ConcatFromSequence", "SplitToSequence",
}  # fmt: skip


class _Unresolved(Exception):
    """Why a sequence cannot be resolved statically."""


def _position(node: ir.Node, index: int, length: int, default: int) -> int:
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        return default
    array = constant_array(value)
    if array is None or array.size != 1:
        raise _Unresolved(f"{node.op_type} '{node.name}': its position is not a constant")
    position = int(array.reshape(-1)[0])
    return position + length if position < 0 else position


def _static_shape(value: ir.Value) -> tuple[int, ...]:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        raise _Unresolved(f"'{value.name}' has no static shape")
    return tuple(value.shape)


class _Resolver:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.tape = ir.tape.Tape()
        self.sequences: dict[int, list[ir.Value]] = {}  # id(sequence value) -> its elements
        self.replaced: list[tuple[ir.Node, ir.Value]] = []  # (node, value taking its output)

    def const(self, array, what: str) -> ir.Value:
        return add_initializer(self.model.graph, what, np.asarray(array))

    def reshape(self, x: ir.Value, shape: tuple[int, ...]) -> ir.Value:
        out = self.tape.op("Reshape", [x, self.const(np.array(shape, np.int64), "shape")])
        out.shape, out.type = ir.Shape(shape), x.type
        return out

    def elements(self, value: ir.Value) -> list[ir.Value]:
        if id(value) not in self.sequences:
            raise _Unresolved(f"sequence '{value.name}' does not come from a resolvable op")
        return self.sequences[id(value)]

    def visit(self, node: ir.Node) -> None:
        op, out = node.op_type, node.outputs[0]
        if op == "SequenceConstruct":
            self.sequences[id(out)] = list(node.inputs)
        elif op == "SequenceEmpty":
            self.sequences[id(out)] = []
        elif op == "SequenceInsert":
            items = list(self.elements(node.inputs[0]))
            items.insert(_position(node, 2, len(items), len(items)), node.inputs[1])
            self.sequences[id(out)] = items
        elif op == "SequenceErase":
            items = list(self.elements(node.inputs[0]))
            position = _position(node, 1, len(items), len(items) - 1)
            if not 0 <= position < len(items):
                raise _Unresolved(f"SequenceErase '{node.name}': position out of range")
            del items[position]
            self.sequences[id(out)] = items
        elif op == "SequenceAt":
            items = self.elements(node.inputs[0])
            position = _position(node, 1, len(items), 0)
            if not 0 <= position < len(items):
                raise _Unresolved(f"SequenceAt '{node.name}': position out of range")
            self.replaced.append((node, items[position]))
        elif op == "SequenceLength":
            length = self.const(np.array(len(self.elements(node.inputs[0])), np.int64), "length")
            self.replaced.append((node, length))
        elif op == "ConcatFromSequence":
            self.replaced.append((node, self.concat(node)))
        elif op == "SplitToSequence":
            self.sequences[id(out)] = self.split(node)

    def concat(self, node: ir.Node) -> ir.Value:
        items = self.elements(node.inputs[0])
        if not items:
            raise _Unresolved(f"ConcatFromSequence '{node.name}' of an empty sequence")
        axis = node.attributes.get_int("axis", 0)
        if node.attributes.get_int("new_axis", 0):
            shape = _static_shape(items[0])
            axis = axis + len(shape) + 1 if axis < 0 else axis
            new = shape[:axis] + (1,) + shape[axis:]
            items = [self.reshape(v, new) for v in items]
        out = self.tape.op("Concat", items, {"axis": axis})
        out.type = items[0].type
        return out

    def split(self, node: ir.Node) -> list[ir.Value]:
        x = node.inputs[0]
        shape = _static_shape(x)
        axis = node.attributes.get_int("axis", 0)
        axis = axis + len(shape) if axis < 0 else axis
        keepdims = node.attributes.get_int("keepdims", 1)
        split = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        if len(node.inputs) > 1 and node.inputs[1] is not None and split is None:
            raise _Unresolved(f"SplitToSequence '{node.name}': split is not a constant")
        if split is None:
            sizes = [1] * shape[axis]
        elif split.ndim == 0:
            chunk = int(split)
            sizes = [min(chunk, shape[axis] - s) for s in range(0, shape[axis], chunk)]
        else:
            sizes = [int(v) for v in split]
        items, start = [], 0
        for size in sizes:
            piece = self.tape.op("Slice", [
                x,
                self.const(np.array([start], np.int64), "starts"),
                self.const(np.array([start + size], np.int64), "ends"),
                self.const(np.array([axis], np.int64), "axes"),
            ])  # fmt: skip
            piece.shape, piece.type = ir.Shape(shape[:axis] + (size,) + shape[axis + 1 :]), x.type
            if split is None and not keepdims:
                piece = self.reshape(piece, shape[:axis] + shape[axis + 1 :])
            items.append(piece)
            start += size
        return items


@register_pass("resolve_sequences")
def resolve_sequences(model: ir.Model) -> PassResult:
    """Sequence ops with constant positions => Concat / Slice / Reshape on the tensors held.

    All or nothing: one sequence that cannot be resolved leaves every sequence op in place.
    """
    nodes = [n for n in model.graph if n.op_type in SEQUENCE_OPS and n.domain in ("", "ai.onnx")]
    if not nodes:
        return PassResult(model, 0)
    # No shape inference here: onnx-ir's pass gives sequence values tensor types, which the
    # checker then rejects where a sequence stays; fold_constants has inferred the shapes.
    resolver = _Resolver(model)
    made: list[tuple[ir.Node, list[ir.Node]]] = []  # each node's new ops, put right before it
    try:
        for node in nodes:
            start = len(resolver.tape.nodes)
            resolver.visit(node)
            made.append((node, list(resolver.tape.nodes)[start:]))
        for node in nodes:
            out = node.outputs[0]
            if node.op_type in ("SequenceAt", "SequenceLength", "ConcatFromSequence"):
                continue
            outside = [u for u in out.uses() if u.node.op_type not in SEQUENCE_OPS
                       or u.node.graph is not model.graph]  # fmt: skip
            if out.is_graph_output() or outside:
                raise _Unresolved(f"sequence '{out.name}' is used outside sequence ops")
    except _Unresolved as why:
        log.info("keep the sequence ops: %s", why)
        ir.passes.common.RemoveUnusedNodesPass()(model)  # the constants made on the way
        return PassResult(model, 0)
    graph = model.graph
    for node, new in made:
        if new:
            graph.insert_before(node, new)
    for node, value in resolver.replaced:
        old = node.outputs[0]
        if old.is_graph_output():  # the output keeps its name, on a node of its own
            identity = ir.node("Identity", [value])
            identity.outputs[0].shape, identity.outputs[0].type = old.shape, old.type
            graph.insert_before(node, identity)
            name = old.name
            old.replace_all_uses_with(identity.outputs[0], replace_graph_outputs=True)
            old.name = None
            identity.outputs[0].name = name
        else:
            old.replace_all_uses_with(value)
    for node in reversed(nodes):
        graph.remove(node, safe=False)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    return PassResult(model, len(nodes))
