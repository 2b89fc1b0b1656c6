"""Cleanup passes on tiny graphs: what they remove (op counts), what they keep, the same numbers
in onnxruntime, a valid model, nothing more to do on a second run."""

from __future__ import annotations

import numpy as np

from tests.pass_checks import check_pass, model, ops, rand
from tests.tolerances import FLOAT_REWRITE_ATOL, FLOAT_REWRITE_RTOL

EXACT = {"rtol": FLOAT_REWRITE_RTOL, "atol": FLOAT_REWRITE_ATOL}


def test_remove_no_ops_drops_identity_dropout_and_no_op_casts_reshapes_transposes():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4] x) => (float[2,3,4] y) {
          a = Identity (x)
          b = Dropout (a, ratio)
          c = Cast <to=1> (b)
          d = Reshape (c, shape)
          e = Transpose <perm=[0,1,2]> (d)
          f = Transpose <perm=[1,0,2]> (e)
          g = Transpose <perm=[1,0,2]> (f)
          y = Relu (g)
        }
        """,
        {"ratio": np.array(0.5, np.float32), "shape": np.array([2, 3, 4], np.int64)},
    )
    after = check_pass("remove_no_ops", proto, changes=7, **EXACT)
    assert ops(after) == {"Relu": 1}


def test_remove_no_ops_keeps_what_changes_values_and_graph_output_names():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4] x) => (int32[2,3,4] y, float[6,4] r, float[2,3,4] z, bool[2,3,4] mask) {
          y = Cast <to=6> (x)
          t = Transpose <perm=[1,0,2]> (x)
          r = Reshape (t, shape)
          z, mask = Dropout (x, ratio)
        }
        """,
        {"ratio": np.array(0.5, np.float32), "shape": np.array([6, 4], np.int64)},
    )
    after = check_pass("remove_no_ops", proto, changes=0, **EXACT)
    assert ops(after) == {"Cast": 1, "Transpose": 1, "Reshape": 1, "Dropout": 1}


def test_remove_no_ops_keeps_a_graph_output_name_when_removing_its_producer():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] x) => (float[2,3] y) {
          r = Relu (x)
          y = Identity (r)
        }
        """
    )
    after = check_pass("remove_no_ops", proto, changes=1, **EXACT)
    assert ops(after) == {"Relu": 1} and after.graph.node[0].output[0] == "y"


def test_remove_no_ops_drops_a_slice_of_everything_and_keeps_a_reversal_and_a_crop():
    """tf2onnx's masked strided slice (every element, steps of 1) goes; a Slice with step -1
    (same shape, reversed) and one that crops stay, and the numbers are onnxruntime's."""
    big = np.iinfo(np.int64).max
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4] x) => (float[2,3,4] y, float[2,3,4] r, float[2,3,3] c) {
          s = Slice (x, zeros, ends, axes, ones)
          y = Relu (s)
          r = Slice (x, last, first, two, back)
          c = Slice (x, zero1, three, two)
        }
        """,
        {
            "zeros": np.zeros(3, np.int64),
            "ends": np.full(3, big, np.int64),
            "axes": np.arange(3, dtype=np.int64),
            "ones": np.ones(3, np.int64),
            "last": np.array([-1], np.int64),
            "first": np.array([-big], np.int64),
            "two": np.array([2], np.int64),
            "back": np.array([-1], np.int64),
            "zero1": np.array([0], np.int64),
            "three": np.array([3], np.int64),
        },
    )
    after = check_pass("remove_no_ops", proto, changes=1, **EXACT)
    assert ops(after) == {"Relu": 1, "Slice": 2}


def test_eliminate_dead_code_removes_unread_nodes_and_initializers():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) {
          y = Relu (x)
          dead = Add (x, w)
        }
        """,
        {"w": rand(2, 3), "unused": rand(4)},
    )
    after = check_pass("eliminate_dead_code", proto, changes=3, **EXACT)
    assert ops(after) == {"Relu": 1} and not after.graph.initializer


