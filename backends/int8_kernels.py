"""Integer convolution kernels (TE) in the layout each CPU's dot-product instruction reads.

An int8 dot-product instruction multiplies 4 consecutive 8-bit activations by a block of
`lanes` x 4 weights and adds the 4-term sums into `lanes` int32 accumulators: x86's vpdpbusd
(VNNI; u8 activations x s8 weights, 16 lanes in a zmm register) and arm64's sdot (s8 x s8, 4
lanes). TVM's tensor intrinsics for them (`dot_16x4_vnni`, `dot_4x4_i8i8s32_sdot`) match a
block C[i] += A[k] * B[i, k] whose A is 4 contiguous bytes and B `lanes` x 4 contiguous bytes;
MetaSchedule's default rules for such targets tensorize every block of that form. So:

- activations are packed NCHW[4c], padded with their zero point and shifted by 128 into the
  instruction's signedness (u8 <-> s8 is exact: q - zp is unchanged when both move by 128);
- weights are packed [OC/lanes, IC/4, KH, KW, lanes, 4] in numpy, once, at build time, and are
  stored as int8 in the library;
- the zero point of the activations leaves the inner loop: sum (x - zx) w = sum x w - zx sum w,
  and zx sum w is folded into the int32 bias;
- requantization reproduces onnxruntime's (MLAS) arithmetic: float32(acc + bias) times the
  float32 multiplier sx * sw[c] / sy, rounded half to even, plus the output zero point,
  saturated.

Depthwise convolutions have no reduction over channels for a dot product to take: they are
computed as int16 x int16 -> int32 products of (x - zx) and w, which the vectorizer handles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOT_DEPTH = 4  # activations per dot-product term
QUANT_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


@dataclass(frozen=True)
class DotLayout:
    """What the target's dot-product instruction reads."""

    act_dtype: str  # activations: "uint8" (x86) or "int8" (arm64)
    lanes: int  # int32 accumulators per instruction (output channels per weight block)
    intrinsic: str | None  # TVM's tensor intrinsic for it, None where the target has none


def shift_zero_point(zero_point: int, src: str, dst: str) -> int:
    """The zero point after moving 8-bit values from `src` into `dst` signedness."""
    if src == dst:
        return zero_point
    return zero_point - 128 if dst == "int8" else zero_point + 128


