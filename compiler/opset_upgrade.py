"""Old opsets onnxruntime or TVM no longer take: converted to a newer one before anything else.

onnxruntime 1.32 has no kernels for several ops at their oldest versions (AveragePool-7,
BatchNormalization-7, ... "Could not find an implementation"): a model exported years ago cannot
be run by the reference every build is checked against. TVM 0.27's importer reads Resize only
in its opset-11 form (scales as the third input): an opset-10 Resize fails to import. onnx's
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
# op -> the first opset whose form TVM's importer reads
TVM_NEEDS = {"Resize": 11}


def _ort_refusal(model: onnx.ModelProto) -> str | None:
    """onnxruntime's reason for not loading `model` when it lacks a kernel, else None."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's exception types share no base but Exception
        text = " ".join(str(err).split())
        if "Could not find an implementation" in text or "NOT_IMPLEMENTED" in text:
            return text
    return None


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
        if _ort_refusal(converted) is None:
            log.warning(
                "%s: onnxruntime cannot run opset %d (%s); building its conversion to opset %d",
                source, old, why[-120:], target,
            )  # fmt: skip
            reference = "converted" if ort_why else "source"
            return converted, {"from": old, "to": target, "why": why[-300:], "reference": reference}
    return model, None
