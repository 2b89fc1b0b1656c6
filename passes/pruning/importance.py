"""How much each removable channel matters (the scoring half of the pruning policy).

A channel class spans several layers (a residual stream ties many). Each layer scores its own
slice of the class; a layer's scores are divided by their mean so that no layer dominates by the
scale of its weights, and the class's importance is the sum over its layers.
- l1, l2: norm of the output filter of every source producing the channel;
- bn: |gamma| of every BatchNormalization reading the channel (needs BN still in the graph);
- activation: for every layer consuming the channel, sqrt(E[x_c^2]) * ||W[:, c]||_2 on
  calibration data: the size of the channel's contribution to that layer's output, which is
  what removing it costs before reconstruction.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.pruning import PruningError
from edgepress.passes.pruning.channel_groups import ChannelGraph, consumers

METHODS = ("l1", "l2", "bn", "activation")


def output_slices(node: ir.Node) -> np.ndarray:
    """The source's weight as [out channels, everything else]."""
    w = constant_array(node.inputs[1])
    if node.op_type == "ConvTranspose" or (
        node.op_type == "Gemm" and not node.attributes.get_int("transB", 0)
    ):
        w = np.swapaxes(w, 0, 1)
    elif node.op_type == "MatMul":
        w = w.T
    return w.reshape(w.shape[0], -1)


def input_slices(node: ir.Node) -> np.ndarray:
    """The consumer's weight as [input channels, everything else]."""
    w = constant_array(node.inputs[1])
    if node.op_type == "Conv" or (node.op_type == "Gemm" and node.attributes.get_int("transB", 0)):
        w = np.swapaxes(w, 0, 1)
    return w.reshape(w.shape[0], -1)


def _normalized(scores: np.ndarray) -> np.ndarray:
    mean = float(np.mean(scores))
    return scores / mean if mean > 0 else scores


def layer_scores(
    cg: ChannelGraph, method: str, mean_squares: dict[ir.Value, np.ndarray] | None = None
) -> dict[ir.Value, list[np.ndarray]]:
    """Value -> normalized per-channel score vectors, one per layer scoring that value."""
    scores: dict[ir.Value, list[np.ndarray]] = defaultdict(list)
    if method in ("l1", "l2"):
        order = 1 if method == "l1" else 2
        for node in cg.sources:
            norms = np.linalg.norm(output_slices(node).astype(np.float64), ord=order, axis=1)
            scores[node.outputs[0]].append(_normalized(norms))
    elif method == "bn":
        for value in cg.spaces:
            for node, index in value.uses():
                if node.op_type == "BatchNormalization" and index == 0:
                    gamma = constant_array(node.inputs[1])
                    if gamma is not None:
                        scores[value].append(_normalized(np.abs(gamma.astype(np.float64))))
    elif method == "activation":
        if mean_squares is None:
            raise PruningError("activation importance needs calibration data")
        for value in cg.spaces:
            for node in consumers(cg, value):
                if value not in mean_squares:
                    continue
                norms = np.linalg.norm(input_slices(node).astype(np.float64), axis=1)
                scores[value].append(_normalized(np.sqrt(mean_squares[value]) * norms))
    else:
        raise PruningError(f"unknown importance {method!r}; expected one of {', '.join(METHODS)}")
    return scores


def class_importance(
    cg: ChannelGraph,
    method: str,
    mean_squares: dict[ir.Value, np.ndarray] | None = None,
) -> dict[int, float]:
    """Removable class root -> importance (larger matters more)."""
    per_value = layer_scores(cg, method, mean_squares)
    if method == "bn" and not per_value:
        raise PruningError(
            "bn importance needs BatchNormalization nodes, and the model has none (fuse_conv_bn "
            "folds them: leave it out of --passes to rank by BN scale)"
        )
    importance = {}
    for root, members in cg.removable().items():
        total = 0.0
        for value, c in members:
            total += sum(float(v[c]) for v in per_value.get(value, ()))
        importance[root] = total
    return importance


def channel_mean_squares(
    cg: ChannelGraph, activations: dict[str, np.ndarray]
) -> dict[ir.Value, np.ndarray]:
    """E[x_c^2] over samples and positions, for the tracked values named in `activations`
    (stacked on a leading sample axis)."""
    out = {}
    for value, space in cg.spaces.items():
        array = activations.get(value.name)
        if array is None:
            continue
        moved = np.moveaxis(array.astype(np.float64), space.axis + 1, -1)
        out[value] = np.mean(np.square(moved.reshape(-1, space.size)), axis=0)
    return out
