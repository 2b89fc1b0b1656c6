"""Integer convolution kernels (TE) in the layout each CPU's dot-product instruction reads.

An int8 dot-product instruction multiplies 4 consecutive 8-bit activations by a block of
`lanes` x 4 weights and adds the 4-term sums into `lanes` int32 accumulators: x86's vpdpbusd
(VNNI; u8 activations x s8 weights, 16 lanes in a zmm register) and arm64's sdot (s8 x s8, 4
lanes). TVM's tensor intrinsics for them (`dot_16x4_vnni`, `dot_4x4_i8i8s32_sdot`) match a
block C[i] += A[k] * B[i, k] whose A is 4 contiguous bytes and B `lanes` x 4 contiguous bytes;
MetaSchedule's default rules for such targets tensorize every block of that form. So:

- activations are NHWC between the int8 kernels: the 4 bytes a dot-product term reads are 4
  consecutive channels of one pixel, each kernel's requantized output is `lanes` contiguous
  channels per pixel, and depthwise and pooling kernels vectorize over channels whatever the
  image size. Where a conv needs padding, channels rounded up to 4 or the other signedness,
  a pass copies its input padded with the zero point and shifted by 128 into the
  instruction's signedness (u8 <-> s8 is exact: q - zp is unchanged when both move by 128);
- weights are packed [OC/lanes, IC/4, KH, KW, lanes, 4] in numpy, once, at build time, and are
  stored as int8 in the library;
- the zero point of the activations leaves the inner loop: sum (x - zx) w = sum x w - zx sum w,
  and zx sum w is folded into the int32 bias;
- requantization reproduces onnxruntime's (MLAS) arithmetic: float32(acc + bias) times the
  float32 multiplier sx * sw[c] / sy, rounded half to even, plus the output zero point,
  saturated.

Depthwise convolutions have no reduction over channels for a dot product to take: they are
computed in float32 fused multiply-adds over channel vectors, which is exact: every product
is an integer of at most 255 * 128 in magnitude and every partial sum stays below 2^24
(checked per layer), where float32 holds integers exactly.
"""

from __future__ import annotations

import numpy as np

from edgepress.backends.kernels.common.nhwc_compute import depthwise_sums, output_size

DOT_DEPTH = 4  # activations per dot-product term
QUANT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}
# Activations as the kernels read them: 8-bit, or widened to int16 (AVX2, from either)
ACT_RANGE = {**QUANT_RANGE, "int16": (-128, 255)}
# The output type of a layer whose output no integer kernel reads (a conv before HardSwish's
# float chain): its int32 result times the input and weight scales, as onnxruntime's float
# conv computes it from the dequantized operands.
FLOAT_OUTPUT = "float32"


def shift_zero_point(zero_point: int, src: str, dst: str) -> int:
    """The zero point after moving 8-bit values from `src` into `dst` (the other signedness,
    or int16, which holds either as it is)."""
    if src == dst or dst == "int16":
        return zero_point
    return zero_point - 128 if dst == "int8" else zero_point + 128


