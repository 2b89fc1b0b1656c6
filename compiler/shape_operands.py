"""Inputs that feed a shape: refused with the flag that fixes them.

An op whose operand is a shape (Reshape's shape, Expand's shape, Tile's repeats, Slice's starts,
Resize's sizes, ...) computed at run time from a graph input makes the output's shape depend on
that input's *values*. --input-shape fixes shapes, not values; TVM then builds a wrong or no
program (onnx's expand_shape test models: shape (3, 3, 1, 3) where (3, 3, 3, 3) was expected).
A deployment feeds such an input the same value every time: --input-value fixes it.
"""

from __future__ import annotations

import onnx_ir as ir

from edgepress.compiler.errors import UsageError, node_label

# op -> indices of its inputs that are shapes, axes, counts, bounds or positions (values TVM
# needs at build time)
SHAPE_OPERANDS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Resize": (2, 3),
    "Upsample": (1,), "Slice": (1, 2, 3, 4), "Pad": (1,), "TopK": (1,), "Unsqueeze": (1,),
    "Squeeze": (1,), "Split": (1,), "OneHot": (1,), "Range": (0, 1, 2), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    # positions in a sequence (TVM returned wrong elements for run-time ones)
    "SequenceAt": (1,), "SequenceInsert": (2,), "SequenceErase": (1,), "SplitToSequence": (1,),
}  # fmt: skip


# Ops whose output depends on their input's shape, not its values: a walk stops there.
SHAPE_ONLY = {"Shape", "Size"}


def _feeding_inputs(value: ir.Value, inputs: set[str]) -> list[str]:
    """The graph inputs whose values `value` is computed from (a walk up its producers that
    does not pass through Shape or Size: the input shapes are fixed)."""
    found, seen, stack = [], set(), [value]
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen or v.const_value is not None:
            continue
        seen.add(id(v))
        if v.name in inputs:
            found.append(v.name)
            continue
        producer = v.producer()
        if producer is not None and producer.op_type not in SHAPE_ONLY:
            stack.extend(producer.inputs)
    return sorted(set(found))


def check_shape_operands(model: ir.Model, source: str) -> None:
    """Raise UsageError naming every node whose shape operand comes from a graph input."""
    inputs = {v.name for v in model.graph.inputs if v.name not in model.graph.initializers}
    problems, names = [], set()
    for index, node in enumerate(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        for i in SHAPE_OPERANDS.get(node.op_type, ()):
            if i >= len(node.inputs) or node.inputs[i] is None:
                continue
            feeding = _feeding_inputs(node.inputs[i], inputs)
            if feeding:
                names.update(feeding)
                problems.append(f"{node_label(node, index)} input {i} from {', '.join(feeding)}")
    if problems:
        flags = " ".join(f"--input-value {n}=V1,V2,..." for n in sorted(names))
        raise UsageError(
            f"{source}: shapes computed at run time from input values: {'; '.join(problems)}. "
            f"--input-shape fixes shapes, not values; fix the value you deploy with: {flags}"
        )
