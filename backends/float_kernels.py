"""Float32 convolution kernels (TE) on NHWC activations, for float_lowering.

TVM 0.27 has no fast float convolution for CPUs: TOPI's NCHW conv2d with one untimed sample
of MetaSchedule's design space ran ResNet-18 at 0.10x onnxruntime, and 40 minutes of tuning
brought it to 0.43x. The kernel a CPU wants is known (it is what onnxruntime's MLAS and the
int8 kernels of int8_kernels do): a register tile of Z output pixels x B blocks of `lanes`
output channels accumulates in vector registers while the reduction over the window and the
input channels runs outside it; each weight vector is loaded once per tile and serves the Z
pixels, each input value is broadcast once per block (AVX-512 folds the broadcast into the
FMA). So:

- activations are NHWC: an output vector is `lanes` contiguous channels of one pixel;
- weights are packed [OC/lanes, IC, KH, KW, lanes] in numpy at build time (zero-filled to
  whole blocks);
- the bias is added in the epilogue, where the rest of the layer (relu, clip, a residual
  add, which FuseOps fuses behind the kernel) reads the accumulators before they leave the
  tile (float_schedules).

Depthwise convolutions have no channel reduction to tile: they vectorize over channels, with
their padding read in the kernel (int8_schedules' depthwise rule, shared with the int8 one).
"""

from __future__ import annotations

import numpy as np

from edgepress.backends.int8_kernels import _output_size, _window_attrs


def pack_conv_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """float32 OIHW -> [OC/lanes, IC, KH, KW, lanes], zero-filled to whole blocks."""
    oc, ic, kh, kw = weight.shape
    ocp = -(-oc // lanes) * lanes
    padded = np.zeros((ocp, ic, kh, kw), np.float32)
    padded[:oc] = weight
    return np.ascontiguousarray(
        padded.reshape(ocp // lanes, lanes, ic, kh, kw).transpose(0, 2, 3, 4, 1)
    )


def pad_nhwc(x, *, padding: tuple[int, int, int, int]):
    """NHWC `x` with zero rows and columns around it (top, left, bottom, right): the conv
    kernel reads every tap without a test. int8_schedules' pack rule cuts the border off, so
    the interior is a plain copy."""
    from tvm import te, tirx

    from edgepress.backends.int8_schedules import INTERIOR_ATTR, PACK_RULE

    n, height, width, channels = (int(d) for d in x.shape)
    top, left, bottom, right = padding

    def pad(b, h, w, c):
        y, z = h - top, w - left
        inside = tirx.all(y >= 0, y < height, z >= 0, z < width)
        return tirx.if_then_else(inside, x[b, y, z, c], tirx.const(0.0, x.dtype))

    shape = (n, height + top + bottom, width + left + right, channels)
    interior = [top, top + height - 1, left, left + width - 1]
    attrs = {"schedule_rule": PACK_RULE, INTERIOR_ATTR: interior}
    return te.compute(shape, pad, name="pad", attrs=attrs)


def conv2d_nhwc(
    xp,
    weight,
    bias,
    *,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_channels: int,
):
    """conv2d of padded NHWC `xp` with packed weights (pack_conv_weight) plus `bias` [OC]:
    NHWC [N, OH, OW, out_channels]. The accumulating block names float_schedules' rule."""
    from tvm import te

    from edgepress.backends.float_schedules import RULE

    n, height, width, _ = (int(d) for d in xp.shape)
    blocks, in_channels, kh, kw, lanes = (int(d) for d in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    oh = _output_size(height, 0, kh, sh, dh)
    ow = _output_size(width, 0, kw, sw, dw)
    rc = te.reduce_axis((0, in_channels), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    acc = te.compute(
        (n, blocks, oh, ow, lanes),
        lambda b, ob, y, z, oi: te.sum(
            xp[b, y * sh + ry * dh, z * sw + rx * dw, rc] * weight[ob, rc, ry, rx, oi],
            axis=[rc, ry, rx],
        ),
        name="conv_float",
        attrs={"schedule_rule": RULE},
    )
    return te.compute(
        (n, oh, ow, out_channels),
        lambda b, y, z, c: acc[b, c // lanes, y, z, c % lanes] + bias[c],
        name="bias_add",
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
    """Depthwise conv2d of NHWC `x` with weights [1, KH, KW, C] (int8_kernels'
    pack_depthwise_weight layout) plus `bias` [1, 1, 1, C]. Padding reads as 0 in the kernel:
    each tap's test is marked likely and the depthwise rule cuts the border off, where the
    tests fold. `lanes` (the target's float32 vector width) sizes the rule's register tile."""
    from tvm import te, tirx

    from edgepress.backends.int8_schedules import DEPTHWISE_RULE, LANES_ATTR

    n, height, width, channels = (int(d) for d in x.shape)
    _, kh, kw, _ = (int(d) for d in weight.shape)
    top, left, bottom, right = padding
    oh = _output_size(height, top + bottom, kh, strides[0], dilation[0])
    ow = _output_size(width, left + right, kw, strides[1], dilation[1])
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def tap(b, y, z, c):
        h = y * strides[0] + ry * dilation[0] - top
        w = z * strides[1] + rx * dilation[1] - left
        inside = tirx.likely(tirx.all(h >= 0, h < height, w >= 0, w < width))
        return tirx.if_then_else(inside, x[b, h, w, c], tirx.const(0.0, x.dtype))

    attrs = _window_attrs(x, (kh, kw), strides, padding, dilation)
    acc = te.compute(
        (n, oh, ow, channels),
        lambda b, y, z, c: te.sum(tap(b, y, z, c) * weight[0, ry, rx, c], axis=[ry, rx]),
        name="depthwise_float",
        attrs={**attrs, "schedule_rule": DEPTHWISE_RULE, LANES_ATTR: lanes},
    )
    return te.compute(
        (n, oh, ow, channels),
        lambda b, y, z, c: acc[b, y, z, c] + bias[0, 0, 0, c],
        name="bias_add",
    )
