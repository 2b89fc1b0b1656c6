"""unroll_recurrent and lower_integer_ops against onnxruntime (graph optimizations off), over the
attribute combinations exporters write, and through a build."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepress.passes import get_pass
from tests.conftest import save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL, FLOAT_REWRITE_ATOL, FLOAT_REWRITE_RTOL

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _ort(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def recurrent(op, direction="forward", layout=0, *, seq=5, batch=2, size=3, hidden=4,
              bias=True, initial=True, lens=None, peepholes=False, clip=None, activations=None,
              linear_before_reset=0):  # fmt: skip
    """One recurrent node with constant weights; returns (model, feeds)."""
    rng = np.random.default_rng(0)
    gates, dirs = GATES[op], 2 if direction == "bidirectional" else 1
    x_shape = [seq, batch, size] if layout == 0 else [batch, seq, size]
    s_shape = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    inits = [
        numpy_helper.from_array(rng.standard_normal((dirs, gates * hidden, size)).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal((dirs, gates * hidden, hidden)) * 0.5).astype(np.float32), "R"),
    ]  # fmt: skip
    names = ["X", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32), "B"))  # fmt: skip
        names[3] = "B"
    if lens is not None:
        inits.append(numpy_helper.from_array(np.array(lens, np.int32), "L"))
        names[4] = "L"
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    for name, index in (("H0", 5), ("C0", 6)) if initial else ():
        if name == "C0" and op != "LSTM":
            continue
        names[index] = name
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, s_shape))
        feeds[name] = rng.standard_normal(s_shape).astype(np.float32)
    if peepholes:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 3 * hidden)).astype(np.float32), "P"))  # fmt: skip
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    attrs = {"hidden_size": hidden, "direction": direction, "layout": layout}
    if clip is not None:
        attrs["clip"] = clip
    if activations:
        attrs["activations"] = activations
    if op == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    graph = helper.make_graph(
        [helper.make_node(op, names, outputs, name="rnn", **attrs)],
        "recurrent",
        inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), feeds


def _reference(case: dict) -> tuple[onnx.ModelProto, dict, list[np.ndarray]]:
    """onnxruntime's outputs; it refuses layout 1, so those come from the layout-0 twin with the
    inputs and outputs transposed."""
    model, feeds = recurrent(**case)
    if case.get("layout", 0) == 0:
        return model, feeds, _ort(model, feeds)
    twin, _ = recurrent(**{**case, "layout": 0})
    outs = _ort(twin, {k: v.transpose(1, 0, 2) for k, v in feeds.items()})
    return model, feeds, [outs[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outs[1:]]


def _unrolled(model: onnx.ModelProto, name: str = "unroll_recurrent") -> tuple[onnx.ModelProto, int]:
    graph = ir.from_proto(model)
    ir.passes.common.ShapeInferencePass()(graph)
    result = get_pass(name)(graph)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    return proto, result.changes


CASES = [
    {"op": op, "direction": direction, "layout": layout}
    for op in GATES
    for direction in ("forward", "reverse", "bidirectional")
    for layout in (0, 1)
] + [
    {"op": "LSTM", "direction": "bidirectional", "lens": [5, 3]},
    {"op": "GRU", "direction": "reverse", "lens": [2, 5]},
    {"op": "RNN", "lens": [1, 4]},
    {"op": "LSTM", "peepholes": True, "clip": 0.7},
    {"op": "GRU", "layout": 1, "linear_before_reset": 1},
    {"op": "GRU", "direction": "bidirectional", "linear_before_reset": 1, "clip": 1.5},
    {"op": "LSTM", "bias": False, "initial": False},
    {"op": "RNN", "direction": "bidirectional", "activations": ["Relu", "HardSigmoid"]},
    {"op": "LSTM", "activations": ["HardSigmoid", "Tanh", "Softsign"]},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_unroll_recurrent_matches_onnxruntime(case):
    model, feeds, want = _reference(case)
    after, changes = _unrolled(model)
    assert changes == 1
    assert not {n.op_type for n in after.graph.node} & set(GATES)
    for got, ref in zip(_ort(after, feeds), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=FLOAT_REWRITE_RTOL, atol=FLOAT_REWRITE_ATOL)


def test_unroll_keeps_what_it_cannot_take():
    model, _ = recurrent("LSTM")
    model.graph.node[0].attribute.append(helper.make_attribute("input_forget", 1))
    assert _unrolled(model)[1] == 0
    model, _ = recurrent("RNN", activations=["Gelu"])
    assert _unrolled(model)[1] == 0


def _conv_lstm_float() -> onnx.ModelProto:
    """Conv -> Relu -> Reshape to a sequence -> LSTM -> MatMul: what onnxruntime's dynamic
    quantization turns into ConvInteger, DynamicQuantizeLSTM and MatMulInteger."""
    rng = np.random.default_rng(4)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    hidden = 8
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["seq"]),  # [1, 6, 4, 10] -> [10, 1, 24]
        helper.make_node("Transpose", ["seq"], ["steps"], perm=[2, 0, 1]),
        helper.make_node("LSTM", ["steps", "W", "R", "B"], ["y"], hidden_size=hidden,
                         direction="bidirectional"),  # fmt: skip
        helper.make_node("Reshape", ["y", "flat"], ["yf"]),
        helper.make_node("MatMul", ["yf", "fc"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 10])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [10, 5])],
        [
            init("cw", 6, 2, 3, 3), init("cb", 6),
            numpy_helper.from_array(np.array([1, 24, 10], np.int64), "shape"),
            init("W", 2, 4 * hidden, 24), init("R", 2, 4 * hidden, hidden), init("B", 2, 8 * hidden),
            numpy_helper.from_array(np.array([10, 2 * hidden], np.int64), "flat"),
            init("fc", 2 * hidden, 5),
        ],  # fmt: skip
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def dynamic_quantized(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("dynamic")
    source = save(_conv_lstm_float(), folder / "float.onnx")
    quantize_dynamic(str(source), str(folder / "int8.onnx"), weight_type=QuantType.QInt8)
    model = onnx.load(folder / "int8.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"ConvInteger", "DynamicQuantizeLSTM", "MatMulInteger"} <= ops, ops
    return folder / "int8.onnx"


def test_integer_ops_and_quantized_lstm_match_onnxruntime(dynamic_quantized):
    model = onnx.load(dynamic_quantized)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 2, 4, 10)).astype(np.float32)}
    after, lstms = _unrolled(model)
    after, integer = _unrolled(after, "lower_integer_ops")
    assert (lstms, integer) == (1, 2)
    left = {n.op_type for n in after.graph.node}
    assert not left & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"}, left
    # the products' Cast to int32 and back to float (quantize_dynamic's) is gone
    to = {n.name: helper.get_attribute_value(n.attribute[0]) for n in after.graph.node
          if n.op_type == "Cast"}  # fmt: skip
    assert TensorProto.INT32 not in to.values(), to
    for got, ref in zip(_ort(after, feeds), _ort(model, feeds), strict=True):
        np.testing.assert_allclose(got, ref, rtol=FLOAT_REWRITE_RTOL, atol=FLOAT_REWRITE_ATOL)


def _int32_bias_conv() -> onnx.ModelProto:
    """What older onnxruntime quantize_dynamic writes for a Conv with a bias: the bias divided
    by the two scales at run time, floored and cast to int32, added to ConvInteger's int32
    result, which is then cast to float and scaled."""
    rng = np.random.default_rng(8)
    w = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("Mul", ["xs", "ws"], ["s"]),
        helper.make_node("Div", ["b", "s"], ["bd"]),
        helper.make_node("Floor", ["bd"], ["bf"]),
        helper.make_node("Cast", ["bf"], ["bi"], to=TensorProto.INT32),
        helper.make_node("ConvInteger", ["xq", "w", "xz", "wz"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["bi", "shape"], ["br"]),
        helper.make_node("Add", ["c", "br"], ["cb"]),
        helper.make_node("Cast", ["cb"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["cf", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int32_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 7])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(131, np.uint8), "wz"),
            numpy_helper.from_array(np.array(0.004, np.float32), "ws"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.5, "b"),
            numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "shape"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def test_an_int32_bias_add_runs_in_float_and_matches_onnxruntime():
    """ConvInteger's int32 result plus an int32 bias, cast back to float: the add is done on
    the float product and the floored bias (nothing is cast to int32 any more, once dead code
    is gone), and the result equals onnxruntime's integer arithmetic."""
    model = _int32_bias_conv()
    after, changes = _unrolled(model, "lower_integer_ops")
    assert changes == 1
    after, _ = _unrolled(after, "eliminate_dead_code")
    to = [helper.get_attribute_value(n.attribute[0]) for n in after.graph.node if n.op_type == "Cast"]
    assert TensorProto.INT32 not in to, to
    x = np.random.default_rng(3).standard_normal((1, 3, 6, 7)).astype(np.float32)
    (got,), (want,) = _ort(after, {"x": x}), _ort(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dynamic_quantized_model_builds_and_verifies(cli, dynamic_quantized, tmp_path):
    out = tmp_path / "out"
    r = cli(dynamic_quantized, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["artifact"]["status"] == "ok"
    passes = {p["name"]: p["changes"] for p in report["passes"]}
    assert passes["unroll_recurrent"] == 1 and passes["lower_integer_ops"] == 2
    # Every layer on edgepress's kernels: the LSTM's matmuls integer (the first step's product
    # of the zero state is left out: its dynamic quantization divided by zero in constant
    # folding, and the whole float lowering fell back to TVM's kernels).
    kinds = [layer["kernel"] for layer in report["float_conv"]["layers"]]
    assert kinds.count("integer") >= 2 and all(kinds), report["float_conv"]
    x = np.random.default_rng(7).standard_normal((1, 2, 4, 10)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz", "-q").code == 0
    got = np.load(tmp_path / "o.npz")
    want = _ort(onnx.load(dynamic_quantized), {"x": x})
    np.testing.assert_allclose(got[got.files[0]], want[0], rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL)


def _sequences_model() -> onnx.ModelProto:
    """Construct (x, y, z) -> erase 1 -> insert x at 0 -> at -1; split y into a sequence of
    rows -> length, and concat on a new axis."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    graph = helper.make_graph(
        [
            helper.make_node("SequenceConstruct", ["x", "y", "z"], ["s1"]),
            helper.make_node("SequenceErase", ["s1", "one"], ["s2"]),
            helper.make_node("SequenceInsert", ["s2", "x", "zero"], ["s3"]),
            helper.make_node("SequenceAt", ["s3", "minus_one"], ["picked"]),
            helper.make_node("SplitToSequence", ["y"], ["rows"], axis=0, keepdims=0),
            helper.make_node("SequenceLength", ["rows"], ["count"]),
            helper.make_node("ConcatFromSequence", ["rows"], ["stacked"], axis=-1, new_axis=1),
        ],
        "sequences",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "xyz"],
        [
            helper.make_tensor_value_info("picked", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("count", TensorProto.INT64, []),
            helper.make_tensor_value_info("stacked", TensorProto.FLOAT, [3, 2]),
        ],
        [i64("one", 1), i64("zero", 0), i64("minus_one", -1)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_resolve_sequences_matches_onnxruntime():
    model = _sequences_model()
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((2, 3)).astype(np.float32) for n in "xyz"}
    after, changes = _unrolled(model, "resolve_sequences")
    assert changes == 7
    assert not {n.op_type for n in after.graph.node} & {"SequenceConstruct", "SequenceAt",
                                                        "SplitToSequence"}  # fmt: skip
    for got, ref in zip(_ort(after, feeds), _ort(model, feeds), strict=True):
        np.testing.assert_array_equal(got, ref)


def test_resolve_sequences_leaves_run_time_positions():
    model = _sequences_model()
    model.graph.input.append(helper.make_tensor_value_info("zero", TensorProto.INT64, []))
    model.graph.initializer.pop(1)  # "zero" is now a run-time input
    result = get_pass("resolve_sequences")(ir.from_proto(model))
    after = ir.to_proto(result.model)
    onnx.checker.check_model(after, full_check=True)
    assert result.changes == 0 and "SequenceInsert" in {n.op_type for n in after.graph.node}


def _one_hot_model(classes: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    """bytes int32 [2, 6] -> Reshape [2, 6, 1] -> Equal with `classes` -> Cast float ->
    MatMul with a [5, 3] matrix: jax.nn.one_hot then a dense layer (magika's first layer)."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["bytes", "column"], ["b"]),
            helper.make_node("Equal", ["classes", "b"], ["hot"]),
            helper.make_node("Cast", ["hot"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["f", "w"], ["y"]),
        ],
        "one_hot",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 3])],
        [
            numpy_helper.from_array(np.array([2, 6, 1], np.int64), "column"),
            numpy_helper.from_array(classes.astype(np.int32).reshape(1, 1, -1), "classes"),
            numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 17])
