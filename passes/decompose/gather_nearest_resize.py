"""gather_nearest_resize: a nearest-neighbour Resize whose scale is not its output size over its
input size, as Gathers of the indices the ONNX spec gives.

The spec maps an output coordinate back with the *given* scale (asymmetric: x / scale;
half_pixel: (x + 0.5) / scale - 0.5; ...). TVM 0.27's resize divides by output size / input size
instead, which differs when input x scale is not a whole number (7 x 1.5 = 10.5 makes 10
outputs: TVM maps by 10/7, the spec by 1.5) and picked the wrong pixels. With static shapes every
index is a constant: computed here in float32, as onnxruntime does, then one Gather per resized
axis (a copy, exact on every target). Linear and cubic Resizes of that kind stay (the build's
verification then says whether TVM got them right).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import onnx_opset, replace_node

log = logging.getLogger(__name__)


def _source_coordinate(mode: str, out: np.ndarray, scale: np.float32, length_in: int,
                       length_out: int) -> np.ndarray | None:  # fmt: skip
    half = np.float32(0.5)
    if mode == "asymmetric":
        return out / scale
    if mode == "half_pixel":
        return (out + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (out + half) / scale - half if length_out > 1 else np.zeros_like(out)
    if mode == "tf_half_pixel_for_nn":
        return (out + half) / scale
    if mode == "align_corners":
        if length_out == 1:
            return np.zeros_like(out)
        return out * np.float32(length_in - 1) / np.float32(length_out - 1)
    return None


def _round(x: np.ndarray, nearest_mode: str) -> np.ndarray | None:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - np.float32(0.5))
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + np.float32(0.5))
    if nearest_mode == "floor":
        return np.floor(x)
    if nearest_mode == "ceil":
        return np.ceil(x)
    return None


def _plan(node: ir.Node, opset: int) -> tuple[list[tuple[int, np.ndarray]] | None, str | None]:
    """([(axis, indices)], None) when the node is such a Resize, else (None, why not)."""
    attrs = node.attributes
    if attrs.get_string("mode", "nearest") != "nearest":
        return None, "not nearest"
    if opset < 11:
        return None, "opset 10 Resize (converted first, see compiler/opset_upgrade.py)"
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.shape is None or y.shape is None:
        return None, "shapes are not known"
    if not all(isinstance(d, int) for d in (*x.shape, *y.shape)):
        return None, "shapes are not static"
    scales = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if scales is None or scales.size == 0:
        return None, "sizes given: TVM maps by the same ratio as the spec"
    if attrs.get_ints("axes", None) is not None or attrs.get_int("antialias", 0):
        return None, "axes or antialias"
    mode = attrs.get_string("coordinate_transformation_mode", "half_pixel")
    nearest_mode = attrs.get_string("nearest_mode", "round_prefer_floor")
    scales = scales.astype(np.float32)
    if all(float(d * s).is_integer() for d, s in zip(x.shape, scales)):
        return None, "every input size x scale is whole: TVM maps as the spec does"
    plan = []
    for axis, (length_in, length_out, scale) in enumerate(zip(x.shape, y.shape, scales)):
        if length_in == length_out and scale == 1:
            continue
        out = np.arange(length_out, dtype=np.float32)
        coordinate = _source_coordinate(mode, out, scale, length_in, length_out)
        if coordinate is None:
            return None, f"coordinate_transformation_mode {mode}"
        rounded = _round(coordinate.astype(np.float32), nearest_mode)
        if rounded is None:
            return None, f"nearest_mode {nearest_mode}"
        plan.append((axis, np.clip(rounded, 0, length_in - 1).astype(np.int64)))
    return plan, None


@register_pass("gather_nearest_resize")
def gather_nearest_resize(model: ir.Model) -> PassResult:
    """Resize(nearest, scales with input x scale not whole) => Gather per resized axis."""
    ir.passes.common.ShapeInferencePass()(model)
    opset = onnx_opset(model)
    changes = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
            continue
        plan, why = _plan(node, opset)
        if plan is None:
            log.debug("keep Resize '%s': %s", node.name, why)
            continue
        tape, value = ir.tape.Tape(), node.inputs[0]
        for axis, indices in plan:
            index = add_initializer(model.graph, f"{node.name or 'resize'}_indices", indices)
            value = tape.op("Gather", [value, index], {"axis": axis})
        replace_node(node, tape.nodes, [value])
        changes += 1
    return PassResult(model, changes)
