"""lower_integer_ops: ConvInteger and MatMulInteger (onnxruntime's dynamic quantization writes
them, after DynamicQuantizeLinear) as the float Conv and MatMul of the centred integers.

    ConvInteger(x, w, xz, wz)   =>  Cast(Conv(float(x) - float(xz), float(w - wz)), int32)
    MatMulInteger(a, b, az, bz) =>  Cast(MatMul(float(a) - float(az), float(b - bz)), int32)

(a Cast of that int32 back to float reads the float product directly: _skip_round_trip; so
does an integer bias add between the two Casts, in float: _bias_adds_in_float).

The integers are exact in float32: an 8-bit value less its zero point fits in 9 bits, a product
in 17, and a sum stays exact below 2^24 (256 products at the extremes, far more in practice).
The result is the int32 the op defines, so the Cast-and-scale after it stays as it is; and the
layer runs through the backend's float kernels. Needs a constant weight (and weight zero
point); anything else stays, with its reason in the log.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node

log = logging.getLogger(__name__)

OPS = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}


def _centred_weight(node: ir.Node) -> np.ndarray:
    """float32 (w - w_zero_point), with a per-output-channel zero point broadcast."""
    weight = node.inputs[1]
    if weight is None or weight.const_value is None:
        raise ValueError("its weight is not a constant")
    w = np.asarray(weight.const_value.numpy()).astype(np.float32)
    zero = node.inputs[3] if len(node.inputs) > 3 else None
    if zero is None:
        return w
    if zero.const_value is None:
        raise ValueError("its weight zero point is not a constant")
    z = np.asarray(zero.const_value.numpy()).astype(np.float32)
    if z.size == 1:
        return w - z.reshape(())
    if node.op_type == "ConvInteger":  # per output channel: axis 0 of OIHW
        return w - z.reshape(-1, *([1] * (w.ndim - 1)))
    return w - z.reshape(*([1] * (w.ndim - 1)), -1)  # per column of [.., K, N]


def why_not_lowerable(node: ir.Node) -> str | None:
    try:
        _centred_weight(node)
    except ValueError as err:
        return str(err)
    return None


def _float_casts(value: ir.Value) -> list[ir.Node]:
    """The Casts to float32 that read `value` (onnxruntime's quantize_dynamic puts one after
    each ConvInteger and MatMulInteger, before the scale), graph outputs aside."""
    return [
        user
        for user, _ in value.uses()
        if user.op_type == "Cast"
        and user.domain in ("", "ai.onnx")
        and user.attributes.get_int("to") == ir.DataType.FLOAT
        and not user.outputs[0].is_graph_output()
    ]


def _skip_round_trip(result: ir.Value, product: ir.Value, float_casts: list[ir.Node]) -> None:
    """Readers of Cast(Cast(product, int32), float) read `product` itself: it holds integers
    exact in float32, so the round trip is the identity. Lowered, the float -> int32 Cast is a
    chain of tests (finite, wrap-around modulo 2^32) around each conv's output, which no
    schedule could take as one vectorized epilogue: ddddocr's convs ran their epilogues as plain
    loops on one thread."""
    for cast in float_casts:
        cast.outputs[0].replace_all_uses_with(product)
        cast.graph.remove(cast, safe=True)
    if not result.uses() and not result.is_graph_output():
        result.producer().graph.remove(result.producer(), safe=True)


ROUNDING_OPS = ("Floor", "Ceil", "Round")


def _integral_float(value: ir.Value | None, tape: ir.tape.Tape) -> ir.Value | None:
    """A float32 value holding the integers of the int32 `value`, where the graph has one:
    Cast(Floor(f), int32) is f's Floor (a bias that older onnxruntime quantize_dynamic divides
    by the two scales at run time), through a Reshape; else None."""
    if value is None or value.producer() is None:
        return None
    node = value.producer()
    if node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
        inner = _integral_float(node.inputs[0], tape)
        if inner is None:
            return None
        attributes = {k: v for k, v in node.attributes.items()} or None
        reshaped = tape.op("Reshape", [inner, node.inputs[1]], attributes)
        reshaped.shape, reshaped.dtype = value.shape, ir.DataType.FLOAT
        return reshaped
    if node.op_type == "Cast" and node.attributes.get_int("to") == ir.DataType.INT32:
        source = node.inputs[0]
        rounding = source.producer() if source is not None else None
        if rounding is not None and rounding.op_type in ROUNDING_OPS:
            return source
    return None


def _bias_adds_in_float(result: ir.Value, product: ir.Value) -> None:
    """Cast(Add(Cast(product, int32), Cast(Floor(b), int32)), float), the integer bias add of
    older quantize_dynamic, as Add(product, Floor(b)) in float: the same integers, exact below
    2^24 (a bias is far below that, its quantization step being the product of the scales)."""
    for add, _ in list(result.uses()):
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        casts = _float_casts(add.outputs[0])
        if not casts or len(casts) != len(add.outputs[0].uses()):
            continue
        other = add.inputs[1] if add.inputs[0] is result else add.inputs[0]
        tape = ir.tape.Tape()
        bias = _integral_float(other, tape)
        if bias is None:
            continue
        total = tape.op("Add", [product, bias])
        total.shape, total.dtype = add.outputs[0].shape, ir.DataType.FLOAT
        add.graph.insert_before(add, list(tape.nodes))
        for cast in casts:
            cast.outputs[0].replace_all_uses_with(total)
            cast.graph.remove(cast, safe=True)
        add.graph.remove(add, safe=True)


@register_pass("lower_integer_ops")
def lower_integer_ops(model: ir.Model) -> PassResult:
    """ConvInteger / MatMulInteger with constant weights => float Conv / MatMul, Cast to int32."""
    changes = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type not in OPS or node.domain not in ("", "ai.onnx"):
            continue
        if reason := why_not_lowerable(node):
            log.info("keep %s '%s': %s", node.op_type, node.name, reason)
            continue
        tape = ir.tape.Tape()
        x = tape.op("Cast", [node.inputs[0]], {"to": ir.DataType.FLOAT})
        x_zero = node.inputs[2] if len(node.inputs) > 2 else None
        if x_zero is not None:
            x = tape.op("Sub", [x, tape.op("Cast", [x_zero], {"to": ir.DataType.FLOAT})])
        name = node.name or node.op_type
        weight = add_initializer(model.graph, f"{name}_weight", _centred_weight(node))
        attributes = {k: v for k, v in node.attributes.items()} if node.op_type == "ConvInteger" else {}
        product = tape.op(OPS[node.op_type], [x, weight], attributes or None)
        result = tape.op("Cast", [product], {"to": ir.DataType.INT32})
        float_casts = _float_casts(node.outputs[0])
        replace_node(node, tape.nodes, [result])
        product.shape, product.dtype = result.shape, ir.DataType.FLOAT
        _bias_adds_in_float(result, product)
        _skip_round_trip(result, product, float_casts)
        changes += 1
    return PassResult(model, changes)
