"""quantize_int8: static int8 quantization in QDQ form, from calibration statistics.

Weights: symmetric int8 per output channel (scale = max|w_c| / 127, zero point 0). Activations:
uint8 (asymmetric, zero point from the range) or int8 (symmetric), their ranges taken from a
`CalibrationStats` (calibration.py), never measured here. Biases: int32 with scale
s_input * s_weight. The result is QuantizeLinear/DequantizeLinear pairs around Conv, Gemm,
MatMul and the ops between them that can stay in 8 bits (Relu, Clip, MaxPool, Reshape,
a residual Add, ...): onnxruntime runs it, and its integer kernels take the Q -> op -> DQ
patterns.
The rewrite itself is onnxruntime's QDQQuantizer, given our ranges.

Models under opset 13 are converted first: per-channel DequantizeLinear needs its `axis`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.decompose.lrn_as_conv import is_window_sum
from edgepress.passes.quantization.calibration import CalibrationStats
from edgepress.passes.registry import PassResult, register_pass

log = logging.getLogger(__name__)

FIRST_OPSET = 13
ACTIVATION_TYPES = ("uint8", "int8")
# What is quantized: the compute ops and what sits between them in 8-bit graphs.
OP_TYPES = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Add",  # a residual Add of two 8-bit tensors is an integer kernel (int8/quantized_add)
    "Concat",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Pad",
    "Split",
    "Slice",
)


def _tensors_range(stats: CalibrationStats):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    return TensorsData(
        CalibrationMethod.MinMax,
        {
            name: TensorData(lowest=np.float32(low), highest=np.float32(high))
            for name, (low, high) in stats.ranges.items()
        },
    )


# Not quantized: Mul (HardSwish's x * hardsigmoid(x), an SE block's x * gate) and elementwise
# ops with a constant operand, affine maps of one tensor (HardSwish's x + 3, a normalization's
# scale). Rounding their outputs to 8 bits adds roundings and saves nothing, since no integer
# kernel takes them: they stay float between the roundings of the layers around them. (A
# PP-OCR orientation classifier's least cosine on photographs: 0.84 with them rounded, 0.96
# without; its recognizer's 0.982 and 0.985.)
SCALAR_OPS = ("Add", "Mul", "Sub", "Div")


def float_kept_ops(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes int8 leaves in float: the elementwise ones one of whose operands is
    a constant (SCALAR_OPS), and the LRN window sums (lrn_as_conv: convs over squares, whose
    range 8 bits would not hold)."""
    constants = {i.name for i in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in proto.graph.node
        if (n.op_type in SCALAR_OPS and n.name and any(i in constants for i in n.input))
        or (n.op_type == "Conv" and is_window_sum(n.name))
    ]


# Ops whose output may be left float (float_read_outputs): they have integer kernels that can
# write the dequantized int32 sum instead of 8 bits.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def float_read_outputs(
    proto: onnx.ModelProto, made_by: dict[str, str], excluded: set[str]
) -> int:
    """Remove the Q/DQ pair on a compute op's output that only float ops read (HardSwish's
    x + 3 and x * clip, SiLU's sigmoid and product, a layer kept in float): rounding it to 8
    bits saves nothing, since the float ops dequantize it again, and it costs the most
    precision of any rounding, since it is taken before the activation narrows the range
    (a layout detector's depthwise outputs: -75..57, after HardSwish -0.4..47; all-int8 least
    cosine on photographs 0.27-0.79 with it, and with equalize_depthwise_inputs 0.93-0.98
    without it). `made_by` holds each tensor's op type before quantization: a pair on a tensor
    its compute op did not make there stays, since the quantizer removed a Relu or Clip there
    and the pair's range now does the clamping. Returns how many were removed."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def read_as_float(node) -> bool:
        return node.op_type not in OP_TYPES or node.name in excluded

    removed = []
    for q in graph.node:
        maker = producer.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if maker is None or maker.op_type not in COMPUTE_OPS or len(readers[q.input[0]]) != 1:
            continue
        if made_by.get(q.input[0]) != maker.op_type:  # an activation folded into the range
            continue
        dqs = readers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in outputs for d in dqs):
            continue
        users = [u for d in dqs for u in readers.get(d.output[0], [])]
        if not users or not all(read_as_float(u) for u in users):
            continue
        for d in dqs:
            for user in readers.get(d.output[0], []):
                user.input[:] = [q.input[0] if i == d.output[0] else i for i in user.input]
        removed += [q, *dqs]
    for node in removed:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    theirs = {i for n in removed for i in n.input[1:]}  # the removed pairs' scales and zeros
    unused = [t for t in graph.initializer if t.name in theirs and t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return sum(1 for n in removed if n.op_type == "QuantizeLinear")


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


@register_pass("quantize_int8")
def quantize_int8(
    model: ir.Model,
    *,
    stats: CalibrationStats | None = None,
    activations: str = "uint8",
    exclude: Sequence[str] = (),
) -> PassResult:
    """Float model + calibration ranges => QDQ int8 model (per-channel int8 weights).

    Needs calibration statistics (`compress ... --quantize int8 --calibration PATH`); nodes
    named in `exclude` stay in float. Counts the nodes quantized.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    if stats is None:
        raise ValueError(
            "quantize_int8 needs calibration statistics: build with --quantize int8 "
            "--calibration PATH rather than naming the pass in --passes"
        )
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations {activations!r}: expected one of {ACTIVATION_TYPES}")
    proto = ir.to_proto(model)
    if _opset(proto) < FIRST_OPSET:
        proto = onnx.version_converter.convert_version(proto, FIRST_OPSET)
    # onnxruntime's public quantize_static calibrates by itself from a data reader; edgepress
    # calibrates (methods, percentiles, sensitivity) and hands the ranges to the quantizer
    # quantize_static uses, by keyword, so that a reordering upstream fails loudly.
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    quantizer = QDQQuantizer(
        model=proto,
        per_channel=True,
        reduce_range=False,
        weight_qType=QuantType.QInt8,
        activation_qType=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        tensors_range=_tensors_range(stats),
        nodes_to_quantize=[],
        nodes_to_exclude=[*exclude, *float_kept_ops(proto)],
        op_types_to_quantize=list(OP_TYPES),
        extra_options={
            "ActivationSymmetric": activations == "int8",
            "WeightSymmetric": True,
            # The ONNX DequantizeLinear-on-weights form (int8 initializers), so the file is small.
            "QuantizeBias": True,
        },
    )
    quantizer.quantize_model()
    quantized = quantizer.model.model
    float_read_outputs(quantized, made_by, {*exclude, *float_kept_ops(proto)})
    result = ir.from_proto(quantized)
    # The quantizer appends its Q/DQ nodes at the end of the node list.
    common_passes.TopologicalSortPass()(result)
    changes = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    return PassResult(result, changes)
