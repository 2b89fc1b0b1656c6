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
