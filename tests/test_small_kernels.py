"""Small kernels run on the calling thread (backends/relax/small_kernels.py): their parallel
loops are made serial, larger ones keep theirs, and both still compute the same."""

from __future__ import annotations

import numpy as np


def _scheduled_add(n: int):
    """x + 1 over [n, 64] as a PrimFunc whose outer loop is parallel."""
    from tvm import s_tir, te

    x = te.placeholder((n, 64), "float32", name="x")
    y = te.compute((n, 64), lambda i, j: x[i, j] + 1.0, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    outer, inner = sch.get_loops(sch.get_sblock("y"))
    sch.parallel(outer)
    sch.vectorize(inner)
    return sch.mod["main"]


def test_only_small_kernels_lose_their_parallel_loops():
    import tvm

    from edgepress.backends.kernels.common.tir_walk import loops
    from edgepress.backends.relax.small_kernels import SERIAL_BYTES, serial_where_small

    small, large = 8, 4 * SERIAL_BYTES // 256  # 4 KB, and 4x SERIAL_BYTES of input alone
    mod = tvm.IRModule(
        {
            "add8": _scheduled_add(small).with_attr("global_symbol", "add8"),
            "addlarge": _scheduled_add(large).with_attr("global_symbol", "addlarge"),
        }
    )
    flops = {"add8": small * 64.0, "addlarge": large * 64.0}
    mod, done = serial_where_small(mod, flops.get)
    assert done == {"add8"}

    def kinds(name):
        return {loop.kind for loop in loops(mod[name])}

    assert tvm.tirx.ForKind.PARALLEL not in kinds("add8")
    assert tvm.tirx.ForKind.VECTORIZED in kinds("add8")  # only the parallel loop changed
    assert tvm.tirx.ForKind.PARALLEL in kinds("addlarge")
    lib = tvm.compile(mod, target="llvm")
    for name, n in (("add8", small), ("addlarge", large)):
        x = np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)
        y = tvm.runtime.empty((n, 64), "float32", tvm.cpu())
        lib[name](tvm.runtime.tensor(x), y)
        np.testing.assert_array_equal(y.numpy(), x + 1.0)


def test_a_kernel_of_unknown_size_keeps_its_parallel_loop():
    import tvm

    from edgepress.backends.relax.small_kernels import serial_where_small

    mod = tvm.IRModule({"add8": _scheduled_add(8)})
    mod, done = serial_where_small(mod, lambda name: None)
    assert done == set()


def test_a_build_reports_its_small_kernels_as_serial(cli, tmp_path):
    """The pipeline applies it: a model of one small conv lists that kernel as serial in its
    report, and still equals onnxruntime (the build's own check)."""
    import json

    from onnx import TensorProto, helper

    from tests.builders import random_initializer
    from tests.conftest import save

    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [random_initializer(rng, "w", (8, 4, 3, 3))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = save(model, tmp_path / "small.onnx")
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    kernels = json.loads((out / "report.json").read_text())["kernels"]
    assert any(k["serial"] and "conv2d" in k["name"] for k in kernels), kernels