def test_one_hot_matmul_is_a_lookup_equal_to_onnxruntime(opset):
    """The one-hot product becomes a Gather (no Equal, Cast or MatMul left) whose rows equal
    onnxruntime's product exactly, indices outside the classes (-1, 5, 7) reading zeros."""
    model = _one_hot_model(np.arange(5), opset)
    after, changes = _unrolled(model, "one_hot_matmul_as_gather")
    assert changes == 1
    kinds = {n.op_type for n in after.graph.node}
    assert "Gather" in kinds and not kinds & {"Equal", "Cast", "MatMul"}
    feeds = {"bytes": np.array([[0, 1, 2, 3, 4, -1], [5, 7, 4, 4, 0, 2]], np.int32)}
    (got,), (want,) = _ort(after, feeds), _ort(model, feeds)
    np.testing.assert_array_equal(got, want)
    assert not want[0, 5].any() and not want[1, :2].any()


def test_one_hot_against_other_classes_stays_a_product():
    """Classes that are not 0..V-1 in order are no one-hot of the rows: nothing changes."""
    model = _one_hot_model(np.array([0, 2, 1, 3, 4]))
    after, changes = _unrolled(model, "one_hot_matmul_as_gather")
    assert changes == 0 and "MatMul" in {n.op_type for n in after.graph.node}
