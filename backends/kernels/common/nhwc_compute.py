"""NHWC compute (TE) both kernel families use: window kernels (max pooling), the depthwise
reduction, the spatial mean, zero padding, and the weight layouts they read.

Each names its schedule rule (common/nhwc_schedules) in its block attributes.
"""

from __future__ import annotations

import numpy as np

from edgepress.backends.kernels.common.nhwc_schedules import (
    DEPTHWISE_RULE,
    INTERIOR_ATTR,
    LANES_ATTR,
    MEAN_RULE,
    PACK_RULE,
    WINDOW_RULE,
)


def output_size(size: int, pad: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1



def _window_taps(x, b, y, z, c, pool_size, strides, padding, dilation) -> list:
    """(in the input?, x[b, ..., c]) for each tap of the window of output pixel (y, z) of NHWC
    `x`. The test is marked likely: WINDOW_RULE cuts the border rows and columns off the
    interior, where it is then proven true and the loads become unconditional."""
    from tvm import tirx

    height, width = (int(d) for d in x.shape[1:3])
    taps = []
    for i in range(pool_size[0]):
        for j in range(pool_size[1]):
            h = y * strides[0] + i * dilation[0] - padding[0]
            w = z * strides[1] + j * dilation[1] - padding[1]
            inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
            taps.append((tirx.likely(inside), x[b, h, w, c]))
    return taps



def _interior(
    size: int, before: int, after: int, kernel: int, stride: int, dilation: int
) -> tuple[int, int]:
    """[first, last] output index whose whole window lies inside the input (padded by
    `before` and `after`)."""
    out = output_size(size, before + after, kernel, stride, dilation)
    first = -(-before // stride)
    last = min(out - 1, (size - 1 + before - (kernel - 1) * dilation) // stride)
    return first, last



def window_attrs(x, pool_size, strides, padding, dilation) -> dict:

    height, width = (int(d) for d in x.shape[1:3])
    top, left, bottom, right = padding
    rows = _interior(height, top, bottom, pool_size[0], strides[0], dilation[0])
    cols = _interior(width, left, right, pool_size[1], strides[1], dilation[1])
    return {"schedule_rule": WINDOW_RULE, INTERIOR_ATTR: [*rows, *cols]}



def _window_compute(x, window, name: str, pool_size, strides, padding, dilation):
    """The NHWC pooling output of `window(b, y, z, c)` over `x`, named for WINDOW_RULE."""
    from tvm import te

    n, height, width, channels = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    shape = (
        n,
        output_size(height, top + bottom, pool_size[0], strides[0], dilation[0]),
        output_size(width, left + right, pool_size[1], strides[1], dilation[1]),
        channels,
    )
    attrs = window_attrs(x, pool_size, strides, padding, dilation)
    return te.compute(shape, window, name=name, attrs=attrs)


def max_pool2d(
    x,
    *,
    pool_size: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
):
    """Max pooling on NHWC values: float, or 8-bit ones (between a dequantize and a quantize of
    one scale: the affine map and its rounding commute with max). Padding reads as the dtype's
    lowest value (-inf for floats), which never wins a window holding a real pixel.

    The window is written out term by term, so each output pixel is a vector maximum over its
    channels once WINDOW_RULE has cut off the border. TOPI's pool (a reduction with a padding
    test per read) took 1.0 ms on ResNet-18's 112x112x64 input with MetaSchedule's untuned
    sample and 1.4 ms as plain loops."""
    from tvm import tirx

    lowest = tirx.min_value(str(x.dtype))

    def window(b, y, z, c):
        taps = _window_taps(x, b, y, z, c, pool_size, strides, padding, dilation)
        values = [tirx.if_then_else(inside, value, lowest) for inside, value in taps]
        result = values[0]
        for value in values[1:]:
            result = tirx.max(result, value)
        return result

    return _window_compute(x, window, "max_pool", pool_size, strides, padding, dilation)



def avg_pool2d(
    x,
    *,
    pool_size: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    count_include_pad: bool,
):
    """Average pooling on float NHWC values, the window written out term by term like
    max_pool2d's (a vector over the channels per output pixel once WINDOW_RULE has cut off the
    border). The divisor is the window's size, or with count_include_pad false (ONNX's
    default) the number of its taps inside the input. TVM's NHWC pool with MetaSchedule's
    untimed sample took 0.23 ms on a ShuffleNet shortcut (2% of peak)."""
    from tvm import tirx

    zero, one = tirx.const(0.0, x.dtype), tirx.const(1.0, x.dtype)

    def window(b, y, z, c):
        taps = _window_taps(x, b, y, z, c, pool_size, strides, padding, dilation)
        total, count = zero, zero
        for inside, value in taps:
            total = total + tirx.if_then_else(inside, value, zero)
            count = count + tirx.if_then_else(inside, one, zero)
        if count_include_pad or not any(padding):
            count = tirx.const(float(pool_size[0] * pool_size[1]), x.dtype)
        return total / count

    return _window_compute(x, window, "avg_pool", pool_size, strides, padding, dilation)


def pack_depthwise_weight(weight: np.ndarray) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> int8 [1, KH, KW, C]: each tap's weights a vector over channels.
    Rank 4 like every other buffer of the kernel: TVM 0.27's loop_partition fails (or
    crashes) on a function whose buffers differ in rank."""
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0))



def per_channel(values: np.ndarray) -> np.ndarray:
    """[C] -> [1, 1, 1, C], for the depthwise kernel (see pack_depthwise_weight)."""
    return values.reshape(1, 1, 1, -1)



def depthwise_sums(
    x,
    weight,
    *,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    pad_value: float,
    lanes: int,
):
    """float32 sums x * w over each output pixel's window, per channel, of NHWC `x` with
    weights [1, KH, KW, C] (both read as float32): the depthwise kernels' reduction, int8 or
    float. Padding reads as `pad_value`, in the kernel: each tap's test is marked likely, and
    DEPTHWISE_RULE cuts the border rows and column tiles off, where the tests fold. `lanes`
    (the target's int32 = float32 vector width) sizes the rule's register tile."""
    from tvm import te, tirx


    n, height, width, channels = (int(d) for d in x.shape)
    _, kh, kw, _ = (int(d) for d in weight.shape)
    top, left, bottom, right = padding
    oh = output_size(height, top + bottom, kh, strides[0], dilation[0])
    ow = output_size(width, left + right, kw, strides[1], dilation[1])
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    padded = tirx.const(pad_value, "float32")

    def tap(b, y, z, c):
        h = y * strides[0] + ry * dilation[0] - top
        w = z * strides[1] + rx * dilation[1] - left
        inside = tirx.likely(tirx.all(h >= 0, h < height, w >= 0, w < width))
        return tirx.if_then_else(inside, x[b, h, w, c].astype("float32"), padded)

    attrs = window_attrs(x, (kh, kw), strides, padding, dilation)
    return te.compute(
        (n, oh, ow, channels),
        lambda b, y, z, c: te.sum(
            tap(b, y, z, c) * weight[0, ry, rx, c].astype("float32"), axis=[ry, rx]
        ),
        name="depthwise_sums",
        attrs={**attrs, "schedule_rule": DEPTHWISE_RULE, LANES_ATTR: lanes},
    )



def spatial_mean(x, *, keepdims: bool):
    """Mean over the rows and columns of NHWC `x` ([N, 1, 1, C], or [N, C] without keepdims):
    a global average pool. Summed in TOPI's order (rows, then columns) and divided by their
    count as TOPI's mean does; MEAN_RULE runs the channels innermost, as vectors (TOPI's mean
    with MetaSchedule's sample took 0.04 ms on MobileNetV2's 7x7x1280 output)."""
    from tvm import te


    n, height, width, channels = (int(d) for d in x.shape)
    ry = te.reduce_axis((0, height), name="ry")
    rx = te.reduce_axis((0, width), name="rx")
    total = te.compute(
        (n, channels),
        lambda b, c: te.sum(x[b, ry, rx, c], axis=[ry, rx]),
        name="spatial_sum",
        attrs={"schedule_rule": MEAN_RULE},
    )
    count = float(height * width)
    if keepdims:
        return te.compute((n, 1, 1, channels), lambda b, i, j, c: total[b, c] / count)
    return te.compute((n, channels), lambda b, c: total[b, c] / count)


def column_reduce(x, *, kind: str):
    """The max, min, sum or mean of [outer, reduced, inner] `x` over its middle axis, as
    [outer, inner]: a reduction whose inner axis is a row of vectors. A global max pool of
    NHWC values (their pixels as the middle axis: magika's over its byte sequence, which
    TVM's max over NCW ran one element at a time) and a LayerNorm over a sequence axis
    (magika's: 0.7 GFLOP/s in TVM's sample). Scheduled as spatial_mean's sum (MEAN_RULE); the
    mean divides the sum by the count, as spatial_mean does."""
    from tvm import te

    outer, reduced, inner = (int(d) for d in x.shape)
    r = te.reduce_axis((0, reduced), name="r")
    reducer = {"max": te.max, "min": te.min, "sum": te.sum, "mean": te.sum}[kind]
    total = te.compute(
        (outer, inner),
        lambda o, c: reducer(x[o, r, c], axis=[r]),
        name=f"column_{kind}",
        attrs={"schedule_rule": MEAN_RULE},
    )
    if kind != "mean":
        return total
    count = float(reduced)
    return te.compute((outer, inner), lambda o, c: total[o, c] / count)


def full_reduce(x, *, kind: str, shape: tuple[int, ...]):
    """The max, min, sum or mean of every element of [1, rows, lanes] `x`, as `shape` (all
    ones, or a scalar): column_reduce's per-lane results, then those lanes reduced, in one
    function (one call of the VM: a dynamic quantization's range, twice per conv and per
    LSTM step of ddddocr's model)."""
    from tvm import te

    partial = column_reduce(x, kind=kind)
    lanes = int(x.shape[2])
    r = te.reduce_axis((0, lanes), name="lane")
    reducer = {"max": te.max, "min": te.min, "sum": te.sum, "mean": te.sum}[kind]
    total = te.compute(shape, lambda *_: reducer(partial[0, r], axis=[r]), name=f"all_{kind}")
    if kind != "mean":
        return total
    return te.compute(shape, lambda *i: total(*i) / float(lanes), name="all_mean_divided")


def depth_to_space(x, *, block: int, mode: str):
    """DepthToSpace of NHWC `x` [N, H, W, s*s*C] as [N, H*s, W*s, C]: channel c of block
    position (i, j) is input channel (i*s + j)*C + c (DCR) or c*s*s + i*s + j (CRD). One
    block with these indices, not TVM's reshape, transpose and reshape, whose flattened
    index arithmetic no schedule vectorized (ppocrv5-det's upsampling head: 5.7 ms for 2.5 M
    floats); in DCR each output pixel copies a contiguous row of C input channels."""
    from tvm import te

    n, height, width, depth = (int(d) for d in x.shape)
    channels = depth // (block * block)

    def channel(i, j, c):
        if mode == "DCR":
            return (i * block + j) * channels + c
        return c * block * block + i * block + j

    return te.compute(
        (n, height * block, width * block, channels),
        lambda b, y, z, c: x[b, y // block, z // block, channel(y % block, z % block, c)],
        name="depth_to_space",
    )


def pad_nhwc(x, *, padding: tuple[int, int, int, int], channels_to: int | None = None):
    """NHWC `x` with zero rows and columns around it (top, left, bottom, right): the conv
    kernel reads every tap without a test. nhwc_schedules' pack rule cuts the border off, so
    the interior is a plain copy. `channels_to`: zero channels after x's, up to that many
    (a pixel stride the conv's reads do not alias in the cache: float/lowering)."""
    from tvm import te, tirx

    n, height, width, channels = (int(d) for d in x.shape)
    top, left, bottom, right = padding

    def pad(b, h, w, c):
        y, z = h - top, w - left
        inside = tirx.all(y >= 0, y < height, z >= 0, z < width)
        if channels_to is not None and channels_to > channels:
            inside = tirx.all(inside, c < channels)
        return tirx.if_then_else(inside, x[b, y, z, c], tirx.const(0.0, x.dtype))

    shape = (n, height + top + bottom, width + left + right, max(channels, channels_to or 0))
    interior = [top, top + height - 1, left, left + width - 1]
    attrs = {"schedule_rule": PACK_RULE, INTERIOR_ATTR: interior}
    return te.compute(shape, pad, name="pad", attrs=attrs)
