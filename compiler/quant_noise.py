"""How far a QDQ model's float outputs move when its 8-bit activations round differently.

Two correct int8 implementations may round an element of a quantized tensor to neighbouring
levels (a sum in another order, a float op computed in float32 by one and fused by the other).
On outputs dequantized straight from int8 that is one step, and verify.check_quantized_output
allows it. Float ops after the last quantized tensor (Softmax, Sigmoid, MatMul, LayerNorm) turn
the same one-step differences into small float differences of no fixed size: a recognizer's
logits after a softmax failed fp32 tolerances on 0.4% of their elements. And where float ops
sit between two roundings (a detector's sigmoid and box decoding before its output's grid),
one step at their input becomes several at the output.

So the reference's own sensitivity is measured: onnxruntime runs the QDQ model as given and
with a sparse one-step perturbation of every quantized activation (a tenth of the elements of
each moved one level up or down, at random, seeded), and the drift of each float output is the
noise a correct artifact may show. verify.within_noise passes an output whose error is within
NOISE_FACTOR x that drift (max abs error and 1 - cosine both); a wrong lowering (a zero point, a
swapped channel, a dropped bias, a wrong requantize scale) moves whole tensors by many steps and
stays far outside.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepress.compiler.verify import Noise, cosine_similarity, run_onnxruntime

# Fraction of each quantized activation's elements moved by one level in the perturbed runs.
FRACTION = 0.1
SEEDS = (0, 1)


def _activation_dequantizes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, float]]:
    """(DequantizeLinear, its step) for each per-tensor dequantize of an activation (its input
    is computed, not a constant weight)."""
    constants = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = node
    found = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in constants:
            continue
        scale = constants.get(node.input[1])
        if scale is None or not isinstance(scale, onnx.TensorProto):
            continue
        value = numpy_helper.to_array(scale)
        if value.size == 1:
            found.append((node, float(value.reshape(-1)[0])))
    return found


def perturbed(model: onnx.ModelProto, seed: int, fraction: float = FRACTION) -> onnx.ModelProto:
    """`model` with every activation dequantize followed by an Add that moves `fraction` of
    its elements by one step up or down (static shapes from shape inference; tensors of
    unknown shape are left as they are)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    nodes = list(out.graph.node)
    outputs = {o.name for o in out.graph.output}
    for node, step in _activation_dequantizes(out):
        name = node.output[0]
        if name not in shapes or name in outputs:  # outputs on the grid are checked by steps
            continue
        shape = shapes[name]
        moved = rng.random(shape) < fraction
        noise = np.where(moved, rng.choice([-step, step], size=shape), 0.0).astype(np.float32)
        noisy, constant = f"{name}__one_step", f"{name}__one_step_noise"
        out.graph.initializer.append(numpy_helper.from_array(noise, constant))
        for consumer in nodes:
            for i, used in enumerate(consumer.input):
                if used == name:
                    consumer.input[i] = noisy
        add = helper.make_node("Add", [name, constant], [noisy], name=f"{name}__one_step_add")
        out.graph.node.insert(list(out.graph.node).index(node) + 1, add)
    return out


def quantization_noise(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, Noise]:
    """Per float output, the largest drift (max abs error, least cosine) between onnxruntime
    on `model` and on its one-step perturbations (see the module docstring)."""
    reference = run_onnxruntime(model.SerializeToString(), feeds)
    noise: dict[str, Noise] = {}
    for seed in SEEDS:
        other = run_onnxruntime(perturbed(model, seed).SerializeToString(), feeds)
        for name, ref in reference.items():
            a, b = np.asarray(other[name], np.float64), np.asarray(ref, np.float64)
            if a.shape != b.shape or a.dtype.kind != "f":
                continue
            finite = np.isfinite(a) & np.isfinite(b)
            error = float(np.abs(a[finite] - b[finite]).max(initial=0.0))
            cosine = cosine_similarity(a[finite], b[finite])
            if name in noise:
                error = max(error, noise[name].max_abs_err)
                cosine = min(cosine, noise[name].cosine)
            noise[name] = Noise(error, cosine)
    return noise
