"""equalize_depthwise_inputs: give each channel of a depthwise conv's input its own int8 grid,
inside one per-tensor grid.

A depthwise conv reads each input channel alone, and the channels a pointwise conv and a
HardSwish leave span very different ranges: a layout detector's (PicoDet) 64 channels run up to
2.7 at the median and to 47 in one, so a per-tensor uint8 grid gives the median channel 15
levels, and the depthwise weights (BN folded in) amplify that noise. Cross-layer equalization
(equalize_cross_layer) moves the scale into the previous conv, but only across a positively
homogeneous activation (ReLU); HardSwish, SiLU and Sigmoid are not.

Here the scale goes after the activation instead: x -> Mul(x, 1 / k) -> depthwise conv with
weights w[c] * k[c]. The float model computes the same function; the Mul is one more float op
in the activation's chain (quantize_int8 leaves it float, the int8 lowering runs it in the
chain's kernel), and the per-tensor grid now sees every channel at a similar range. One grid
[-r, 1 - r] is shared, so each channel's k is the least that fits its [low, high] in it, and r
is chosen to minimize the channels' summed relative step^2 (a channel's own fraction below
zero fits it exactly).

Needs per-channel ranges from calibration data (`ranges`, calibration.channel_ranges of
`depthwise_inputs`); applies where the depthwise conv is the input's only reader and the
input is made by an op int8 leaves float (a Relu or Clip output is quantized itself, and
rescaling after that rounding would round twice).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer, fresh_name
from edgepress.passes.quantization.quantize_int8 import OP_TYPES
from edgepress.passes.registry import PassResult, register_pass

# A channel is magnified at most this much against the widest: below 1/256 of the grid a
# channel holds no level anyway, and larger gains push the weights' int32 biases out of range.
MAX_GAIN = 256.0


def _depthwise_reader(value: ir.Value) -> ir.Node | None:
    """The depthwise Conv that is `value`'s only reader, if it is one."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output() or value.is_graph_input():
        return None
    node, index = uses[0]
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or index != 0:
        return None
    weight = constant_array(node.inputs[1])
    group = node.attributes.get_int("group", 1)  # the input's channels: group x weight.shape[1]
    if weight is None or weight.ndim < 3 or weight.shape[1] != 1 or group == 1:
        return None
    return node if weight.shape[0] % group == 0 else None


def depthwise_inputs(model: ir.Model) -> list[str]:
    """The values the pass would rescale, whose per-channel ranges it needs."""
    found = []
    for node in model.graph:
        if node.op_type in OP_TYPES:
            continue
        for value in node.outputs:
            if value.name and _depthwise_reader(value) is not None:
                found.append(value.name)
    return found


def channel_gains(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """k per channel (the widest channel's 1): channel c divided by k[c] fits the shared grid
    [-r, 1 - r] scaled by max(k), with r minimizing sum((k / width)^2) over the live channels."""
    low = np.minimum(np.asarray(low, np.float64), 0.0)
    high = np.maximum(np.asarray(high, np.float64), 0.0)
    width = high - low
    if width.max(initial=0.0) <= 0.0:
        return np.ones_like(width)
    floor = width.max() / MAX_GAIN
    live = width > floor
    below = np.unique(np.append(-low[live] / width[live], 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = below[:, None]
        up = np.where(high > 0, high / (1.0 - r), 0.0)
        down = np.where(low < 0, -low / r, 0.0)
        k = np.maximum(up, down)  # [candidate r, channel]
    k = np.where(np.isfinite(k), k, np.inf)
    cost = ((k[:, live] / width[live]) ** 2).sum(axis=1)
    gains = k[int(np.argmin(cost))]
    gains = np.maximum(np.where(np.isfinite(gains), gains, 0.0), gains[live].max() / MAX_GAIN)
    return gains / gains.max()


@register_pass("equalize_depthwise_inputs")
def equalize_depthwise_inputs(
    model: ir.Model, *, ranges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
) -> PassResult:
    """x -> depthwise Conv => x * (1 / k) -> depthwise Conv with weights w * k, k per channel
    from calibration ranges: the same function, one int8 grid that fits every channel.

    Needs `ranges` (value name -> per-channel low and high); counts the convs rescaled.
    """
    if ranges is None:
        raise ValueError(
            "equalize_depthwise_inputs needs per-channel ranges from calibration: it runs in "
            "every --quantize int8 build rather than by name in --passes"
        )
    graph = model.graph
    values = {v.name: v for node in graph for v in node.outputs}
    changed = 0
    for name, (low, high) in ranges.items():
        value = values.get(name)
        conv = _depthwise_reader(value) if value is not None else None
        if conv is None or len(low) != conv.attributes.get_int("group", 1):
            continue
        gains = channel_gains(low, high)
        if np.allclose(gains, 1.0):
            continue
        weight = constant_array(conv.inputs[1])
        per_output = np.repeat(gains, weight.shape[0] // len(gains))
        scaled = weight * per_output.reshape((-1,) + (1,) * (weight.ndim - 1)).astype(weight.dtype)
        shape = (1, len(gains)) + (1,) * (weight.ndim - 2)
        inverse = add_initializer(
            graph, f"{name}_channel_gain", (1.0 / gains).reshape(shape).astype(weight.dtype)
        )
        mul = ir.Node(
            "", "Mul", [value, inverse], name=fresh_name(graph, f"{conv.name}_input_gain"),
            outputs=[ir.Value(name=fresh_name(graph, f"{name}_equalized"),
                              shape=value.shape, type=value.type)],
        )  # fmt: skip
        graph.insert_before(conv, mul)
        conv.replace_input_with(0, mul.outputs[0])
        old_weight = conv.inputs[1]
        conv.replace_input_with(
            1, add_initializer(graph, f"{conv.name or 'conv'}_weight_equalized", scaled)
        )
        if not old_weight.uses() and old_weight.name in graph.initializers:
            del graph.initializers[old_weight.name]  # unread: onnxruntime warns of it
        changed += 1
    return PassResult(model, changed)
