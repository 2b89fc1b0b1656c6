"""Small ONNX models built by hand for tests, each with one feature of real exported models."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_initializer(rng, name: str, shape: tuple, scale: float = 0.3) -> onnx.TensorProto:
    """A float32 initializer of normal values times `scale` (weights of a plausible size)."""
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def conv_relu(opset: int = 17, batch: int | str = 1, size: int = 8) -> onnx.ModelProto:
    """x[batch,3,size,size] -> Conv(8, 3x3) -> Relu -> y."""
    rng = _rng()
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, size, size])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def shape_subgraph(opset: int = 11) -> onnx.ModelProto:
    """Conv, then the exporters' flatten: Reshape(y, Concat(Gather(Shape(y), 0), [-1])), then Gemm.

    The batch dim is symbolic and the new shape comes from Constant nodes and shape arithmetic,
    which TVM's importer rejects unless folded.
    """
    rng = _rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node(
            "Constant",
            [],
            ["zero"],
            name="const_zero",
            value=numpy_helper.from_array(np.array(0, dtype=np.int64)),
        ),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0], name="unsqueeze")
        if opset < 13
        else helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        helper.make_node(
            "Constant",
            [],
            ["minus1"],
            name="const_m1",
            value=numpy_helper.from_array(np.array([-1], dtype=np.int64)),
        ),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c", "newshape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1, name="fc"),
    ]
    inits = [w, fc]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"))
    graph = helper.make_graph(
        nodes,
        "shape_subgraph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def if_on_shape(opset: int = 13) -> onnx.ModelProto:
    """An If whose condition is computed from the input's shape (rank == 4), as exporters emit.

    then: Relu(x) * 2;  else: x. With the shape fixed the condition is constant.
    """
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Size", ["s"], ["rank"]),
        helper.make_node(
            "Constant", [], ["four"], value=numpy_helper.from_array(np.array(4, dtype=np.int64))
        ),
        helper.make_node("Equal", ["rank", "four"], ["cond"]),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if_rank4"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "if_on_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [two],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def custom_op(opset: int = 17) -> onnx.ModelProto:
    """A model with a node of a custom domain, which no backend can lower."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("FancyNorm", ["r"], ["y"], domain="com.example", name="fancy_norm_3"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.example", 1)]
    )


def conv_relu_pool() -> onnx.ModelProto:
    """conv_relu's Conv and Relu (same weights, same shapes), then a MaxPool, which TVM does not
    fuse into the conv: a model that shares conv_relu's fused conv workload and adds its own."""
    model = conv_relu()
    graph = model.graph
    graph.node[1].output[0] = "r"
    graph.node.append(
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool")
    )
    graph.output[0].type.tensor_type.shape.dim[2].dim_value = 4
    graph.output[0].type.tensor_type.shape.dim[3].dim_value = 4
    return model


def if_on_sample_rate(opset: int = 16) -> onnx.ModelProto:
    """A voice detector's shape: If on a scalar int64 input `sr` (16000 or not); the 16 kHz branch
    holds a second If on a run-time condition (max(x) > 0) whose else branch is Identity of a
    value the enclosing branch makes. x[N, 3] -> y[N, 3]."""
    scalar = lambda name, value, dtype: numpy_helper.from_array(np.array(value, dtype), name)  # noqa: E731
    inner_then = helper.make_graph(
        [helper.make_node("Mul", ["relu", "two"], ["inner_t"])],
        "inner_then",
        [],
        [helper.make_tensor_value_info("inner_t", TensorProto.FLOAT, None)],
    )
    inner_else = helper.make_graph(
        [helper.make_node("Identity", ["relu"], ["inner_e"])],
        "inner_else",
        [],
        [helper.make_tensor_value_info("inner_e", TensorProto.FLOAT, None)],
    )
    khz16 = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["relu"]),
            helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
            helper.make_node("Greater", ["top", "zero"], ["positive"]),
            helper.make_node(
                "If", ["positive"], ["inner"], then_branch=inner_then, else_branch=inner_else
            ),
            helper.make_node("Identity", ["inner"], ["khz16_out"]),
        ],
        "khz16",
        [],
        [helper.make_tensor_value_info("khz16_out", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["other_out"])],
        "other",
        [],
        [helper.make_tensor_value_info("other_out", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
            helper.make_node("If", ["is16k"], ["y"], then_branch=khz16, else_branch=other),
        ],
        "if_on_sample_rate",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [
            scalar("rate", 16000, np.int64),
            scalar("two", 2.0, np.float32),
            scalar("zero", 0.0, np.float32),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def paddle_dynamic_dims() -> onnx.ModelProto:
    """Conv -> Relu with the input's batch and width written as dim_value -1, as Paddle's exporter
    writes dynamic dims."""
    model = conv_relu()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis in (0, 3):
        dims[axis].Clear()
        dims[axis].dim_value = -1
    return model


def padded_by_constant_of_shape() -> onnx.ModelProto:
    """Pad whose pads are built at run time as exporters build them (ConstantOfShape of zeros,
    Concat with the real pads), then Shape of the padded tensor into a Reshape: folds only if the
    ConstantOfShape does. x[1, 8] -> y[1, 12]."""
    i64 = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["two"], ["zeros"],
                             value=numpy_helper.from_array(np.array([0], np.int64))),  # fmt: skip
            helper.make_node("Concat", ["zeros", "ends"], ["pads"], axis=0),
            helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
            helper.make_node("Shape", ["padded"], ["shape"]),
            helper.make_node("Reshape", ["padded", "shape"], ["y"]),
        ],
        "padded_by_constant_of_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        [i64("two", [2]), i64("ends", [0, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
