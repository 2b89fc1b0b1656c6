"""Recovering a pruned model's accuracy from calibration data alone.

Least squares (the reconstruction step of He et al., 2017, "Channel Pruning for Accelerating
Very Deep Neural Networks"): for each layer, in graph order, find the weights W and bias b that
map the pruned model's input X_p (what the layer now sees, earlier errors included) to the
original model's output Y_o (kept output channels only):

    min ||[P(X_p), 1] [W; b]^T - Y_o||^2 + lam ||[W; b] - [W_0; b_0]||^2

P extracts conv patches at sampled output positions. The ridge term pulls towards the current
weights, not towards zero, so directions the calibration data never excites stay as they were;
lam is a small fraction of the mean diagonal of the normal matrix.

Bias compensation: a removed input channel i of a layer contributed W[:, i] * E[x_i] on
average; that constant is added to the layer's bias (x from the original model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.quantization.sensitivity import run_samples

log = logging.getLogger(__name__)

RIDGE = 1e-3  # lam as a fraction of the normal matrix's mean diagonal
MAX_ROWS = 16384  # sampled patch rows per layer
METHODS = ("none", "bias", "lstsq")


@dataclass
class LayerFit:
    layer: str
    error_before: float  # relative squared error of the layer output on the sampled rows
    error_after: float
    note: str = ""


def why_not_reconstructable(node: ir.Node) -> str | None:
    if node.op_type == "Conv":
        w = constant_array(node.inputs[1])
        if node.attributes.get_int("group", 1) != 1:
            return "grouped Conv (its input channels follow its output channels)"
        if w is None or w.ndim != 4:
            return "not a 2-D Conv with a constant weight"
        if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return "auto_pad"
        return None
    if node.op_type == "Gemm":
        if (
            node.attributes.get_float("alpha", 1.0) != 1.0
            or node.attributes.get_float("beta", 1.0) != 1.0
        ):
            return "Gemm with alpha or beta other than 1"
        return None if constant_array(node.inputs[1]) is not None else "weight not constant"
    if node.op_type == "MatMul":
        return None if constant_array(node.inputs[1]) is not None else "weight not constant"
    return f"{node.op_type} is not reconstructed"


def _patches(node: ir.Node, x: np.ndarray, rows: np.ndarray, out_hw) -> np.ndarray:
    """Conv input patches [rows, Cin*kh*kw] at flat output positions `rows` of [N, OH, OW]."""
    kh, kw = constant_array(node.inputs[1]).shape[2:]
    sh, sw = node.attributes.get_ints("strides", [1, 1])
    dh, dw = node.attributes.get_ints("dilations", [1, 1])
    pt, pl, pb, pr = node.attributes.get_ints("pads", [0, 0, 0, 0])
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, rest = np.divmod(rows, out_hw[0] * out_hw[1])
    oh, ow = np.divmod(rest, out_hw[1])
    hh = oh[:, None, None] * sh + np.arange(kh)[None, :, None] * dh
    ww = ow[:, None, None] * sw + np.arange(kw)[None, None, :] * dw
    patch = padded[
        n[:, None, None, None],
        np.arange(x.shape[1])[None, :, None, None],
        hh[:, None, :, :],
        ww[:, None, :, :],
    ]
    return patch.reshape(len(rows), -1)


def _design(node: ir.Node, x: np.ndarray, y: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(rows of inputs, rows of targets) for the layer's least-squares problem."""
    if node.op_type == "Conv":
        out_hw = y.shape[2:]
        total = y.shape[0] * out_hw[0] * out_hw[1]
        rows = np.sort(rng.choice(total, min(total, MAX_ROWS), replace=False))
        targets = np.moveaxis(y, 1, -1).reshape(total, -1)[rows]
        return _patches(node, x, rows, out_hw), targets
    xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if len(xs) > MAX_ROWS:
        rows = np.sort(rng.choice(len(xs), MAX_ROWS, replace=False))
        xs, ys = xs[rows], ys[rows]
    return xs, ys


def _weights_as_matrix(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None]:
    """(W as [outputs, inputs], bias or None) in the layout of `_design`'s rows."""
    w = constant_array(node.inputs[1])
    bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1), bias
    if node.op_type == "Gemm":
        w = w if node.attributes.get_int("transB", 0) else w.T
        if bias is not None:
            bias = np.broadcast_to(bias.reshape(-1), (w.shape[0],))
        return w, bias
    return w.T, None


