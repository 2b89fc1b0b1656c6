"""sum_as_add: Sum of two or more tensors as the Adds it is.

    Sum(a, b) => Add(a, b);  Sum(a, b, c) => Add(Add(a, b), c);  Sum(a) => Identity(a)

Caffe2-era exports (the ONNX zoo's ResNet-50, DenseNet, Inception) write residual joins as Sum.
Nothing downstream knows Sum: the int8 quantizer leaves it float (a float join between 8-bit
branches), and the NHWC kernels' residual add does not see it, so the layout goes back to NCHW
around every join (a zoo ResNet-50's int8 artifact spent half its time in those transposes).
Add has the same multidirectional broadcasting and the same float sums in that order.
"""

from __future__ import annotations

import onnx_ir as ir

from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node


@register_pass("sum_as_add")
def sum_as_add(model: ir.Model) -> PassResult:
    """Every Sum (in subgraphs too) as a chain of Adds (or an Identity)."""
    rewritten = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Sum" or node.domain not in ("", "ai.onnx"):
            continue
        inputs = list(node.inputs)
        if not inputs or any(i is None for i in inputs):
            continue
        tape = ir.tape.Tape()
        out = tape.op("Identity", [inputs[0]]) if len(inputs) == 1 else inputs[0]
        for other in inputs[1:]:
            out = tape.op("Add", [out, other])
        replace_node(node, tape.nodes, [out])
        rewritten += 1
    return PassResult(model, rewritten)
