"""lrn_as_conv: LocalResponseNormalization as a 1x1 convolution and elementwise ops.

    LRN(x) => x / Pow(Conv(x * x, band, bias), beta)
    (beta 0.75: Sqrt(s) * Sqrt(Sqrt(s)) for Pow(s, 0.75); beta 0.5: Sqrt(s); beta 1: s)

where band[o, i] = alpha / size for the input channels i in o's window (ONNX: from
o - floor((size - 1) / 2) to o + ceil((size - 1) / 2)), else 0: the convolution computes
bias + alpha / size * (the sum of squares over the window) for every channel at once.

TVM imports LRN as a square, an avg_pool3d over a channel axis made for it, and a pow: no kernel
of edgepress takes the pool, and the pow and the transposes around it ran as scalar loops.
GoogLeNet's two LRNs took 17.7 of its 38.6 ms (Intel Xeon, 1 thread); AlexNet and ZFNet have two
each. A C x C 1x1 convolution does C / size times the additions the window needs, on the NHWC
conv kernels, with the rest in its epilogue: the same sums up to float32 rounding (each term is
scaled before it is added, not after). int8 builds leave the convolution in float
(quantize_int8 excludes it by its name): its input is squares, whose range 8 bits would not
hold.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node

WINDOW_SUM = "lrn_window_sum"  # the suffix of the name of each convolution this pass makes


def is_window_sum(node_name: str) -> bool:
    """Whether a Conv node is one of this pass's window sums (quantize_int8 keeps them float)."""
    return node_name.endswith(WINDOW_SUM)


def _attribute(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return attr.as_int() if isinstance(default, int) else attr.as_float()


def _channels(node: ir.Node) -> int | None:
    """The channel count of an LRN this pass rewrites: a float32 NCHW input of static C."""
    if node.op_type != "LRN" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
        return None
    x = node.inputs[0]
    if x is None or x.dtype != ir.DataType.FLOAT or x.shape is None or len(x.shape) != 4:
        return None
    channels = x.shape[1]
    return channels if isinstance(channels, int) else None


def band(channels: int, size: int, alpha: float) -> np.ndarray:
    """The [C, C, 1, 1] weight summing each channel's window of squares, times alpha / size."""
    before, after = (size - 1) // 2, -(-(size - 1) // 2)
    weight = np.zeros((channels, channels, 1, 1), np.float32)
    for out in range(channels):
        weight[out, max(0, out - before) : min(channels, out + after + 1)] = alpha / size
    return weight


@register_pass("lrn_as_conv")
def lrn_as_conv(model: ir.Model) -> PassResult:
    """Every 4-D float32 LRN of a static channel count as a square, a 1x1 Conv over the
    channel windows, a power and a division."""
    common_passes.ShapeInferencePass()(model)  # the channel count is the input's shape
    graph = model.graph
    rewritten = 0
    for node in list(graph):
        channels = _channels(node)
        if channels is None:
            continue
        size = _attribute(node, "size", 0)
        if size < 1:  # a malformed LRN: TVM's importer names it
            continue
        alpha = _attribute(node, "alpha", 0.0001)
        beta = _attribute(node, "beta", 0.75)
        bias = _attribute(node, "bias", 1.0)
        base = node.name or "lrn"
        weight = add_initializer(graph, f"{base}_band", band(channels, size, alpha))
        offset = add_initializer(graph, f"{base}_bias", np.full(channels, bias, np.float32))
        x = node.inputs[0]
        tape = ir.tape.Tape()
        squares = tape.op("Mul", [x, x])
        total = tape.op("Conv", [squares, weight, offset], attributes={"kernel_shape": [1, 1]})
        if beta == 0.75:
            root = tape.op("Sqrt", [total])
            power = tape.op("Mul", [root, tape.op("Sqrt", [root])])
        elif beta == 0.5:
            power = tape.op("Sqrt", [total])
        elif beta == 1.0:
            power = total
        else:
            exponent = add_initializer(graph, f"{base}_beta", np.array(beta, np.float32))
            power = tape.op("Pow", [total, exponent])
        out = tape.op("Div", [x, power])
        replace_node(node, tape.nodes, [out])
        total.producer().name = f"{base}_{WINDOW_SUM}"
        rewritten += 1
    return PassResult(model, rewritten)