def test_deduplicate_initializers_keeps_one_copy_of_equal_tensors():
    w = rand(4, 3, 3, 3)
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4,6,6] y, float[1,4,6,6] z) {
          y = Conv (x, w1)
          z = Conv (x, w2)
        }
        """
    after = check_pass(
        "deduplicate_initializers", model(text, {"w1": w, "w2": w.copy()}), changes=1, **EXACT
    )
    assert len(after.graph.initializer) == 1
    different = {"w1": w, "w2": w + 1}
    check_pass("deduplicate_initializers", model(text, different), changes=0, **EXACT)


def test_remove_unused_inputs_drops_inputs_nobody_reads():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, float[5] unused, float[2,3] passthrough)
            => (float[2,3] y, float[2,3] passthrough) {
          y = Relu (x)
        }
        """
    )
    after = check_pass("remove_unused_inputs", proto, changes=1, **EXACT)
    assert [i.name for i in after.graph.input] == ["x", "passthrough"]


def test_simplify_pow_rewrites_small_exponents_and_keeps_the_rest():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 14]>
        g (float[2,3] x) => (float[2,3] y, float[2,3] keep, float[2,3] same) {
          sq = Pow (x, two)
          cube = Pow (sq, three)
          root = Pow (cube, half)
          inv = Pow (root, minus_one)
          y = Pow (inv, one)
          keep = Pow (x, other)
          same = Pow (x, one)
        }
        """,
        {
            "two": np.array(2.0, np.float32),
            "three": np.array([3.0], np.float32),
            "half": np.array(0.5, np.float32),
            "minus_one": np.array(-1.0, np.float32),
            "one": np.array(1.0, np.float32),
            "other": np.array(1.7, np.float32),
        },
    )
    after = check_pass("simplify_pow", proto, changes=6, **EXACT)
    assert ops(after) == {"Mul": 3, "Sqrt": 1, "Reciprocal": 1, "Pow": 1, "Identity": 2}


def test_simplify_pow_keeps_a_pow_that_broadcasts_the_base():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 14]>
        g (float[3] x) => (float[2,3] y) {
          y = Pow (x, two)
        }
        """,
        {"two": np.full((2, 3), 2.0, np.float32)},
    )
    check_pass("simplify_pow", proto, changes=0, **EXACT)


def test_deduplicate_initializers_takes_non_contiguous_views():
    """A folded Transpose leaves an initializer as a transposed numpy view, which onnx-ir's hash
    refused ('ndarray is not C-contiguous'); equal tensors are still merged."""
    import onnx_ir as ir

    from edgepress.passes import get_pass

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = ir.Value(name="view", const_value=ir.Tensor(weight.T), type=ir.TensorType(ir.DataType.FLOAT))
    copy = ir.Value(name="copy", const_value=ir.Tensor(weight.T.copy()), type=ir.TensorType(ir.DataType.FLOAT))
    x = ir.Value(name="x", shape=ir.Shape([4, 3]), type=ir.TensorType(ir.DataType.FLOAT))
    first = ir.node("Add", [x, view])
    second = ir.node("Add", [first.outputs[0], copy])
    second.outputs[0].name = "y"
    graph = ir.Graph([x], [second.outputs[0]], nodes=[first, second], initializers=[view, copy],
                     opset_imports={"": 17})  # fmt: skip
    result = get_pass("deduplicate_initializers")(ir.Model(graph, ir_version=8))
    assert result.changes == 1
    (kept,) = result.model.graph.initializers.values()
    np.testing.assert_array_equal(kept.const_value.numpy(), weight.T)


def test_sum_as_add_chains_adds_and_keeps_broadcasting():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] a, float[2,3] b, float[3] c) => (float[2,3] y, float[2,3] z) {
          s = Sum (a, b, c)
          y = Relu (s)
          z = Sum (a)
        }
        """,
        {},
    )
    after = check_pass("sum_as_add", proto, changes=2, **EXACT)
    assert ops(after) == {"Add": 2, "Relu": 1, "Identity": 1}
