"""Per-layer measures of an int8 model against its float original, on the same samples.

SQNR of a layer: 10 log10(sum f^2 / sum (f - q)^2) over its output tensor, f from the float
model and q from the QDQ model (the error accumulated up to that layer, as a deployment sees
it). The layers are the compute nodes the quantizer touches (Conv, ConvTranspose, Gemm, MatMul),
named by node name (or output name when unnamed).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import onnx

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def compute_layers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, output tensor) of each compute node, in graph order."""
    return [
        (node.name or node.output[0], node.output[0])
        for node in model.graph.node
        if node.op_type in COMPUTE_OPS and node.domain in ("", "ai.onnx")
    ]


def layer_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Each compute layer with the nodes that follow it up to the next compute layers (its
    activation, HardSwish's Add/Div/Mul, an SE block's pooling, a residual Add): the nodes a
    layer kept in float keeps in float with it. Quantized outputs of those nodes round too;
    with only the compute nodes excluded, a float fallback of a MobileNetV3 was further from
    the float model than all-int8. Nodes before any compute layer go with the first."""
    layers = dict(compute_layers(model))
    groups: dict[str, list[str]] = {name: [] for name in layers}
    owners: dict[str, set[str]] = {}  # tensor -> the compute layers it follows
    loose = []
    for node in model.graph.node:
        name = node.name or node.output[0]
        if name in layers:
            owned = {name}
        else:
            owned = set().union(*(owners.get(i, set()) for i in node.input))
            for layer in owned:
                groups[layer].append(name)
            if not owned:
                loose.append(name)
        for output in node.output:
            owners[output] = owned
    if groups and loose:
        groups[next(iter(groups))] += loose
    return groups


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    extended = copy.deepcopy(model)
    present = {o.name for o in extended.graph.output}
    for name in names:
        if name not in present:
            extended.graph.output.append(onnx.ValueInfoProto(name=name))
    return extended


def run_samples(
    model: onnx.ModelProto,
    samples: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """onnxruntime (graph optimizations off) on each sample; the named outputs (default: the
    model's) stacked on a leading axis, each first passed through `reduce` if given (so that
    a statistic of many activations never holds them all)."""
    import onnxruntime as ort

    proto = _with_outputs(model, outputs) if outputs else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options)
    names = outputs or [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    count = min(a.shape[0] for a in samples.values())
    runs = []
    for i in range(count):
        run = session.run(names, {k: v[i] for k, v in samples.items() if k in wanted})
        runs.append([reduce(a) for a in run] if reduce is not None else run)
    return {name: np.stack([r[j] for r in runs]) for j, name in enumerate(names)}


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference.astype(np.float64) - approx)))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _comparable_tensor(float_model: onnx.ModelProto, present: set[str], tensor: str) -> str | None:
    """`tensor`, or the output of the Relu/Clip right after it: the quantizer folds such an
    activation into the layer, and its output name is what the int8 model keeps."""
    if tensor in present:
        return tensor
    users = [n for n in float_model.graph.node if tensor in n.input]
    if len(users) == 1 and users[0].op_type in ("Relu", "Clip") and users[0].output[0] in present:
        return users[0].output[0]
    return None


def layer_sqnr(
    float_model: onnx.ModelProto, quantized: onnx.ModelProto, samples: dict[str, np.ndarray]
) -> list[tuple[str, float]]:
    """(layer, SQNR in dB) for each compute layer of the float model, in graph order (a layer
    whose output the int8 model does not keep is left out)."""
    present = {o for n in quantized.graph.node for o in n.output}
    pairs = []  # layer, tensor in the float model, tensor in the int8 model
    for name, tensor in compute_layers(float_model):
        comparable = _comparable_tensor(float_model, present, tensor)
        if comparable is not None:
            pairs.append((name, comparable, _dequantized(quantized, comparable)))
    want = run_samples(float_model, samples, sorted({f for _, f, _ in pairs}))
    got = run_samples(quantized, samples, sorted({q for _, _, q in pairs}))
    return [(name, sqnr_db(want[f], got[q])) for name, f, q in pairs]


def _dequantized(quantized: onnx.ModelProto, tensor: str) -> str:
    """The value consumers of `tensor` see in the int8 model: DequantizeLinear(QuantizeLinear(
    tensor)) when the quantizer put that pair after it (the producer's raw output may even lack
    a folded ReLU), else the tensor itself."""
    nodes = quantized.graph.node
    for q in nodes:
        if q.op_type == "QuantizeLinear" and q.input[0] == tensor:
            for dq in nodes:
                if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                    return dq.output[0]
    return tensor
