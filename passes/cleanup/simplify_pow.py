"""simplify_pow: Pow by a small constant exponent as the plain op it is.

    Pow(x, 1) => x;  Pow(x, 2) => x * x;  Pow(x, 3) => x * x * x;  Pow(x, 0.5) => Sqrt(x);
    Pow(x, -1) => Reciprocal(x)

PaddlePaddle's decomposed LayerNorm squares with Pow(x, 2). TVM's CUDA code computes pow through
exp and log, which is NaN for every negative x (seen on an H200: PaddleOCR recognizers returned
NaN); x * x is exact everywhere and cheaper on every target. Other exponents stay.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.constants import constant_array
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _exponent(node: ir.Node) -> float | None:
    array = constant_array(node.inputs[1])
    if array is None or array.size != 1:
        return None
    return float(array.reshape(-1)[0])


def why_not_simple(node: ir.Node) -> str | None:
    """None when this Pow is one of the rewritten forms, else why not."""
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.dtype not in FLOAT_TYPES:
        return "the base is not a float tensor"
    exponent = _exponent(node)
    if exponent not in (1.0, 2.0, 3.0, 0.5, -1.0):
        return f"exponent {exponent} is not a constant 1, 2, 3, 0.5 or -1"
    if x.shape is None or y.shape is None or tuple(x.shape) != tuple(y.shape):
        return "the exponent broadcasts the base to another shape"
    return None


@register_pass("simplify_pow")
def simplify_pow(model: ir.Model) -> PassResult:
    """Pow(x, c) for c in 1, 2, 3, 0.5, -1 => Identity, Mul, Mul Mul, Sqrt, Reciprocal."""
    rewritten = 0
    common_passes.ShapeInferencePass()(model)  # the broadcast check compares shapes
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Pow" or node.domain not in ("", "ai.onnx") or why_not_simple(node):
            continue
        x, exponent = node.inputs[0], _exponent(node)
        tape = ir.tape.Tape()
        if exponent == 1.0 and not node.outputs[0].is_graph_output():
            node.outputs[0].replace_all_uses_with(x)
            node.graph.remove(node, safe=True)
            rewritten += 1
            continue
        if exponent == 1.0:
            out = tape.op("Identity", [x])
        elif exponent == 0.5:
            out = tape.op("Sqrt", [x])
        elif exponent == -1.0:
            out = tape.op("Reciprocal", [x])
        else:
            out = tape.op("Mul", [x, x])
            if exponent == 3.0:
                out = tape.op("Mul", [out, x])
        replace_node(node, tape.nodes, [out])
        rewritten += 1
    return PassResult(model, rewritten)
