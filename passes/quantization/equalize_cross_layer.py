"""equalize_cross_layer: rescale channels between consecutive convolutions so their weight
ranges match (cross-layer equalization, Nagel et al. 2019; AIMET's CLE).

For Conv1 -> [Relu] -> Conv2 with output channel i of Conv1 feeding input channel i of Conv2:
ReLU(x / s) = ReLU(x) / s for s > 0, so dividing Conv1's channel i (weights and bias) by s_i and
multiplying Conv2's input channel i by s_i leaves the output unchanged. With r1_i = max|W1[i]|
and r2_i = max|W2[:, i]|, s_i = sqrt(r1_i / r2_i) makes both ranges sqrt(r1_i * r2_i): a
depthwise layer whose channels span very different ranges no longer wastes a per-tensor int8
grid on one of them. Repeated over the chain until the scales settle.

Needs constant weights, a Conv1 output (and Relu output) used only by the next Conv, and a
Conv2 that is either ungrouped or depthwise; an activation other than Relu (Relu6, Clip) is not
positively homogeneous and stops the pair.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass

log = logging.getLogger(__name__)

ROUNDS = 8
SETTLED = 1e-3  # stop when no scale moves a range by more than this fraction


def _only_user(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _is_conv(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Conv" and node.domain in ("", "ai.onnx")


def why_not_pair(first: ir.Node, second: ir.Node, channels: int) -> str | None:
    """None when `second` reads `first`'s channels one to one, else why not."""
    weight = constant_array(second.inputs[1])
    if weight is None:
        return "the second weight is not a constant"
    group = second.attributes.get_int("group", 1)
    if group == 1 and weight.shape[1] == channels:
        return None
    if group == channels and weight.shape[0] == channels and weight.shape[1] == 1:
        return None
    return f"the second Conv has group={group}: channels are not one to one"


def pairs(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node]]:
    """(Conv1, Conv2) pairs with only a Relu (or nothing) between them."""
    found = []
    for node in graph:
        if not _is_conv(node) or constant_array(node.inputs[1]) is None:
            continue
        user = _only_user(node.outputs[0])
        if user is not None and user.op_type == "Relu":
            user = _only_user(user.outputs[0])
        if not _is_conv(user) or user.inputs[0] is None:
            continue
        channels = constant_array(node.inputs[1]).shape[0]
        if reason := why_not_pair(node, user, channels):
            log.debug("skip %s -> %s: %s", node.name, user.name, reason)
            continue
        found.append((node, user))
    return found


def _set(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, base: str) -> None:
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, add_initializer(graph, base, array))


def _equalize(graph: ir.Graph, first: ir.Node, second: ir.Node) -> float:
    """Equalize one pair; returns the largest relative change of a range."""
    w1, w2 = constant_array(first.inputs[1]), constant_array(second.inputs[1])
    b1 = constant_array(first.inputs[2]) if len(first.inputs) > 2 and first.inputs[2] else None
    if len(first.inputs) > 2 and first.inputs[2] is not None and b1 is None:
        return 0.0  # a bias that is not constant cannot be rescaled
    depthwise = second.attributes.get_int("group", 1) > 1
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = (
        np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
        if depthwise
        else np.abs(np.swapaxes(w2, 0, 1)).reshape(w2.shape[1], -1).max(axis=1)
    )
    if np.any(r1 == 0) or np.any(r2 == 0):
        return 0.0  # a dead channel: leave the pair alone
    s = np.sqrt(r1 / r2).astype(w1.dtype)
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    _set(graph, first, 1, w1 / s.reshape(shape1), f"{first.name or 'conv'}_weight_equalized")
    if b1 is not None:
        _set(graph, first, 2, b1 / s, f"{first.name or 'conv'}_bias_equalized")
    shape2 = shape1 if depthwise else (1, -1) + (1,) * (w2.ndim - 2)
    _set(graph, second, 1, w2 * s.reshape(shape2), f"{second.name or 'conv'}_weight_equalized")
    return float(np.max(np.abs(s - 1)))


@register_pass("equalize_cross_layer")
def equalize_cross_layer(model: ir.Model, *, rounds: int = ROUNDS) -> PassResult:
    """Conv -> [Relu] -> Conv: per-channel rescaling that equalizes weight ranges, outputs
    unchanged (for int8 of depthwise-separable nets).

    Counts the pairs equalized. Skips pairs with another activation, shared outputs, grouped
    (non-depthwise) second convs and non-constant weights.
    """
    found = pairs(model.graph)
    changed = 0
    for round_ in range(rounds):
        moves = [_equalize(model.graph, a, b) for a, b in found]
        if round_ == 0:
            changed = sum(1 for m in moves if m >= SETTLED)
        if max(moves, default=0.0) < SETTLED:
            break
    common_passes.RemoveUnusedNodesPass()(model)
    return PassResult(model, changed)
