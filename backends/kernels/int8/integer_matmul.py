"""Dynamic quantization's integer matmuls on the int8 dot-product kernels.

onnxruntime's quantize_dynamic (MatMulInteger, DynamicQuantizeLSTM) quantizes each matmul's
input at run time, to 8 bits with a zero point computed from the values, and keeps 8-bit
weights. passes/decompose turns that into float: matmul(float(q) - float(z), c) with c the
constant centred weight, integers computed exactly in float32. That runs at the float
kernels' speed on 4-byte weights: ddddocr's LSTM read 4 MB of weights per step and its
8210-class output layer 34 MB, where onnxruntime reads a quarter.

Here such a matmul (a float32 matmul whose left operand is an 8-bit tensor less its 8-bit
zero point, converted to float32, and whose constant weight holds integers, at most 255
apart per column) runs as the packed int8 kernel of int8/compute with an int32 result: the
weight is stored as int8 (a column whose centred values leave int8's range is shifted by a
constant d, whose share d x sum_k (q - z) is added back), and the zero point's share
(compute.integer_matmul) comes off at run time. The result is the same integer the float
matmul computes, exact in int32 also where float32 sums would round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepress.backends.kernels.common.nhwc_rewriter import op_name, rewrite, static_shape
from edgepress.backends.kernels.common.relax_lowering import (
    Bindings,
    LayerLowering,
    NotLowered,
    constant,
)
from edgepress.backends.kernels.int8.compute import (
    integer_matmul,
    needs_pack,
    pack_activations,
    pack_weight,
    shift_zero_point,
)
from edgepress.backends.targets.description import DotLayout

EIGHT_BITS = ("uint8", "int8")
# |sum_k (q - z) c| <= K x 255 x 255 (and the correction terms as much again) within int32
MAX_DEPTH = (1 << 31) // (2 * 255 * 255)


@dataclass
class _Product:
    """One matmul(float(q) - float(z), c) with what the integer kernel needs."""

    q: object  # the 8-bit [..., M, K] operand
    zero_point: object | None  # its 8-bit scalar zero point (None: 0)
    weight: np.ndarray  # int8 [N, K]: c - shift
    shift: np.ndarray  # int32 [N]: d per column


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _eight_bit_operand(bindings: Bindings, expr) -> tuple[object, object | None]:
    """(q, z) where `expr` is float(q) - float(z) or float(q), q 8-bit and z its scalar."""
    difference = bindings.producer(expr, "relax.subtract")
    cast = bindings.producer(difference.args[0] if difference is not None else expr, "relax.astype")
    if cast is None or _dtype(cast.args[0]) not in EIGHT_BITS:
        raise NotLowered("its input is not an 8-bit tensor converted to float")
    q, zero_point = cast.args[0], None
    if difference is not None:
        zero_cast = bindings.producer(difference.args[1], "relax.astype")
        if zero_cast is None or _dtype(zero_cast.args[0]) != _dtype(q):
            raise NotLowered("its input's zero point is not of the input's 8-bit type")
        zero_point = zero_cast.args[0]
        if static_shape(zero_point) is None or int(np.prod(static_shape(zero_point))) != 1:
            raise NotLowered("its input's zero point is not one value")
    return q, zero_point


def _int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w8 [N, K] int8, d [N] int32) with weight [K, N] = w8.T + d: d = 0 where a column
    fits int8, else its minimum + 128."""
    if weight.dtype != np.float32 or weight.ndim != 2:
        raise NotLowered(f"its weight is {weight.dtype} of rank {weight.ndim}, not float32 [K, N]")
    if not np.all(np.isfinite(weight)) or not np.array_equal(weight, np.rint(weight)):
        raise NotLowered("its weight does not hold integers")
    low, high = weight.min(axis=0), weight.max(axis=0)
    if np.any(high - low > 255) or np.any(np.abs(weight) > 255):
        raise NotLowered("its weight's columns span more than 8 bits")
    fits = (low >= -128) & (high <= 127)
    shift = np.where(fits, 0, low + 128).astype(np.int32)
    w8 = (weight - shift[None, :]).T.astype(np.int8)
    return np.ascontiguousarray(w8), shift


