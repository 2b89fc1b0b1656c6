"""Dynamic quantization's integer matmuls and convs on the int8 dot-product kernels.

onnxruntime's quantize_dynamic (MatMulInteger, ConvInteger, DynamicQuantizeLSTM) quantizes
each layer's input at run time, to 8 bits with a zero point computed from the values, and
keeps 8-bit weights. passes/decompose turns that into float: matmul(float(q) - float(z), c)
and conv2d(float(q) - float(z), c) with c the constant centred weight, integers computed
exactly in float32. That runs at the float kernels' speed on 4-byte weights: ddddocr's LSTM
read 4 MB of weights per step and its 8210-class output layer 34 MB, where onnxruntime reads
a quarter; its 21 convs ran as float Winograd and direct convs.

Here such a layer (a float32 matmul or NCHW conv whose input is an 8-bit tensor less its
8-bit zero point, converted to float32, and whose constant weight holds integers, at most 255
apart per output channel) runs as the packed int8 kernel of int8/compute with an int32
result: the weight is stored as int8 (a channel whose centred values leave int8's range is
shifted by a constant d, whose share d x sum (q - z) over the window is added back: the
window sums), and the zero point's share (compute.integer_conv2d) comes off at run time. A
conv's input is packed NHWC with the run-time zero point in its padding, so padded pixels
add nothing, as in the float conv of the centred values. The result is the same integer the
float layer computes, exact in int32 also where float32 sums would round.
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
    integer_conv2d,
    needs_pack,
    pack_activations,
    pack_weight,
    shift_zero_point,
    window_sums,
)
from edgepress.backends.targets.description import DotLayout

EIGHT_BITS = ("uint8", "int8")
# |sum_k (q - z) c| <= K x 255 x 255 (and the correction terms as much again) within int32
MAX_DEPTH = (1 << 31) // (2 * 255 * 255)


@dataclass
class _Product:
    """One matmul or conv2d of float(q) - float(z) and c with what the integer kernel needs."""

    q: object  # the 8-bit [..., M, K] operand (NCHW for a conv)
    zero_point: object | None  # its 8-bit scalar zero point (None: 0)
    weight: np.ndarray  # int8 [N, K] (a conv's [O, I, KH, KW]): c - shift
    shift: np.ndarray  # int32 [N]: d per column (output channel)
    conv: dict | None = None  # a conv's strides, padding (top, left, bottom, right), dilation


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


def _float_result(call) -> bool:
    out_dtype = call.attrs.out_dtype
    return out_dtype is None or str(out_dtype) in ("", "void", "float32")


def _product_of(bindings: Bindings, call) -> _Product:
    x, weight_expr = call.args
    if _dtype(x) != "float32" or not _float_result(call):
        raise NotLowered("it is not a float32 matmul")
    q, zero_point = _eight_bit_operand(bindings, x)
    shape = static_shape(q)
    if shape is None or len(shape) < 2:
        raise NotLowered("its input is not of a static shape [..., M, K]")
    if shape[-1] > MAX_DEPTH:
        raise NotLowered(f"its depth {shape[-1]} could overflow int32 sums")
    weight, shift = _int8_columns(constant(weight_expr, "its weight"))
    return _Product(q, zero_point, weight, shift)


def _conv_of(bindings: Bindings, call) -> _Product:
    """A ConvInteger (lower_integer_ops' float conv of the centred integers): NCHW, OIHW
    weights, one group."""
    x, weight_expr = call.args
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW") or int(attrs.groups) != 1:
        raise NotLowered(f"it is a grouped or {'/'.join(layouts)} conv")
    if _dtype(x) != "float32" or not _float_result(call):
        raise NotLowered("it is not a float32 conv")
    q, zero_point = _eight_bit_operand(bindings, x)
    if static_shape(q) is None:
        raise NotLowered("its input's shape is not static")
    weight = constant(weight_expr, "its weight")
    if weight.ndim != 4:
        raise NotLowered(f"its weight is of rank {weight.ndim}, not OIHW")
    depth = int(np.prod(weight.shape[1:]))
    if depth > MAX_DEPTH:
        raise NotLowered(f"its depth {depth} could overflow int32 sums")
    columns, shift = _int8_columns(weight.reshape(weight.shape[0], depth).T)
    conv = {
        "strides": tuple(int(v) for v in attrs.strides),
        "padding": tuple(int(v) for v in attrs.padding),
        "dilation": tuple(int(v) for v in attrs.dilation),
    }
    return _Product(q, zero_point, columns.reshape(weight.shape), shift, conv)


PRODUCTS = {"relax.matmul": ("matmul", _product_of), "relax.nn.conv2d": ("conv2d", _conv_of)}


def _zero_point_operand(zero_point):
    """The kernel's zero point operand: the 8-bit value as it is (the kernel widens it), or
    an int32 0."""
    from tvm import relax

    return relax.const(np.zeros(1, np.int32)) if zero_point is None else zero_point


def _call_kernel(builder, product: _Product, pixels, z, terms, layout: DotLayout, **conv):
    """integer_conv2d's call on packed 8-bit NHWC `pixels`: float32 NHWC."""
    from tvm import relax

    weight = product.weight if product.conv else product.weight[:, :, None, None]
    return builder.emit(
        builder.call_te(
            integer_conv2d,
            pixels,
            relax.const(pack_weight(weight, layout.lanes)),
            z,
            relax.const(weight.astype(np.int32).sum(axis=(1, 2, 3)).astype(np.int32)),
            *terms,
            **conv,
            out_channels=weight.shape[0],
            offset=-shift_zero_point(0, _dtype(product.q), layout.act_dtype),  # q = a + offset
            intrinsic=layout.intrinsic,
            pair_sums=layout.pair_sums,
            primfunc_name_hint="integer_conv2d" if product.conv else "integer_matmul",
        )
    )


def _emit(builder, product: _Product, q, zero_point, layout: DotLayout):
    """The matmul's kernel call on the (remapped) q and zero point: float32 [..., M, N]."""
    from tvm import relax

    *lead, depth = static_shape(q)
    rows = int(np.prod(lead))
    pixels = builder.emit(relax.op.reshape(q, (1, 1, rows, depth)))
    if needs_pack(depth, (0, 0, 0, 0), _dtype(q), layout.act_dtype):
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
    z = _zero_point_operand(zero_point)
    terms = []
    if np.any(product.shift):
        q_rows = relax.op.reshape(relax.op.astype(q, "int32"), (1, 1, rows, depth))
        sums = relax.op.sum(q_rows, axis=[3])
        zero_sums = relax.op.multiply(relax.op.astype(z, "int32"), relax.const(depth, "int32"))
        terms = [relax.const(product.shift), builder.emit(relax.op.subtract(sums, zero_sums))]
    call = _call_kernel(builder, product, pixels, z, terms, layout)
    return relax.op.reshape(call, (*lead, product.weight.shape[0]))


def _emit_conv(rewriter, product: _Product, q, zero_point, layout: DotLayout):
    """The conv's kernel calls on the (remapped) NCHW q, as the kernels have it (NHWC): the
    input packed with its run-time zero point around it, and the window sums where a shift
    needs them. Returns the NHWC float32 result."""
    from tvm import relax

    builder = rewriter.builder_
    x = rewriter.to_nhwc(q)
    channels = static_shape(x)[3]
    padding = product.conv["padding"]
    src = _dtype(q)
    z = _zero_point_operand(zero_point)
    pixels = x
    if needs_pack(channels, padding, src, layout.act_dtype):
        pixels = builder.emit(
            builder.call_te(
                pack_activations,
                x,
                *([] if zero_point is None else [zero_point]),
                padding=padding,
                in_zero_point=shift_zero_point(0, src, layout.act_dtype),
                act_dtype=layout.act_dtype,
                primfunc_name_hint="pack_int8",
            )
        )
    terms = []
    if np.any(product.shift):
        sums = builder.call_te(
            window_sums,
            x,
            z,
            kernel=product.weight.shape[2:],
            strides=product.conv["strides"],
            padding=padding,
            dilation=product.conv["dilation"],
            primfunc_name_hint="window_sums",
        )
        terms = [relax.const(product.shift), builder.emit(sums)]
    conv = {k: product.conv[k] for k in ("strides", "dilation")}
    return _call_kernel(builder, product, pixels, z, terms, layout, **conv)


def lower_integer_matmuls(mod, layout: DotLayout, names: dict | None = None):
    """Rewrite the module's `main`; returns (module, [LayerLowering] of the matmuls taken, the
    others being the float lowering's to list). Constants are not folded first: that would
    turn a QDQ model's int8 weights into float ones before int8/lowering reads them."""
    bindings = Bindings(mod["main"])
    products: dict = {}
    layers: list[LayerLowering] = []
    for var, value in bindings.value.items():
        kind, product_of = PRODUCTS.get(op_name(value), (None, None))
        if product_of is None:
            continue
        try:
            products[var] = product_of(bindings, value)
        except NotLowered:
            continue
        node = (names or {}).get(var.name)
        layers.append(LayerLowering(len(layers), kind, "integer", node=node))
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
        if product.conv:
            rewriter.bind(binding.var, _emit_conv(rewriter, product, q, zero_point, layout))
            return True
        call = _emit(rewriter.builder_, product, q, zero_point, layout)
        rewriter.set_var_remap(binding.var, rewriter.emit_as(binding.var, call))
        return True

    return rewrite(mod, lower, layouts=False), layers
