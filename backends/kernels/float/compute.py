"""Float32 convolution kernels (TE) on NHWC activations, for float/lowering.

TVM 0.27 has no fast float convolution for CPUs: TOPI's NCHW conv2d with one untimed sample
of MetaSchedule's design space ran ResNet-18 at 0.10x onnxruntime, and 40 minutes of tuning
brought it to 0.43x. The kernel a CPU wants is known (it is what onnxruntime's MLAS and the
int8 kernels of int8/compute do): a register tile of Z output pixels x B blocks of `lanes`
output channels accumulates in vector registers while the reduction over the window and the
input channels runs outside it; each weight vector is loaded once per tile and serves the Z
pixels, each input value is broadcast once per block (AVX-512 folds the broadcast into the
FMA). So:

- activations are NHWC: an output vector is `lanes` contiguous channels of one pixel;
- weights are packed [OC/lanes, IC, KH, KW, lanes] in numpy at build time (zero-filled to
  whole blocks);
- the bias is added in the epilogue, where the rest of the layer (relu, clip, a residual
  add, which FuseOps fuses behind the kernel) reads the accumulators before they leave the
  tile (float/schedules).

Depthwise convolutions have no channel reduction to tile: they vectorize over channels, with
their padding read in the kernel (nhwc_schedules' depthwise rule, shared with the int8 one).
"""

from __future__ import annotations

import numpy as np

from edgepress.backends.kernels.common.nhwc_compute import depthwise_sums, output_size