def pack_weight(weight: np.ndarray, lanes: int, channel_multiple: int = DOT_DEPTH) -> np.ndarray:
    """int8 OIHW -> [OC/lanes, IC/4, KH, KW, lanes, 4], zero-filled to whole blocks (and the
    input channels to a multiple of `channel_multiple`, as pack_activations pads them)."""
    oc, ic, kh, kw = weight.shape
    ocp = -(-oc // lanes) * lanes
    icp = -(-ic // channel_multiple) * channel_multiple
    padded = np.zeros((ocp, icp, kh, kw), np.int8)
    padded[:oc, :ic] = weight
    blocks = padded.reshape(ocp // lanes, lanes, icp // DOT_DEPTH, DOT_DEPTH, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def requantize_multiplier(
    input_scale: float, weight_scales: np.ndarray, output_scale: float
) -> np.ndarray:
    """float32 sx * sw[c] / sy, in onnxruntime's order of operations (QLinearConv)."""
    sx = np.float32(input_scale)
    sy = np.float32(output_scale)
    return ((sx * weight_scales.astype(np.float32)) / sy).astype(np.float32)


def _convert(value, src: str, dst: str):
    """An 8-bit value moved into the other signedness (u8 <-> s8: minus or plus 128), or
    widened to int16."""
    if src == dst:
        return value
    if dst == "int16":
        return value.astype("int16")
    offset = -128 if dst == "int8" else 128
    return (value.astype("int32") + offset).astype(dst)


def requantize_sum(acc, bias, multiplier, out_zero_point: int, out_dtype: str, in_int32: bool):
    """int32 acc + bias -> 8 bits, as onnxruntime does it (module docstring)."""
    total = (acc + bias).astype("float32")
    return _scale_to(total, multiplier, out_zero_point, out_dtype, in_int32)


def _scale_to(total, multiplier, out_zero_point: int, out_dtype: str, in_int32: bool):
    """float32 total * multiplier, rounded half to even, plus the zero point, saturated; for a
    float32 `out_dtype` (a layer whose output only float ops read: FLOAT_OUTPUT) the product
    itself, the dequantized result.

    Rounded with LLVM's rint (the current rounding mode: to nearest even): TVM's nearbyint is
    not vectorized, a loop using it stays scalar and LLVM then vectorized the loop around it
    with gathers (the convs' epilogues ran 2x slower). With `in_int32` (scaled_in_int32: the
    scaled value is known to fit) the rounding converts to int32 in the same instruction
    (x86's vcvtps2dq) and the saturation is integer: two fewer operations per vector, which
    count in 1x1 convs over few channels, where the epilogue outweighs the dot products."""
    from tvm import tirx

    if out_dtype == FLOAT_OUTPUT:
        return total * multiplier
    lo, hi = QUANT_RANGE[out_dtype]
    rounded = tirx.call_llvm_pure_intrin("float32", "llvm.rint", total * multiplier)
    if in_int32:
        q = rounded.astype("int32") + out_zero_point
        if out_dtype == "uint8":  # an unsigned minimum, which x86 folds into vpmovusdb
            q = tirx.max(q, 0).astype("uint32")
            return tirx.min(q, tirx.const(hi, "uint32")).astype(out_dtype)
        return tirx.max(tirx.min(q, hi), lo).astype(out_dtype)
    q = rounded + tirx.const(float(out_zero_point), "float32")
    q = tirx.max(tirx.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
    return q.astype(out_dtype)


def quantized_add(
    a,
    b,
    *,
    a_ratio: float,
    b_ratio: float,
    constant: float,
    out_dtype: str,
):
    """quantize(dequantize(a) + dequantize(b)) on 8-bit a and b of the same shape, as
    onnxruntime's QLinearAdd computes it (MLAS): a * (sa / sc) + b * (sb / sc) + (zc - za *
    sa / sc - zb * sb / sc) in float32, rounded half to even, saturated. `a_ratio`, `b_ratio`
    and `constant` are those float32 values (quantized_add_terms). TVM's chain of
    dequantize, add and quantize divides by sc (a vector division) and rounds the sum once
    more."""
    from tvm import te, tirx

    def add(*i):
        total = a(*i).astype("float32") * tirx.const(a_ratio, "float32") + b(*i).astype(
            "float32"
        ) * tirx.const(b_ratio, "float32")
        return _scale_to(
            total + tirx.const(constant, "float32"),
            tirx.const(1.0, "float32"),
            0,
            out_dtype,
            False,
        )

    return te.compute(a.shape, add, name="quantized_add")


def quantized_add_terms(
    a_scale: float,
    a_zero_point: int,
    b_scale: float,
    b_zero_point: int,
    out_scale: float,
    out_zero_point: int,
) -> tuple[float, float, float]:
    """(a_ratio, b_ratio, constant) of quantized_add, in float32 as MLAS forms them."""
    a_ratio = np.float32(a_scale) / np.float32(out_scale)
    b_ratio = np.float32(b_scale) / np.float32(out_scale)
    constant = (
        np.float32(out_zero_point)
        - a_ratio * np.float32(a_zero_point)
        - b_ratio * np.float32(b_zero_point)
    )
    return float(a_ratio), float(b_ratio), float(np.float32(constant))


def _reach(weight: np.ndarray, act_dtype: str) -> np.ndarray:
    """The largest |sum of x * w| over a layer's window, per output channel."""
    largest = max(abs(v) for v in ACT_RANGE[act_dtype])
    return np.abs(weight.astype(np.int64)).reshape(len(weight), -1).sum(axis=1) * largest


INT32_SAFE = 1 << 30  # below 2^31 with room for float32 rounding and the zero point


def scaled_in_int32(
    weight: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, act_dtype: str
) -> bool:
    """Whether (acc + bias) * multiplier stays within +-2^30 for every input of the layer, so
    that rounding it straight to int32 cannot overflow."""
    total = _reach(weight, act_dtype) + np.abs(bias.astype(np.int64))
    return bool(np.all(total * multiplier.astype(np.float64) < INT32_SAFE))


def pack_activations(
    x,
    *zero_point,
    padding: tuple[int, int, int, int],
    in_zero_point: int,
    act_dtype: str,
    upsample: tuple[int, int] = (1, 1),
    channel_multiple: int = DOT_DEPTH,
):
    """8-bit NHWC -> NHWC in `act_dtype`, padded with the zero point spatially and up to a
    multiple of `channel_multiple` channels (4: a dot-product term; 64: an AMX tile's row,
    whose padded channels meet zero weights). A kernel of its own (PACK_RULE), not inlined
    into the convolution: the dot-product intrinsic matches 4 contiguous bytes, which a
    padding test per read would not be.

    `upsample` (sh, sw) puts sh - 1 rows and sw - 1 columns of the zero point between the
    input's: a transposed convolution is a stride-1 convolution of that, with the window
    flipped (int8/lowering).

    A `zero_point` tensor (one 8-bit value: dynamic quantization's, computed at run time)
    is the padding instead of `in_zero_point`."""
    from tvm import te, tirx

    n, height, width, channels = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    sh, sw = upsample
    src = str(x.dtype)
    rows, cols = (height - 1) * sh + 1, (width - 1) * sw + 1

    def pack(b, h, w, c):
        y, z = h - top, w - left
        inside = tirx.all(c < channels, y >= 0, y < rows, z >= 0, z < cols)
        if sh > 1:
            inside = tirx.all(inside, y % sh == 0)
        if sw > 1:
            inside = tirx.all(inside, z % sw == 0)
        value = x[b, y // sh, z // sw, c] if (sh, sw) != (1, 1) else x[b, y, z, c]
        fill = tirx.const(in_zero_point, act_dtype)
        if zero_point:
            fill = _convert(_one_value(zero_point[0]), src, act_dtype)
        return tirx.if_then_else(inside, _convert(value, src, act_dtype), fill)

    from edgepress.backends.kernels.common.nhwc_schedules import INTERIOR_ATTR, PACK_RULE

    padded = -(-channels // channel_multiple) * channel_multiple
    shape = (n, rows + top + bottom, cols + left + right, padded)
    interior = [top, top + rows - 1, left, left + cols - 1]
    attrs = {"schedule_rule": PACK_RULE, INTERIOR_ATTR: interior}
    return te.compute(shape, pack, name="pack", attrs=attrs)


def needs_pack(
    channels: int,
    padding: tuple[int, int, int, int],
    src: str,
    act_dtype: str,
    upsample: tuple[int, int] = (1, 1),
    channel_multiple: int = DOT_DEPTH,
) -> bool:
    """Whether a conv's NHWC input must be copied by pack_activations first."""
    return (
        any(padding)
        or channels % channel_multiple != 0
        or src != act_dtype
        or upsample != (1, 1)
    )


def _dot_products(xp, weight, strides, dilation, intrinsic: str | None, pair_sums: bool):
    """The int32 sums of x * w of packed_conv2d (its docstring), as total(b, c, y, z), and the
    output's spatial size."""
    from tvm import te

    from edgepress.backends.kernels.int8.schedules import INTRINSIC_ATTR, RULE

    n, height, width, _ = (int(d) for d in xp.shape)
    _, _, kh, kw, lanes, depth = (int(d) for d in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    oh = output_size(height, 0, kh, sh, dh)
    ow = output_size(width, 0, kw, sw, dw)
    rc = te.reduce_axis((0, int(weight.shape[1])), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    attrs = {"schedule_rule": RULE, **({INTRINSIC_ATTR: intrinsic} if intrinsic else {})}

    def term(b, ob, y, z, oi, k):
        a = xp[b, y * sh + ry * dh, z * sw + rx * dw, rc * depth + k].astype("int32")
        return a * weight[ob, rc, ry, rx, oi, k].astype("int32")

    if pair_sums:
        r2 = te.reduce_axis((0, 2), name="r2")
        acc = te.compute(
            (n, int(weight.shape[0]), oh, ow, lanes, 2),
            lambda b, ob, y, z, oi, p: te.sum(
                term(b, ob, y, z, oi, p * 2 + r2), axis=[rc, ry, rx, r2]
            ),
            name="conv_int8",
            attrs=attrs,
        )

        # A reduction, not acc[..., 0] + acc[..., 1]: TVM's compute-at cannot place a block
        # that reads a buffer at constant indices.
        rp = te.reduce_axis((0, 2), name="rp")
        summed = te.compute(
            (n, int(weight.shape[0]), oh, ow, lanes),
            lambda b, ob, y, z, oi: te.sum(acc[b, ob, y, z, oi, rp], axis=rp),
            name="pair_sum",
        )

        def total(b, c, y, z):
            return summed[b, c // lanes, y, z, c % lanes]

    else:
        r4 = te.reduce_axis((0, depth), name="r4")
        acc = te.compute(
            (n, int(weight.shape[0]), oh, ow, lanes),
            lambda b, ob, y, z, oi: te.sum(term(b, ob, y, z, oi, r4), axis=[rc, ry, rx, r4]),
            name="conv_int8",
            attrs=attrs,
        )

        def total(b, c, y, z):
            return acc[b, c // lanes, y, z, c % lanes]

    return total, (n, oh, ow)


def packed_conv2d(
    xp,
    weight,
    bias,
    multiplier,
    *,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_zero_point: int,
    out_dtype: str,
    out_channels: int,
    intrinsic: str | None = None,
    in_int32: bool = False,
    pair_sums: bool = False,
    out_width: int | None = None,
):
    """Quantized conv2d of padded NHWC activations whose channels are a multiple of 4 (as
    pack_activations gives them) and packed int8 weights (pack_weight), requantized to 8-bit
    NHWC. `bias` (int32) holds the layer's bias minus the input zero point times sum(w), per
    output channel. The conv block names its MetaSchedule rule (backends/kernels/int8/schedules.py)
    and the tensor intrinsic it should use; `in_int32`: scaled_in_int32 holds (_scale_to).
    With `pair_sums` (AVX2's dot_8x2x2_avx2) each output channel accumulates two partial sums,
    over the first and the second pair of each 4 input channels, which the epilogue adds: the
    instruction's pair sums need no reduction inside the loop. `out_width` < the row the
    input's padding gives: the sums are computed for the whole row (a better register tile:
    int8/schedules.padded_width), the requantized output keeps the first `out_width`."""
    from tvm import te

    total, (n, oh, ow) = _dot_products(xp, weight, strides, dilation, intrinsic, pair_sums)
    return te.compute(
        (n, oh, ow if out_width is None else out_width, out_channels),
        lambda b, y, z, c: requantize_sum(
            total(b, c, y, z), bias[c], multiplier[c], out_zero_point, out_dtype, in_int32
        ),
        name="requantize",
    )


def _one_value(tensor):
    """The element of a tensor of one element (a run-time zero point), of any rank."""
    return tensor[(0,) * len(tensor.shape)]


def integer_conv2d(
    xp,
    weight,
    zero_point,
    column_sums,
    *row_terms,
    strides: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    out_channels: int,
    offset: int,
    intrinsic: str | None = None,
    pair_sums: bool = False,
):
    """float32 sum over each window of (q - z) c: dynamic quantization's integer conv and
    matmul (a 1x1 conv over a row of M pixels), whose zero point z is computed at run time
    (int8/integer_matmul).

    `xp` [N, H, W, C'] holds a = q - `offset` in the instruction's type (C padded to whole
    dot-product terms; padded pixels hold z: pack_activations), `weight` the packed w8 = c - d,
    `zero_point` z (one 8-bit or int32 value), `column_sums` [O] int32 the sums of each
    output channel's w8 over its window. Then sum (q - z) c = acc + (offset - z)
    column_sums[o] + d[o] S, S the sum over the window of (q - z); where some d is not 0
    (weights whose centred range is not int8's), `row_terms` are d [O] and S [N, OH, OW], both
    int32 (window_sums). Every term is an integer in int32, so the result is exact wherever
    float32 holds it."""
    from tvm import te

    total, (n, oh, ow) = _dot_products(xp, weight, strides, dilation, intrinsic, pair_sums)

    def product(b, y, x, c):
        z = _one_value(zero_point).astype("int32")
        value = total(b, c, y, x) + (offset - z) * column_sums[c]
        if row_terms:
            shift, sums = row_terms
            value = value + shift[c] * sums[b, y, x]
        return value.astype("float32")

    return te.compute((n, oh, ow, out_channels), product, name="integer_product")


def window_sums(
    x,
    zero_point,
    *,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
):
    """S [N, OH, OW] int32: the sum over each output pixel's window of q - z, over every
    channel of 8-bit NHWC `x` (padded pixels hold z, so add nothing): the share of a weight
    shift d in integer_conv2d."""
    from tvm import te, tirx

    n, height, width, channels = (int(d) for d in x.shape)
    z = _one_value(zero_point).astype("int32")
    rc = te.reduce_axis((0, channels), name="rc")
    sums = te.compute(
        (n, height, width),
        lambda b, y, w: te.sum(x[b, y, w, rc].astype("int32"), axis=[rc]),
        name="channel_sums",
    )
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    top, left, bottom, right = padding
    oh = output_size(height, top + bottom, kh, sh, dh)
    ow = output_size(width, left + right, kw, sw, dw)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def window(b, y, w):
        h, v = y * sh + ry * dh - top, w * sw + rx * dw - left
        inside = tirx.all(h >= 0, h < height, v >= 0, v < width)
        return te.sum(tirx.if_then_else(inside, sums[b, h, v] - channels * z, 0), axis=[ry, rx])

    return te.compute((n, oh, ow), window, name="window_sums")


FLOAT_EXACT = 1 << 24  # integers up to this magnitude are exact in float32


def depthwise_sums_exact(weight: np.ndarray, bias: np.ndarray, x_dtype: str) -> bool:
    """Whether float32 sums of x * w, and then of the bias, are exact for every channel: each
    partial sum is an integer below 2^24 in magnitude. Then the kernel adds the bias in float
    too, which saves two conversions per output vector."""
    return bool(np.all(_reach(weight, x_dtype) + np.abs(bias.astype(np.int64)) < FLOAT_EXACT))


def depthwise_conv2d(
    x,
    weight,
    bias,
    multiplier,
    *,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    in_zero_point: int,
    out_zero_point: int,
    out_dtype: str,
    lanes: int,
    float_bias: bool,
    in_int32: bool = False,
):
    """Quantized depthwise conv2d on 8-bit NHWC and int8 weights [1, KH, KW, C]
    (pack_depthwise_weight), requantized to 8-bit NHWC. Padding reads as the input zero
    point, in the kernel: each tap's test is marked likely, and DEPTHWISE_RULE cuts the border
    rows and column tiles off, where the tests fold (no padded copy of the input, which cost
    MobileNetV2 about 0.15 ms). `bias` is the layer's bias minus the input zero point times
    sum(w) and `multiplier` the requantization's, per channel, both [1, 1, 1, C]
    (per_channel). Sums are float32 fused multiply-adds over channel vectors, exact
    (module docstring); with `float_bias` (depthwise_sums_exact) the bias is added in float;
    `in_int32`: scaled_in_int32 holds (_scale_to). `lanes` (the target's int32 vector width)
    sizes DEPTHWISE_RULE's register tile."""
    from tvm import te

    acc = depthwise_sums(
        x,
        weight,
        strides=strides,
        padding=padding,
        dilation=dilation,
        pad_value=float(in_zero_point),
        lanes=lanes,
    )
    shape = tuple(int(d) for d in acc.shape)

    def requantize(b, y, z, c):
        bias_c, multiplier_c = bias[0, 0, 0, c], multiplier[0, 0, 0, c]
        if float_bias:
            total = acc[b, y, z, c] + bias_c.astype("float32")
            return _scale_to(total, multiplier_c, out_zero_point, out_dtype, in_int32)
        acc_int = acc[b, y, z, c].astype("int32")
        return requantize_sum(acc_int, bias_c, multiplier_c, out_zero_point, out_dtype, in_int32)

    return te.compute(shape, requantize, name="requantize")


