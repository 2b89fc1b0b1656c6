"""A seeded fuzzer of bad input: mutations of a small digits-style CNN (bytes flipped or cut, ops
replaced, attributes dropped or absurd, initializers removed or resized, dims zeroed or negative,
opsets out of range, cycles, wrong dtypes, dangling names, bad flags). Every one must end in a
build or a one-paragraph error naming the file, node or option with exit 2-7: never a traceback,
never 'internal error', and the input file is never touched."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepress.compiler.cli import main

MUTATIONS_PER_RUN = 240
OPS = ["Relu", "Conv", "Gemm", "MaxPool", "Softmax", "Reshape", "Add", "Concat", "LSTM", "If",
       "Transpose", "Resize", "NoSuchOp", "Sum", "TopK", "Loop", "Cast", ""]  # fmt: skip


def digits_cnn() -> onnx.ModelProto:
    """x[1, 1, 8, 8] -> Conv(4, 3x3) -> Relu -> MaxPool 2 -> Reshape -> Gemm(10) -> Softmax."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                             name="pool"),  # fmt: skip
            helper.make_node("Reshape", ["p", "shape"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
            helper.make_node("Softmax", ["logits"], ["y"], axis=1, name="softmax"),
        ],
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [
            init("w", 4, 1, 3, 3), init("b", 4),
            numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),
            init("fc_w", 10, 64), init("fc_b", 10),
        ],  # fmt: skip
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


ABSURD = [0, -1, -7, 1 << 40, 3, 1000, [], [0, 0], [-1, -1], [1 << 30] * 4, [2] * 6, 1.5, "x",
          [0.5, 0.5]]  # fmt: skip


def _attribute(name: str, value) -> onnx.AttributeProto:
    if value == []:
        return helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS)
    return helper.make_attribute(name, value)


# Each mutation changes a model (or its bytes, or the flags) and returns (bytes, extra flags).
Mutation = Callable[[onnx.ModelProto, np.random.Generator], tuple[bytes, list[str]]]


def flip_bytes(model, rng):
    data = bytearray(model.SerializeToString())
    for _ in range(rng.integers(1, 9)):
        data[rng.integers(len(data))] = rng.integers(256)
    return bytes(data), []


def truncate(model, rng):
    data = model.SerializeToString()
    return data[: rng.integers(1, len(data))], []


def replace_op(model, rng):
    node = model.graph.node[rng.integers(len(model.graph.node))]
    node.op_type = OPS[rng.integers(len(OPS))]
    return model.SerializeToString(), []


def drop_attribute(model, rng):
    nodes = [n for n in model.graph.node if n.attribute]
    node = nodes[rng.integers(len(nodes))]
    del node.attribute[rng.integers(len(node.attribute))]
    return model.SerializeToString(), []


def absurd_attribute(model, rng):
    node = model.graph.node[rng.integers(len(model.graph.node))]
    names = ["pads", "strides", "kernel_shape", "axis", "transB", "group", "dilations", "alpha",
             "perm", "to", "auto_pad"]  # fmt: skip
    name = names[rng.integers(len(names))]
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(_attribute(name, ABSURD[rng.integers(len(ABSURD))]))
    return model.SerializeToString(), []


def remove_initializer(model, rng):
    del model.graph.initializer[rng.integers(len(model.graph.initializer))]
    return model.SerializeToString(), []


def resize_initializer(model, rng):
    init = model.graph.initializer[rng.integers(len(model.graph.initializer))]
    array = numpy_helper.to_array(init)
    choice = rng.integers(4)
    if choice == 0:
        array = array.reshape(-1)[: max(0, array.size - rng.integers(1, 4))]
    elif choice == 1:
        array = np.concatenate([array.reshape(-1), array.reshape(-1)])
    elif choice == 2:
        array = array.reshape(-1)[:1].reshape(())
    else:
        array = np.zeros((0,) + array.shape[1:], array.dtype)
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    return model.SerializeToString(), []


