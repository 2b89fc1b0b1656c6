"""conv_transpose_as_depth_to_space: a ConvTranspose whose kernel equals its stride as a 1x1
Conv and a DepthToSpace.

    ConvTranspose(x[N,C,H,W], w[C,O,s,s], b[O]), kernel = strides = [s, s], no padding
      => DepthToSpace<blocksize=s, mode=DCR>(Conv(x, w'[s*s*O, C, 1, 1], b'[s*s*O]))

With kernel = stride the output windows do not overlap: output pixel (s*h + i, s*w + j) of
channel o is sum_c x[c, h, w] * w[c, o, i, j] + b[o], which is channel (i*s + j)*O + o of the
1x1 convolution at (h, w), and DepthToSpace's DCR mode puts that channel back at (s*h + i,
s*w + j). Each output is the same products summed over c in the same order. The upsampling
heads of detectors and segmenters (PaddleOCR's DB head, U-Nets, FPNs) write it this way;
TVM's generic conv2d_transpose ran ppocrv5-det's two at 1-4% of a core's peak (139 of its 205
ms), while the 1x1 conv is edgepress's kernel and DepthToSpace a copy. DCR (not CRD) because
the conv writes NHWC: with the O channels of one (i, j) next to each other, the copy moves
whole rows of channels (nhwc_rewriter.depth_to_space_in_nhwc); DCR is also DepthToSpace's
only mode before opset 11.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _stride(node: ir.Node, weight: np.ndarray) -> int | None:
    """s when `node` is a 2-D ConvTranspose with an s x s kernel, stride s, no padding, no
    dilation, one group and the plain output size; else None."""
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        return None
    s = weight.shape[2]
    if s < 2 or (_ints(node, "strides") or [1, 1]) != [s, s]:
        return None
    if (_ints(node, "kernel_shape") or [s, s]) != [s, s]:
        return None
    if any(_ints(node, "pads") or [0]) or any(_ints(node, "output_padding") or [0]):
        return None
    if (_ints(node, "dilations") or [1, 1]) != [1, 1] or "output_shape" in node.attributes:
        return None
    group = node.attributes.get("group")
    if group is not None and group.as_int() != 1:
        return None
    auto_pad = node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"):
        return None
    return s


@register_pass("conv_transpose_as_depth_to_space")
def conv_transpose_as_depth_to_space(model: ir.Model) -> PassResult:
    """Every 2-D ConvTranspose with kernel = stride, no padding, one group and constant
    weights, as a 1x1 Conv of s*s times the channels and a DepthToSpace (DCR)."""
    graph = model.graph
    rewritten = 0
    for node in list(graph):
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.inputs) < 2 or node.inputs[0] is None:
            continue
        weight = constant_array(node.inputs[1])
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if weight is None or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None):
            continue
        s = _stride(node, weight)
        if s is None:
            continue
        channels, outputs = weight.shape[0], weight.shape[1]
        # w'[(i*s + j)*O + o, c, 0, 0] = w[c, o, i, j]
        conv_weight = weight.transpose(2, 3, 1, 0).reshape(s * s * outputs, channels, 1, 1)
        conv_bias = np.tile(bias if bias is not None else np.zeros(outputs, weight.dtype), s * s)
        base = node.name or "conv_transpose"
        inputs = [
            node.inputs[0],
            add_initializer(graph, f"{base}_as_conv_weight", np.ascontiguousarray(conv_weight)),
            add_initializer(graph, f"{base}_as_conv_bias", conv_bias.astype(weight.dtype)),
        ]
        tape = ir.tape.Tape()
        conv = tape.op("Conv", inputs, attributes={"kernel_shape": [1, 1]})
        out = tape.op("DepthToSpace", [conv], attributes={"blocksize": s})  # DCR: the default
        name = node.name
        replace_node(node, tape.nodes, [out])
        conv.producer().name = name  # the report and the profile name layers by ONNX node
        rewritten += 1
    return PassResult(model, rewritten)