def pack_conv_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """float32 OIHW -> [OC/lanes, IC, KH, KW, lanes], zero-filled to whole blocks."""
    oc, ic, kh, kw = weight.shape
    ocp = -(-oc // lanes) * lanes
    padded = np.zeros((ocp, ic, kh, kw), np.float32)
    padded[:oc] = weight
    return np.ascontiguousarray(
        padded.reshape(ocp // lanes, lanes, ic, kh, kw).transpose(0, 2, 3, 4, 1)
    )


def conv2d_nhwc(
    xp,
    weight,
    bias,
    *,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_channels: int,
    out_width: int | None = None,
    in_offset: int = 0,
):
    """conv2d of padded NHWC `xp` with packed weights (pack_conv_weight) plus `bias` [OC]
    (None: no bias): NHWC [N, OH, OW, out_channels]. Weights of rank 6 hold one packed weight
    per image of the batch ([N, OC/lanes, IC, KH, KW, lanes]: Winograd's 16 products, one per
    tile position). The accumulating block names float/schedules' rule. `out_width` < the
    columns `xp` gives: those beyond it are computed (float/schedules.padded_width: a row
    length with a better tile) and dropped. The input channels read are `in_offset` onwards
    (a group of a grouped conv, read in place rather than sliced out first)."""
    from tvm import te

    from edgepress.backends.kernels.float.schedules import RULE

    n, height, width, _ = (int(d) for d in xp.shape)
    blocks, in_channels, kh, kw, lanes = (int(d) for d in weight.shape[-5:])
    sh, sw = strides
    dh, dw = dilation
    oh = output_size(height, 0, kh, sh, dh)
    ow = output_size(width, 0, kw, sw, dw)
    rc = te.reduce_axis((0, in_channels), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def w(b, ob, oi):
        if len(weight.shape) == 6:
            return weight[b, ob, rc, ry, rx, oi]
        return weight[ob, rc, ry, rx, oi]

    # as written without an offset: the kernel's workload key (and the shipped tuning
    # records) stay those of every ungrouped conv
    channel = rc if in_offset == 0 else in_offset + rc
    acc = te.compute(
        (n, blocks, oh, ow, lanes),
        lambda b, ob, y, z, oi: te.sum(
            xp[b, y * sh + ry * dh, z * sw + rx * dw, channel] * w(b, ob, oi),
            axis=[rc, ry, rx],
        ),
        name="conv_float",
        attrs={"schedule_rule": RULE},
    )

    def out(b, y, z, c):
        total = acc[b, c // lanes, y, z, c % lanes]
        return total if bias is None else total + bias[c]

    shape = (n, oh, ow if out_width is None else out_width, out_channels)
    return te.compute(shape, out, name="bias_add")


NARROW_RULE = "edgepress.narrow_pointwise"  # float/schedules.schedule_narrow_pointwise


def narrow_pointwise(x, weight, bias):
    """A 1x1 conv (or a matmul) to at most an eighth of a vector of output channels (a
    detector head's objectness: 96 -> 1) as one dot product per output
    over the input channels, contiguous in NHWC: the direct kernel's vector of output channels
    would be mostly zero padding. `x` NHWC [N, H, W, C], `weight` [K, C], `bias` [K]."""
    from tvm import te

    n, height, width, channels = (int(d) for d in x.shape)
    outputs = int(weight.shape[0])
    rc = te.reduce_axis((0, channels), name="rc")
    sums = te.compute(
        (n, height, width, outputs),
        lambda b, y, z, o: te.sum(x[b, y, z, rc] * weight[o, rc], axis=rc),
        name="narrow_sums",
        attrs={"schedule_rule": NARROW_RULE},
    )
    return te.compute(
        (n, height, width, outputs), lambda b, y, z, o: sums[b, y, z, o] + bias[o], name="bias_add"
    )


def depthwise_conv2d_nhwc(
    x,
    weight,
    bias,
    *,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    lanes: int,
):
    """Depthwise conv2d of NHWC `x` with weights [1, KH, KW, C] (nhwc_compute's
    pack_depthwise_weight layout) plus `bias` [1, 1, 1, C]. Padding reads as 0 in the kernel:
    each tap's test is marked likely and the depthwise rule cuts the border off, where the
    tests fold. `lanes` (the target's float32 vector width) sizes the rule's register tile."""
    from tvm import te

    acc = depthwise_sums(
        x, weight, strides=strides, padding=padding, dilation=dilation, pad_value=0.0, lanes=lanes
    )
    return te.compute(
        acc.shape, lambda b, y, z, c: acc[b, y, z, c] + bias[0, 0, 0, c], name="bias_add"
    )


# Winograd F(2x2, 3x3): a 3x3 stride-1 convolution computed per 2x2 output tile from its 4x4
# input tile, as 16 independent matrix products over the channels (2.25x fewer multiplies than
# the direct kernel). F(2x2, 3x3)'s transforms are additions and halvings, exact or nearly
# so in float32, so its results stay as close to onnxruntime's as the direct kernel's (F(4x4,
# 3x3), TVM's --winograd, is 4x fewer but adds error in proportion to the tensor's scale).
# Input transform B^T d B: each row of B^T as (index, sign) pairs of the two terms it adds.
WINOGRAD_INPUT = ((0, 1.0, 2, -1.0), (1, 1.0, 2, 1.0), (2, 1.0, 1, -1.0), (1, 1.0, 3, -1.0))
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
WINOGRAD_TILE = 2  # output pixels per tile side
WINOGRAD_RULE = "edgepress.winograd_transform"  # float/schedules.schedule_winograd_transform


def winograd_tiles(height: int, width: int) -> tuple[int, int]:
    """Tiles per column and per row of an output of height x width."""
    return -(-height // WINOGRAD_TILE), -(-width // WINOGRAD_TILE)


def winograd_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """float32 OIHW 3x3 -> G g G^T per tile position, packed [16, OC/lanes, IC, 1, 1, lanes]
    (each position's weights as conv2d_nhwc's packed 1x1 weights, zero-filled to whole blocks);
    computed in float64, once, at build time."""
    oc, ic = weight.shape[:2]
    u = np.einsum("xi,ocij,yj->xyoc", WINOGRAD_G, weight.astype(np.float64), WINOGRAD_G)
    ocp = -(-oc // lanes) * lanes
    padded = np.zeros((16, ocp, ic), np.float64)
    padded[:, :oc] = u.reshape(16, oc, ic)
    blocks = padded.reshape(16, ocp // lanes, lanes, ic).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(blocks[:, :, :, None, None, :]).astype(np.float32)


def _select(position, values: list):
    """values[position] for a position known only as an expression: a chain of selects, which
    fold to one value once the schedule unrolls the position's loop."""
    from tvm import tirx

    result = values[-1]
    for i in range(len(values) - 2, -1, -1):
        result = tirx.Select(position == i, values[i], result)
    return result


def winograd_input(xp, *, tiles: tuple[int, int]):
    """B^T d B of every 4x4 tile of padded NHWC `xp` (the conv's padding around it, and enough
    rows and columns for whole tiles): [16, 1, tiles, C], position-major, so that each
    position's values are the NHWC input of a 1x1 conv over the tiles."""
    from tvm import te, tirx

    _, height, width, channels = (int(d) for d in xp.shape)
    rows, cols = tiles
    if height < WINOGRAD_TILE * rows + 2 or width < WINOGRAD_TILE * cols + 2:
        # TE does not check bounds: a short input would be read past its end
        raise ValueError(f"winograd_input: {height}x{width} is short of {rows}x{cols} tiles")

    def transform(e, _, p, c):
        xi, nu = e // 4, e % 4
        ty, tx = p // cols, p % cols
        total = None
        for u in (0, 2):
            i = _select(xi, [tirx.const(r[u], "int64") for r in WINOGRAD_INPUT])
            si = _select(xi, [tirx.const(r[u + 1], "float32") for r in WINOGRAD_INPUT])
            for w in (0, 2):
                j = _select(nu, [tirx.const(r[w], "int64") for r in WINOGRAD_INPUT])
                sj = _select(nu, [tirx.const(r[w + 1], "float32") for r in WINOGRAD_INPUT])
                term = si * sj * xp[0, ty * WINOGRAD_TILE + i, tx * WINOGRAD_TILE + j, c]
                total = term if total is None else total + term
        return total

    return te.compute(
        (16, 1, rows * cols, channels),
        transform,
        name="winograd_input",
        attrs={"schedule_rule": WINOGRAD_RULE},
    )


def winograd_output(m, bias, *, height: int, width: int, out_channels: int):
    """A^T M A + bias for every tile of the 16 positions' products `m` [16, 1, tiles,
    channels]: NHWC [1, height, width, out_channels]. A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]:
    output row r of a tile adds positions r, r + 1, r + 2, the last two negated when r = 1."""
    from tvm import te, tirx

    _, cols = winograd_tiles(height, width)

    def transform(b, y, x, k):
        ty, r = y // WINOGRAD_TILE, y % WINOGRAD_TILE
        tx, s = x // WINOGRAD_TILE, x % WINOGRAD_TILE
        p = ty * cols + tx
        total = None
        for u in range(3):
            for w in range(3):
                sign = 1.0
                if u:
                    sign *= tirx.Select(r == 0, tirx.const(1.0, "float32"), -1.0)
                if w:
                    sign *= tirx.Select(s == 0, tirx.const(1.0, "float32"), -1.0)
                term = m[(r + u) * 4 + s + w, 0, p, k]
                term = term if isinstance(sign, float) else sign * term
                total = term if total is None else total + term
        return total + bias[k]

    return te.compute(
        (1, height, width, out_channels),
        transform,
        name="winograd_output",
        attrs={"schedule_rule": WINOGRAD_RULE},
    )