def bad_dims(model, rng):
    value = [model.graph.input[0], model.graph.output[0]][rng.integers(2)]
    dims = value.type.tensor_type.shape.dim
    dims[rng.integers(len(dims))].dim_value = int([0, -1, -5, 7, 1 << 33][rng.integers(5)])
    return model.SerializeToString(), []


def bad_opset(model, rng):
    model.opset_import[0].version = int([0, 1, 5, 6, 7, 99, 10000][rng.integers(7)])
    return model.SerializeToString(), []


def cycle(model, rng):
    nodes = model.graph.node
    i = rng.integers(0, len(nodes) - 1)
    j = rng.integers(i + 1, len(nodes))
    nodes[i].input[0] = nodes[j].output[0]
    return model.SerializeToString(), []


def wrong_dtype(model, rng):
    types = [TensorProto.INT64, TensorProto.BOOL, TensorProto.STRING, TensorProto.FLOAT16,
             TensorProto.DOUBLE, TensorProto.UINT8, 0, 999]  # fmt: skip
    new = types[rng.integers(len(types))]
    if rng.integers(2):
        model.graph.input[0].type.tensor_type.elem_type = new
    else:
        model.graph.initializer[rng.integers(len(model.graph.initializer))].data_type = new
    return model.SerializeToString(), []


def dangling_name(model, rng):
    node = model.graph.node[rng.integers(len(model.graph.node))]
    if rng.integers(2) and node.input:
        node.input[rng.integers(len(node.input))] = "nowhere"
    else:
        model.graph.output[0].name = "nothing_makes_this"
    return model.SerializeToString(), []


def bad_flags(model, rng):
    flags = [
        ["--input-shape", "x=1,1,8"], ["--input-shape", "x=0,1,8,8"], ["--input-shape", "y=1"],
        ["--input-shape", "x=1,1,9,9"], ["--input-shape", "x=a,b"], ["--input-value", "x=1"],
        ["--input-value", "x=1,2"], ["--passes", "fold_constants,,nope"], ["--atol", "-1"],
        ["--min-cosine", "2"], ["--mcpu", "no-such-cpu"], ["--target-typo"],
        ["--quantize", "int8"], ["--num-cores", "0"], ["--verify-inputs", "missing.npz"],
    ]  # fmt: skip
    return model.SerializeToString(), flags[rng.integers(len(flags))]


MUTATIONS: list[Mutation] = [flip_bytes, truncate, replace_op, drop_attribute, absurd_attribute,
                             remove_initializer, resize_initializer, bad_dims, bad_opset, cycle,
                             wrong_dtype, dangling_name, bad_flags]  # fmt: skip


def _mutant(seed: int) -> tuple[str, bytes, list[str]]:
    rng = np.random.default_rng(seed)
    mutation = MUTATIONS[seed % len(MUTATIONS)]
    data, flags = mutation(digits_cnn(), rng)
    return mutation.__name__, data, flags


@pytest.mark.parametrize("seed", range(MUTATIONS_PER_RUN))
def test_mutant_gets_a_clear_answer(seed, tmp_path, capfd):
    name, data, flags = _mutant(seed)
    path = tmp_path / "mutant.onnx"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    code = main([str(path), "--target", "x86_64", "-o", str(tmp_path / "out"), "-q", *flags])
    err = capfd.readouterr().err
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{name}: input changed"
    assert "Traceback" not in err, f"{name} ({flags}): {err[-2000:]}"
    assert "internal error" not in err, f"{name} ({flags}): {err[-2000:]}"
    if code == 0:
        return
    assert 2 <= code <= 7, f"{name}: exit {code}: {err[-500:]}"
    message = [ln for ln in err.splitlines() if ln.startswith("compress: error:")]
    assert message, f"{name}: no error line: {err[-500:]}"
    assert "mutant.onnx" in message[-1] or "--" in message[-1] or "node" in message[-1], message
