"""conv_along_width: convolutions over one spatial axis as 2-D convolutions along the width.

    Conv(x[N,C,L], w[O,C,k])          => Reshape(Conv(Reshape(x, [N,C,1,L]), w[O,C,1,k]), [N,O,L'])
    Conv(x[N,C,H,1], w[O,C,k,1])      => Reshape(Conv(Reshape(x, [N,C,1,H]), w[O,C,1,k]), [N,O,H',1])

A sequence model's 1-D convolutions (audio, bytes, text) import into TVM as conv1d, which no
kernel of edgepress takes: TVM's generic lowering. tf2onnx writes a Keras Conv1D as a 2-D
convolution over [N, C, L, 1] (magika: one such convolution was 82% of its time), which the
NHWC kernels take but tile along a width of 1: one output pixel per register tile. Along the
width, the row of L positions fills the tiles. Both reshapes only relabel a dimension of size
1 (free in NCHW and in NHWC), and the arithmetic is the same products summed in the same order.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import replace_node


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def _plan(node: ir.Node) -> tuple[np.ndarray, bool] | None:
    """The weight as [O, C/group, 1, k] and whether the conv is 1-D, when it is a conv this
    pass rewrites; else None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    weight = constant_array(w)
    if x is None or weight is None or x.shape is None or not x.shape.is_static():
        return None
    if weight.ndim == 3 and len(x.shape) == 3:
        return weight[:, :, None, :], True
    if weight.ndim != 4 or len(x.shape) != 4 or x.shape[3] != 1 or weight.shape[3] != 1:
        return None
    if x.shape[2] == 1:  # a 1x1 map: nothing to gain
        return None
    pads = _ints(node, "pads", [0, 0, 0, 0])
    if pads[1] != 0 or pads[3] != 0:  # padded width: an output wider than 1
        return None
    return weight.transpose(0, 1, 3, 2), False


def _along_width(node: ir.Node, one_d: bool) -> dict[str, ir.Attr]:
    """The node's attributes for the same conv with its one spatial axis as the width."""

    def along_width(name: str, default: int) -> list[int]:
        return [default, _ints(node, name, [default])[0]]

    new = {
        "strides": ir.AttrInt64s("strides", along_width("strides", 1)),
        "dilations": ir.AttrInt64s("dilations", along_width("dilations", 1)),
    }
    auto_pad = node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.as_string() != "NOTSET":
        new["auto_pad"] = auto_pad  # SAME_* pads the width as it padded the axis; 0 on the 1
    else:
        pads = _ints(node, "pads", [0] * (2 if one_d else 4))
        begin, end = (pads[0], pads[1]) if one_d else (pads[0], pads[2])
        new["pads"] = ir.AttrInt64s("pads", [0, begin, 0, end])
    kernel = node.attributes.get("kernel_shape")
    if kernel is not None:
        new["kernel_shape"] = ir.AttrInt64s("kernel_shape", [1, kernel.as_ints()[0]])
    if "group" in node.attributes:
        new["group"] = node.attributes["group"]
    return new


@register_pass("conv_along_width")
def conv_along_width(model: ir.Model) -> PassResult:
    """Every 1-D conv, and every 2-D conv over [N, C, H, 1] with a k x 1 kernel, as a 2-D conv
    over [N, C, 1, L] with a 1 x k kernel between two reshapes."""
    graph = model.graph
    rewritten = 0
    for node in list(graph):
        planned = _plan(node)
        if planned is None:
            continue
        weight, one_d = planned
        x = node.inputs[0]
        base = node.name or "conv"
        rows_shape = add_initializer(graph, f"{base}_rows_shape", np.array([0, 0, 1, -1]))
        back = add_initializer(graph, f"{base}_back_shape", np.array([0, 0, -1] if one_d else [0, 0, -1, 1]))
        weight = add_initializer(graph, f"{node.inputs[1].name}_along_width", weight)
        tape = ir.tape.Tape()
        rows = tape.op("Reshape", [x, rows_shape])
        conv = tape.op("Conv", [rows, weight, *node.inputs[2:]], attributes=_along_width(node, one_d))
        out = tape.op("Reshape", [conv, back])
        name = node.name
        replace_node(node, tape.nodes, [out])
        conv.producer().name = name  # the report and the profile name layers by ONNX node
        rewritten += 1
    return PassResult(model, rewritten)
