"""Old opsets onnxruntime or TVM no longer take: converted to a newer one before anything else.

onnxruntime 1.32 has no kernels for several ops at their oldest versions (AveragePool-7,
BatchNormalization-7, ... "Could not find an implementation"): a model exported years ago cannot
be run by the reference every build is checked against. TVM 0.27's importer reads some ops only
in their newer form (Resize's scales as the third input from opset 11, Slice's starts and ends
as inputs from opset 10): an opset-10 Resize or opset-9 Slice fails to import. onnx's
version converter moves such a model to a newer opset, used only when onnxruntime runs the
result. Where onnxruntime could not run the original, the conversion is also the reference
(the report says so, with both opsets).
"""

from __future__ import annotations

import logging

import onnx
import onnxruntime as ort

from edgepress.compiler.errors import first_line

log = logging.getLogger(__name__)

TARGET_OPSETS = (13, 17)  # tried in order: the first onnxruntime loads
# op -> the first opset whose form TVM's importer reads (its converters of these take their
# operands as inputs, where older opsets had attributes)
TVM_NEEDS = {"Resize": 11, "Slice": 10, "Reshape": 5}


def _ort_refusal(model: onnx.ModelProto) -> str | None:
    """onnxruntime's reason for not loading `model` when it lacks a kernel, else None."""
    try:
        _session(model)
    except Exception as err:  # onnxruntime's exception types share no base but Exception
        text = " ".join(str(err).split())
        if "Could not find an implementation" in text or "NOT_IMPLEMENTED" in text:
            return text
    return None


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _runs(model: onnx.ModelProto) -> str | None:
    """None when onnxruntime runs `model` on zeros of its declared input shapes (symbolic dims
    as 1), else why not: the converter changes versions, not always semantics (it leaves an
    opset-6 PRelu's per-channel slope to broadcast on the last axis)."""
    import numpy as np

    types = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip
    try:
        session = _session(model)
        feeds = {
            i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], types[i.type])
            for i in session.get_inputs()
        }
        session.run(None, feeds)
    except KeyError:
        return None  # an input type made up here cannot be: leave the check to the build
    except Exception as err:
        return " ".join(str(err).split())[-200:]
    return None


def _per_channel_prelu(model: onnx.ModelProto) -> None:
    """Before opset 7 a 1-D PRelu slope applies per channel (axis 1); from 7 it broadcasts
    numpy-style (on the last axis). The converter does not adapt it: reshape such a constant
    slope to [C, 1, ..., 1]."""
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*inferred.graph.input, *inferred.graph.value_info)
        if v.type.tensor_type.HasField("shape")
    }
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input}
    for node in model.graph.node:
        if node.op_type != "PRelu" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        slope = numpy_helper.to_array(initializers[node.input[1]])
        rank = ranks.get(node.input[0], 0)
        if slope.ndim != 1 or slope.size == 1 or rank < 3:
            continue
        shape = (slope.size,) + (1,) * (rank - 2)
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(slope.reshape(shape), node.input[1]))
        if node.input[1] in inputs:  # IR 3 lists initializers among the inputs
            dims = inputs[node.input[1]].type.tensor_type.shape.dim
            del dims[:]
            for d in shape:
                dims.add().dim_value = d


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _tvm_refusal(model: onnx.ModelProto) -> str | None:
    old = _default_opset(model)
    ops = sorted({n.op_type for n in model.graph.node if TVM_NEEDS.get(n.op_type, 0) > old})
    return f"TVM's importer reads {', '.join(ops)} only in a newer opset's form" if ops else None


def upgrade_opset(model: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, dict | None]:
    """(the model to build, a note for the report or None when nothing changed). The note's
    "reference" says whether onnxruntime runs the source ("source") or only the conversion."""
    ort_why = _ort_refusal(model)
    why = ort_why or _tvm_refusal(model)
    if why is None:
        return model, None
    old = _default_opset(model)
    if old < 7:
        model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's stays
        _per_channel_prelu(model)
    for target in (t for t in TARGET_OPSETS if t > old):
        try:
            converted = onnx.version_converter.convert_version(model, target)
            # the converter keeps the IR version: opset 13 needs IR 7 or later
            minimum = onnx.helper.find_min_ir_version_for(list(converted.opset_import))
            converted.ir_version = max(converted.ir_version, minimum)
            onnx.checker.check_model(converted)
        except Exception as err:  # the converter raises bare RuntimeErrors and checker errors
            log.info("%s: converting opset %d to %d failed: %s", source, old, target, first_line(err))
            continue
        failure = _ort_refusal(converted) or _runs(converted)
        if failure is None:
            log.warning(
                "%s: %s; building its conversion from opset %d to %d",
                source, why[-160:], old, target,
            )  # fmt: skip
            reference = "converted" if ort_why else "source"
            return converted, {"from": old, "to": target, "why": why[-300:], "reference": reference}
        log.info("%s: the opset-%d conversion does not run: %s", source, target, failure)
    return model, None
