"""DynamicQuantizeLinear as one kernel: the input's range, the scale and zero point it gives,
and the 8-bit values, in one call.

onnxruntime's dynamic quantization (ConvInteger, MatMulInteger, DynamicQuantizeLSTM)
quantizes each layer's input at run time. TVM's importer writes that as twelve Relax ops (a
max, a min, their clamps to 0, the scale, the zero point's divide, clip, round and cast, then
quantize), which ran as six kernels with their allocations: per conv, and per step of an
unrolled LSTM (ddddocr's: 64 steps, 2,575 VM calls in all). Here they are one PrimFunc of the
same arithmetic, so the results are the same bits.
"""

from __future__ import annotations

import numpy as np

from edgepress.backends.kernels.common.nhwc_compute import full_reduce
from edgepress.backends.kernels.common.nhwc_rewriter import op_name, static_shape
from edgepress.backends.kernels.common.nhwc_schedules import MEAN_VECTOR


def _number(expr) -> float | None:
    """The one number a Relax constant or a clip bound (an IntImm or FloatImm) holds, else
    None."""
    value = getattr(expr, "value", None)
    if hasattr(value, "numpy"):
        array = value.numpy()
        return float(array) if array.size == 1 else None
    return float(value) if isinstance(value, int | float) else None


def _call(original: dict, expr, op: str, *, first: float | None = None):
    """The call of `op` bound to `expr` (whose first argument is the constant `first`, where
    given), else None."""
    value = original.get(expr)
    if value is None or op_name(value) != op:
        return None
    if first is not None and _number(value.args[0]) != first:
        return None
    return value


def _range_bound(original: dict, expr, clamp: str, reduce: str, x):
    """clamp(0, reduce(x)) bound to `expr` (TVM's max(x, 0) and min(x, 0)), else None."""
    bound = _call(original, expr, clamp, first=0.0)
    if bound is None:
        return None
    reduced = _call(original, bound.args[1], reduce)
    if reduced is None or not reduced.args[0].same_as(x) or reduced.attrs.axis is not None:
        return None
    return bound


def _is_zero_point_of(original: dict, zero_point, scale, low) -> bool:
    """Whether `zero_point` is uint8(round(clip(0 - low / scale, 0, 255)))."""
    cast = _call(original, zero_point, "relax.astype")
    rounded = None if cast is None else _call(original, cast.args[0], "relax.round")
    clipped = None if rounded is None else _call(original, rounded.args[0], "relax.clip")
    if clipped is None or [_number(b) for b in clipped.args[1:]] != [0.0, 255.0]:
        return False
    centred = _call(original, clipped.args[0], "relax.subtract", first=0.0)
    ratio = None if centred is None else _call(original, centred.args[1], "relax.divide")
    return ratio is not None and ratio.args[0].same_as(low) and ratio.args[1].same_as(scale)


def dynamic_range_input(original: dict, quantize) -> tuple | None:
    """(x, scale, zero point) of `quantize` (a relax.quantize call) when its scale and zero
    point are TVM's DynamicQuantizeLinear of its own input x, else None. `original`: var ->
    bound value, of the function being rewritten."""
    x, scale, zero_point = quantize.args
    if str(quantize.attrs.out_dtype) != "uint8" or str(getattr(x.ty, "dtype", "")) != "float32":
        return None
    divided = _call(original, scale, "relax.divide")
    if divided is None or _number(divided.args[1]) != 255.0:
        return None
    spread = _call(original, divided.args[0], "relax.subtract")
    if spread is None:
        return None
    high, low = spread.args
    if _range_bound(original, high, "relax.maximum", "relax.max", x) is None:
        return None
    if _range_bound(original, low, "relax.minimum", "relax.min", x) is None:
        return None
    if not _is_zero_point_of(original, zero_point, scale, low):
        return None
    if any(static_shape(e) is None for e in (x, scale, zero_point)):
        return None
    return x, scale, zero_point


def dynamic_quantize(rows, *, scale_shape: tuple, zero_point_shape: tuple):
    """(q, scale, zero point) of float32 [1, n, MEAN_VECTOR] `rows` (rows of vectors, as the
    nhwc rewriter's full reductions take them) as DynamicQuantizeLinear defines them, with
    TVM's arithmetic for each (onnx_frontend's DynamicQuantizeLinear, the legalized
    quantize): scale = (max(x, 0) - min(x, 0)) / 255, zero point = uint8(round(
    clip(0 - min(x, 0) / scale, 0, 255))), q = clip(round(x / scale) + zero point, 0, 255)."""
    from tvm import te, tirx

    high = full_reduce(rows, kind="max", shape=())
    low = full_reduce(rows, kind="min", shape=())
    zero = tirx.const(0.0, "float32")
    scale = te.compute(
        scale_shape,
        lambda *_: (tirx.max(zero, high[()]) - tirx.min(zero, low[()]))
        / tirx.const(255.0, "float32"),
        name="scale",
    )
    at = (0,) * len(scale_shape)

    def zero_point_of(*_):
        centred = zero - tirx.min(zero, low[()]) / scale[at]
        clipped = tirx.max(tirx.min(centred, tirx.const(255.0, "float32")), zero)
        return tirx.round(clipped).astype("uint8")

    zero_point = te.compute(zero_point_shape, zero_point_of, name="zero_point")
    z_at = (0,) * len(zero_point_shape)

    def quantized(*i):
        value = tirx.round(rows[i] / scale[at]) + zero_point[z_at].astype("float32")
        return tirx.max(tirx.min(value, tirx.const(255.0, "float32")), zero).astype("uint8")

    q = te.compute(rows.shape, quantized, name="quantized")
    return [q, scale, zero_point]


def fuse_dynamic_quantization(rewriter, binding) -> bool:
    """A hook of the float lowering's rewrite (nhwc_rewriter): a relax.quantize of TVM's
    DynamicQuantizeLinear as one dynamic_quantize call on the value as the kernels hold it
    (NHWC where they do: the range and each element's rounding do not depend on the layout).
    Its scale and zero point replace the old ones, whose ops are then dead."""
    from tvm import relax

    value = binding.value
    if op_name(value) != "relax.quantize":
        return False
    found = dynamic_range_input(rewriter.original, value)
    if found is None:
        return False
    x, scale, zero_point = (rewriter.visit_expr(e) for e in found)
    source = rewriter.nhwc.get(x, x)
    shape = static_shape(source)
    size = int(np.prod(shape, dtype=np.int64))
    lanes = MEAN_VECTOR if size % MEAN_VECTOR == 0 else 1
    builder = rewriter.builder_
    rows = builder.emit(relax.op.reshape(source, (1, size // lanes, lanes)))
    call = builder.emit(
        builder.call_te(
            dynamic_quantize,
            rows,
            scale_shape=static_shape(scale),
            zero_point_shape=static_shape(zero_point),
            primfunc_name_hint="dynamic_quantize",
        )
    )
    q = relax.op.reshape(builder.emit(relax.TupleGetItem(call, 0)), shape)
    if source is not x:
        rewriter.bind(binding.var, q)
    else:
        rewriter.set_var_remap(binding.var, rewriter.emit_as(binding.var, q))
    for i, var in ((1, found[1]), (2, found[2])):
        rewriter.set_var_remap(var, rewriter.emit_as(var, relax.TupleGetItem(call, i)))
    return True
