"""Empirical bias correction: remove the mean shift int8 puts on each layer's output.

Quantizing weights and clipping activations shifts the expected output of a layer:
E[y_int8] = E[y_float] + e, per output channel. Measured on calibration data (both models on
the same samples, the int8 layer reading the int8 model's own inputs, so upstream shifts are
included), e is subtracted by adding -e to the layer's float bias before quantizing again
(Nagel et al., 2019, "Data-free quantization", empirical variant; AIMET's bias correction).

Mechanics only: the caller gives the quantize function and the samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.quantization.sensitivity import run_samples

CORRECTED_OPS = ("Conv", "Gemm")


def _channel_means(array: np.ndarray, op_type: str) -> np.ndarray:
    """Mean per output channel over samples, batch and space: axis 1 of a Conv output
    (samples, N, C, ...), the last axis of a Gemm output (samples, N, C)."""
    axis = 2 if op_type == "Conv" else array.ndim - 1
    moved = np.moveaxis(array.astype(np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1]).mean(axis=0)


def correct_biases(
    float_model: onnx.ModelProto,
    quantize: Callable[[onnx.ModelProto], onnx.ModelProto],
    samples: dict[str, np.ndarray],
) -> tuple[onnx.ModelProto, dict[str, float]]:
    """The float model with corrected biases, and per layer the largest shift removed.

    Layer by layer in graph order, re-quantizing after each correction: a layer's shift is
    measured with every layer before it already corrected (measuring all at once over-corrects
    downstream layers for shifts their inputs will no longer have).
    """
    model = float_model
    removed: dict[str, float] = {}
    names = [
        n.name
        for n in float_model.graph.node
        if n.op_type in CORRECTED_OPS and n.name and n.domain in ("", "ai.onnx")
    ]
    for name in names:
        quantized = quantize(model)
        mine = next((n for n in model.graph.node if n.name == name), None)
        theirs = next((n for n in quantized.graph.node if n.name == name), None)
        if mine is None or theirs is None:
            continue  # the quantizer left it in float or renamed it
        want = run_samples(model, samples, [mine.output[0]])[mine.output[0]]
        got = run_samples(quantized, samples, [theirs.output[0]])[theirs.output[0]]
        shift = _channel_means(got, mine.op_type) - _channel_means(want, mine.op_type)
        model, changed = _with_bias_minus(model, name, shift)
        if changed:
            removed[name] = float(np.abs(shift).max())
    return model, removed


def _with_bias_minus(
    model: onnx.ModelProto, name: str, shift: np.ndarray
) -> tuple[onnx.ModelProto, bool]:
    """The model with `shift` subtracted from node `name`'s bias (a bias of zeros added when it
    has none); unchanged when the bias is not a constant of one value per channel."""
    edited = ir.from_proto(model)
    node = next(n for n in edited.graph if n.name == name)
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = np.zeros(shift.shape, np.float32) if bias_value is None else constant_array(bias_value)
    if bias is None or bias.shape != shift.shape:
        return model, False
    # A new initializer: the old one may be shared (deduplicated) with another layer.
    new = add_initializer(edited.graph, f"{name}_bias_corrected", (bias - shift).astype(np.float32))
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, new)
    common_passes.RemoveUnusedNodesPass()(edited)
    return ir.to_proto(edited), True
