"""Building tiny graphs from ONNX text, and the three checks every pass gets: the structure it
leaves, the same numbers in onnxruntime (graph optimizations off), a valid model; plus a second
run that changes nothing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from edgepress.passes import get_pass
from tests.tolerances import FUSION_ATOL, FUSION_RTOL


def model(text: str, initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """An ONNX model from the text syntax, with initializers given as arrays."""
    proto = onnx.parser.parse_model(text)
    for name, array in (initializers or {}).items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def rand(*shape: int, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def ops(proto: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


def random_feeds(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def apply(name: str, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    result = get_pass(name)(ir.from_proto(proto))
    return ir.to_proto(result.model), result.changes


def check_pass(
    name: str,
    proto: onnx.ModelProto,
    *,
    changes: int,
    rtol: float = FUSION_RTOL,
    atol: float = FUSION_ATOL,
) -> onnx.ModelProto:
    """Run pass `name`; assert its change count, equal outputs in onnxruntime on fresh random
    inputs, a valid model, and that a second run changes nothing. Returns the new model."""
    after, count = apply(name, proto)
    assert count == changes, f"{name}: {count} changes, expected {changes}"
    onnx.checker.check_model(after, full_check=True)
    for seed in (1, 2):
        feeds = random_feeds(proto, seed)
        for got, want in zip(_run(after, feeds), _run(proto, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    assert [o.name for o in after.graph.output] == [o.name for o in proto.graph.output]
    again, count = apply(name, after)
    assert count == 0, f"{name}: a second run made {count} changes"
    assert ops(again) == ops(after)
    return after