def _product_of(bindings: Bindings, call) -> _Product:
    x, weight_expr = call.args
    out_dtype = call.attrs.out_dtype
    out_float = out_dtype is None or str(out_dtype) in ("", "void", "float32")
    if _dtype(x) != "float32" or not out_float:
        raise NotLowered("it is not a float32 matmul")
    q, zero_point = _eight_bit_operand(bindings, x)
    shape = static_shape(q)
    if shape is None or len(shape) < 2:
        raise NotLowered("its input is not of a static shape [..., M, K]")
    if shape[-1] > MAX_DEPTH:
        raise NotLowered(f"its depth {shape[-1]} could overflow int32 sums")
    weight, shift = _int8_columns(constant(weight_expr, "its weight"))
    return _Product(q, zero_point, weight, shift)


def _emit(builder, product: _Product, q, zero_point, layout: DotLayout):
    """The kernel's call on the (remapped) q and zero point: float32 [..., M, N]."""
    from tvm import relax

    *lead, depth = static_shape(q)
    rows = int(np.prod(lead))
    src = _dtype(q)
    pixels = builder.emit(relax.op.reshape(q, (1, 1, rows, depth)))
    if needs_pack(depth, (0, 0, 0, 0), src, layout.act_dtype):
        pixels = builder.emit(
            builder.call_te(
                pack_activations,
                pixels,
                padding=(0, 0, 0, 0),
                in_zero_point=0,  # the padded channels meet zero weights
                act_dtype=layout.act_dtype,
                primfunc_name_hint="pack_int8",
            )
        )
    offset = -shift_zero_point(0, src, layout.act_dtype)  # q = a + offset
    if zero_point is None:
        z = relax.const(np.zeros(1, np.int32))
    else:
        z = builder.emit(relax.op.reshape(relax.op.astype(zero_point, "int32"), (1,)))
    channels = product.weight.shape[0]
    terms = []
    if np.any(product.shift):
        q_rows = relax.op.reshape(relax.op.astype(q, "int32"), (rows, depth))
        sums = relax.op.sum(q_rows, axis=[1])
        zero_sums = relax.op.multiply(z, relax.const(depth, "int32"))
        centred = builder.emit(relax.op.subtract(sums, zero_sums))
        terms = [relax.const(product.shift), centred]
    call = builder.call_te(
        integer_matmul,
        pixels,
        relax.const(pack_weight(product.weight[:, :, None, None], layout.lanes)),
        z,
        relax.const(product.weight.astype(np.int32).sum(axis=1).astype(np.int32)),
        *terms,
        out_channels=channels,
        offset=offset,
        intrinsic=layout.intrinsic,
        pair_sums=layout.pair_sums,
        primfunc_name_hint="integer_matmul",
    )
    return relax.op.reshape(builder.emit(call), (*lead, channels))


def lower_integer_matmuls(mod, layout: DotLayout, names: dict | None = None):
    """Rewrite the module's `main`; returns (module, [LayerLowering] of the matmuls taken, the
    others being the float lowering's to list). Constants are not folded first: that would
    turn a QDQ model's int8 weights into float ones before int8/lowering reads them."""
    bindings = Bindings(mod["main"])
    products: dict = {}
    layers: list[LayerLowering] = []
    for var, value in bindings.value.items():
        if op_name(value) != "relax.matmul":
            continue
        try:
            products[var] = _product_of(bindings, value)
        except NotLowered:
            continue
        node = (names or {}).get(var.name)
        layers.append(LayerLowering(len(layers), "matmul", "integer", node=node))
    if not products:
        return mod, layers

    def lower(rewriter, binding) -> bool:
        product = products.get(binding.var)
        if product is None:
            return False
        q = rewriter.visit_expr(product.q)
        zero_point = None
        if product.zero_point is not None:
            zero_point = rewriter.visit_expr(product.zero_point)
        call = _emit(rewriter.builder_, product, q, zero_point, layout)
        rewriter.set_var_remap(binding.var, rewriter.emit_as(binding.var, call))
        return True

    return rewrite(mod, lower, layouts=False), layers