def _store(graph: ir.Graph, node: ir.Node, w: np.ndarray, bias: np.ndarray | None) -> None:
    old = constant_array(node.inputs[1])
    if node.op_type == "Conv":
        w = w.reshape(old.shape)
    elif node.op_type == "Gemm":
        w = w if node.attributes.get_int("transB", 0) else w.T
    else:
        w = w.T
    name = node.name or node.op_type
    node.replace_input_with(1, add_initializer(graph, f"{name}_reconstructed", w.astype(old.dtype)))
    if bias is not None:
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(
            2, add_initializer(graph, f"{name}_bias_reconstructed", bias.astype(old.dtype))
        )


def _relative_error(pred: np.ndarray, target: np.ndarray) -> float:
    denom = float(np.sum(np.square(target, dtype=np.float64)))
    return float(np.sum(np.square(pred - target, dtype=np.float64))) / max(denom, 1e-30)


def fit_layer(
    graph: ir.Graph, node: ir.Node, x: np.ndarray, y: np.ndarray, seed: int = 0
) -> LayerFit:
    """Least-squares refit of one layer from its (pruned) input x to its target output y."""
    rng = np.random.default_rng(seed)
    xs, ys = _design(node, x.astype(np.float64), y.astype(np.float64), rng)
    w0, b0 = _weights_as_matrix(node)
    has_bias = node.op_type != "MatMul"
    if has_bias:
        xs = np.hstack([xs, np.ones((len(xs), 1))])
        b_start = b0 if b0 is not None else np.zeros(w0.shape[0])
        theta0 = np.hstack([w0, b_start[:, None]]).T.astype(np.float64)
    else:
        theta0 = w0.T.astype(np.float64)
    before = _relative_error(xs @ theta0, ys)
    gram = xs.T @ xs
    lam = RIDGE * float(np.mean(np.diag(gram))) + 1e-12
    theta = np.linalg.solve(gram + lam * np.eye(len(gram)), xs.T @ ys + lam * theta0)
    after = _relative_error(xs @ theta, ys)
    if not after < before:
        return LayerFit(node.name, before, before, "kept: the fit did not improve")
    if has_bias:
        _store(graph, node, theta[:-1].T, theta[-1])
    else:
        _store(graph, node, theta.T, None)
    return LayerFit(node.name, before, after)


def reconstruct(
    model: ir.Model,
    original: onnx.ModelProto,
    layers: list[ir.Node],
    data: dict[str, np.ndarray],
    keep: dict[ir.Value, np.ndarray],
) -> list[LayerFit]:
    """Refit `layers` (in graph order) of the pruned `model` to the original's outputs, cut to
    the output channels `keep` names."""
    fits = []
    targets = run_samples(original, data, sorted({n.outputs[0].name for n in layers}))
    for node in layers:
        if reason := why_not_reconstructable(node):
            fits.append(LayerFit(node.name, float("nan"), float("nan"), f"skipped: {reason}"))
            continue
        x = run_samples(ir.to_proto(model), data, [node.inputs[0].name])[node.inputs[0].name]
        y = targets[node.outputs[0].name]
        # Samples are stacked on a leading axis in front of the batch axis: merge the two.
        x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
        if node.outputs[0] in keep:
            axis = y.ndim - 1 if node.op_type == "MatMul" else 1
            y = np.take(y, keep[node.outputs[0]], axis=axis)
        fits.append(fit_layer(model.graph, node, x, y))
        log.debug(
            "reconstructed %s: %.4g -> %.4g", node.name, fits[-1].error_before, fits[-1].error_after
        )
    return fits


def compensate_biases(
    model: ir.Model,
    removed_inputs: dict[ir.Node, tuple[np.ndarray, np.ndarray]],
    means: dict[ir.Node, np.ndarray],
) -> list[LayerFit]:
    """For each layer: bias += sum over removed input channels of W_0[:, i] * E[x_i].

    `removed_inputs` maps a layer to (its original weight as [outputs, inputs, ...], the removed
    input indices); `means` to the original input's per-channel (per-feature) mean."""
    fits = []
    for node, (w0, gone) in removed_inputs.items():
        if node.op_type == "MatMul":
            fits.append(LayerFit(node.name, float("nan"), float("nan"), "skipped: no bias"))
            continue
        shift = np.einsum("oik,i->o", w0[:, gone], means[node][gone])
        if node.op_type == "Gemm":
            shift = shift.reshape(-1)
        _, bias = _weights_as_matrix(node)
        bias = (np.zeros(len(shift)) if bias is None else bias.astype(np.float64)) + shift
        w = constant_array(node.inputs[1])
        name = node.name or node.op_type
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(
            2, add_initializer(model.graph, f"{name}_bias_compensated", bias.astype(w.dtype))
        )
        fits.append(LayerFit(node.name, float("nan"), float("nan"), "bias compensated"))
    return fits