def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """int8 OIHW -> [OC/lanes, IC/4, KH, KW, lanes, 4], zero-filled to whole blocks."""
    oc, ic, kh, kw = weight.shape
    ocp = -(-oc // lanes) * lanes
    icp = -(-ic // DOT_DEPTH) * DOT_DEPTH
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
    """An 8-bit value moved into the other signedness (u8 <-> s8: minus or plus 128)."""
    if src == dst:
        return value
    offset = -128 if dst == "int8" else 128
    return (value.astype("int32") + offset).astype(dst)


def _requantize(acc, bias, multiplier, out_zero_point: int, out_dtype: str):
    from tvm import tirx

    lo, hi = QUANT_RANGE[out_dtype]
    scaled = (acc + bias).astype("float32") * multiplier
    q = tirx.nearbyint(scaled) + tirx.const(float(out_zero_point), "float32")
    q = tirx.max(tirx.min(q, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
    return q.astype(out_dtype)


def _output_size(size: int, pad: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


def pack_activations(
    x,
    *,
    padding: tuple[int, int, int, int],
    in_zero_point: int,
    act_dtype: str,
):
    """8-bit NCHW -> NCHW[4c] in `act_dtype`, padded with the zero point (spatially, and up to
    whole channel blocks). A kernel of its own: inlined into the convolution, its reads would
    no longer be the 4 contiguous bytes the dot-product intrinsic matches."""
    from tvm import te, tirx

    n, channels, height, width = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    src = str(x.dtype)

    def pack(b, cb, h, w, c4):
        c = cb * DOT_DEPTH + c4
        y, z = h - top, w - left
        inside = tirx.all(c < channels, y >= 0, y < height, z >= 0, z < width)
        return tirx.if_then_else(
            inside, _convert(x[b, c, y, z], src, act_dtype), tirx.const(in_zero_point, act_dtype)
        )

    from edgepress.backends.int8_schedules import PACK_RULE

    blocks = -(-channels // DOT_DEPTH)
    shape = (n, blocks, height + top + bottom, width + left + right, DOT_DEPTH)
    return te.compute(shape, pack, name="pack", attrs={"schedule_rule": PACK_RULE})


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
):
    """Quantized conv2d of packed, padded activations (pack_activations) and packed int8
    weights (pack_weight), requantized to 8-bit NCHW. `bias` (int32) holds the layer's bias
    minus the input zero point times sum(w), per output channel. The conv block names its
    MetaSchedule rule (backends/int8_schedules.py) and the tensor intrinsic it should use."""
    from tvm import te

    from edgepress.backends.int8_schedules import INTRINSIC_ATTR, RULE

    n, _, height, width, _ = (int(d) for d in xp.shape)
    _, _, kh, kw, lanes, depth = (int(d) for d in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    oh = _output_size(height, 0, kh, sh, dh)
    ow = _output_size(width, 0, kw, sw, dw)
    rc = te.reduce_axis((0, int(weight.shape[1])), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    r4 = te.reduce_axis((0, depth), name="r4")
    acc = te.compute(
        (n, int(weight.shape[0]), oh, ow, lanes),
        lambda b, ob, y, z, oi: te.sum(
            xp[b, rc, y * sh + ry * dh, z * sw + rx * dw, r4].astype("int32")
            * weight[ob, rc, ry, rx, oi, r4].astype("int32"),
            axis=[rc, ry, rx, r4],
        ),
        name="conv_int8",
        attrs={"schedule_rule": RULE, **({INTRINSIC_ATTR: intrinsic} if intrinsic else {})},
    )
    return te.compute(
        (n, out_channels, oh, ow),
        lambda b, c, y, z: _requantize(
            acc[b, c // lanes, y, z, c % lanes], bias[c], multiplier[c], out_zero_point, out_dtype
        ),
        name="requantize",
    )


def _window_taps(x, b, c, y, z, pool_size, strides, padding, dilation) -> list:
    """(in the input?, x[b, c, ...]) for each tap of the window of output pixel (y, z). The
    test is marked likely: WINDOW_RULE cuts the border rows and columns off the interior,
    where it is then proven true and the loads become unconditional."""
    from tvm import tirx

    height, width = (int(d) for d in x.shape[2:])
    taps = []
    for i in range(pool_size[0]):
        for j in range(pool_size[1]):
            h = y * strides[0] + i * dilation[0] - padding[0]
            w = z * strides[1] + j * dilation[1] - padding[1]
            inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
            taps.append((tirx.likely(inside), x[b, c, h, w]))
    return taps


def _interior(
    size: int, before: int, after: int, kernel: int, stride: int, dilation: int
) -> tuple[int, int]:
    """[first, last] output index whose whole window lies inside the input (padded by
    `before` and `after`)."""
    out = _output_size(size, before + after, kernel, stride, dilation)
    first = -(-before // stride)
    last = min(out - 1, (size - 1 + before - (kernel - 1) * dilation) // stride)
    return first, last


def _window_attrs(x, pool_size, strides, padding, dilation) -> dict:
    from edgepress.backends.int8_schedules import INTERIOR_ATTR, WINDOW_RULE

    height, width = (int(d) for d in x.shape[2:])
    top, left, bottom, right = padding
    rows = _interior(height, top, bottom, pool_size[0], strides[0], dilation[0])
    cols = _interior(width, left, right, pool_size[1], strides[1], dilation[1])
    return {"schedule_rule": WINDOW_RULE, INTERIOR_ATTR: [*rows, *cols]}


def max_pool2d(
    x,
    *,
    pool_size: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
):
    """Max pooling on 8-bit NCHW values (between a dequantize and a quantize of one scale: the
    affine map and its rounding commute with max). Padding reads as the dtype's minimum, which
    never wins a window holding a real pixel.

    The window is written out term by term, so each output row is a vector maximum that LLVM
    vectorizes once WINDOW_RULE has cut off the border. ResNet-18's 112x112x64 pool: 0.07 ms;
    TOPI's pool (a reduction with a padding test per read) took 1.0 ms with MetaSchedule's
    untuned sample and 1.4 ms as plain loops."""
    from tvm import te, tirx

    n, channels, height, width = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    lowest = tirx.const(QUANT_RANGE[str(x.dtype)][0], str(x.dtype))

    def window(b, c, y, z):
        taps = _window_taps(x, b, c, y, z, pool_size, strides, padding, dilation)
        values = [tirx.if_then_else(inside, value, lowest) for inside, value in taps]
        result = values[0]
        for value in values[1:]:
            result = tirx.max(result, value)
        return result

    shape = (
        n,
        channels,
        _output_size(height, top + bottom, pool_size[0], strides[0], dilation[0]),
        _output_size(width, left + right, pool_size[1], strides[1], dilation[1]),
    )
    attrs = _window_attrs(x, pool_size, strides, padding, dilation)
    return te.compute(shape, window, name="max_pool_int8", attrs=attrs)


def pack_depthwise_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> int16 [C/lanes, KH, KW, lanes], zero-filled to whole blocks."""
    channels, _, kh, kw = weight.shape
    padded = np.zeros((-(-channels // lanes) * lanes, kh, kw), np.int16)
    padded[:channels] = weight[:, 0]
    blocks = padded.reshape(-1, lanes, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 3, 1))


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
):
    """Quantized depthwise conv2d on blocked channels: x - zx as int16 in NCHW[lanes c]
    (padding is then 0), times int16 weights [C/lanes, KH, KW, lanes] (pack_depthwise_weight),
    int32 sums, requantized to 8-bit NCHW. Channels innermost, the products vectorize over
    `lanes` channels; `in_zero_point` is in x's own dtype, `bias` without a zero-point term."""
    from tvm import te, tirx

    n, channels, height, width = (int(d) for d in x.shape)
    cblocks, kh, kw, lanes = (int(d) for d in weight.shape)
    top, left, bottom, right = padding
    sh, sw = strides
    dh, dw = dilation

    def centred(b, cb, h, w, ci):
        c, y, z = cb * lanes + ci, h - top, w - left
        inside = tirx.all(c < channels, y >= 0, y < height, z >= 0, z < width)
        value = x[b, c, y, z].astype("int16") - tirx.const(in_zero_point, "int16")
        return tirx.if_then_else(inside, value, tirx.const(0, "int16"))

    from edgepress.backends.int8_schedules import DEPTHWISE_RULE

    shape = (n, cblocks, height + top + bottom, width + left + right, lanes)
    xp = te.compute(shape, centred, name="centre", attrs={"schedule_rule": DEPTHWISE_RULE})
    oh = _output_size(height, top + bottom, kh, sh, dh)
    ow = _output_size(width, left + right, kw, sw, dw)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    acc = te.compute(
        (n, cblocks, oh, ow, lanes),
        lambda b, cb, y, z, ci: te.sum(
            (xp[b, cb, y * sh + ry * dh, z * sw + rx * dw, ci] * weight[cb, ry, rx, ci]).astype(
                "int32"
            ),
            axis=[ry, rx],
        ),
        name="depthwise_int8",
        attrs={"schedule_rule": DEPTHWISE_RULE},
    )
    return te.compute(
        (n, channels, oh, ow),
        lambda b, c, y, z: _requantize(
            acc[b, c // lanes, y, z, c % lanes], bias[c], multiplier[c], out_zero_point, out_dtype
        ),
        name="requantize",
    )
