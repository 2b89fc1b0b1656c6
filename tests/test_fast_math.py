"""Transcendental functions legalized through vectorizable approximations on CPUs
(backends/kernels/common/fast_math.py): within float32 rounding of the exact functions, and no
libm call per element left in the library.

Their speed is measured by benchmarks (a YOLO detector's SiLU epilogues), not here.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.conftest import disassembly, ort_outputs, save

OPS = ("Sigmoid", "Exp", "Tanh", "Erf", "Softmax")


def _unary_model(tmp_path):
    """x [4, 5000] -> Sigmoid, Exp, Tanh, Erf, Softmax (axis -1), x * Sigmoid(x) (SiLU): six
    outputs."""
    nodes = [helper.make_node(op, ["x"], [op.lower()]) for op in OPS]
    nodes += [
        helper.make_node("Sigmoid", ["x"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["silu"]),
    ]
    outputs = [*(op.lower() for op in OPS), "silu"]
    graph = helper.make_graph(
        nodes,
        "unary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5000])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 5000]) for name in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, tmp_path / "unary.onnx"), outputs


def _exact(name: str, x: np.ndarray) -> np.ndarray:
    """The function in float64 (numpy; erf from math)."""
    from math import erf

    x = x.astype(np.float64)
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return {
        "sigmoid": lambda: 1 / (1 + np.exp(-x)),
        "exp": lambda: np.exp(x),
        "tanh": lambda: np.tanh(x),
        "erf": lambda: np.vectorize(erf)(x),
        "silu": lambda: x / (1 + np.exp(-x)),
    }[name]()


@pytest.mark.parametrize("target", ["x86_64", "arm64"])
def test_fast_transcendentals_stay_within_float32_rounding(cli, tmp_path, target):
    """On x86_64 and on arm64 (NEON, run under qemu): the same polynomials, 4 or 16 lanes."""
    source, outputs = _unary_model(tmp_path)
    out = tmp_path / "out"
    r = cli(source, "--target", target, "-o", out, "-q")
    assert r.code == 0, r.err
    # the range where they are used: logits and activations up to +-30, and exp's whole range
    x = np.linspace(-30, 30, 20000, dtype=np.float32).reshape(4, 5000)
    x[3] = np.linspace(-87, 88, 5000, dtype=np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")
    assert r.code == 0, r.err
    got = np.load(tmp_path / "o.npz")
    ref = dict(zip(outputs, ort_outputs(source, {"x": x}), strict=True))
    for name in outputs:
        exact = _exact(name, x)
        scale = np.maximum(np.abs(exact), 1e-30 if name in ("exp", "softmax") else 1.0)
        error = float(np.max(np.abs(got[name] - exact) / scale))
        ort_error = float(np.max(np.abs(ref[name] - exact) / scale))
        # a few float32 ulps, and never far beyond onnxruntime's own error
        assert error <= max(1e-6, 4 * ort_error), (name, error, ort_error)


@pytest.mark.parametrize(
    ("target", "objdump", "call"),
    [("x86_64", "objdump", "call"), ("arm64", "aarch64-linux-gnu-objdump", "bl")],
)
def test_no_libm_call_per_element(cli, tmp_path, target, objdump, call):
    if shutil.which(objdump) is None:
        pytest.skip(f"no {objdump}")
    source, _ = _unary_model(tmp_path)
    out = tmp_path / "out"
    r = cli(source, "--target", target, "-o", out, "-q")
    assert r.code == 0, r.err
    listing = disassembly(out / "model.so", objdump)
    calls = [line for line in listing.splitlines() if f"\t{call}" in line]
    for function in ("expf", "tanhf", "erff"):
        assert not any(f"<{function}@" in line for line in calls), function
    if target == "arm64":  # the polynomials are 4-lane NEON FMAs
        assert len(re.findall(r"\bfmla\s+v\d+\.4s", listing)) >= 6 * 8


@pytest.mark.parametrize("shape", [(1, 40, 1000), (2, 3, 64), (5, 17), (1, 2, 3, 197)])
def test_softmax_rows_are_scheduled_by_their_rule_and_equal_numpy(shape):
    """A softmax over the last axis (common/softmax): each row in one iteration of a loop,
    parallel where there are PARALLEL_MIN elements, its max and sum over whole vectors as 16
    lanes (vectorized) and the rest of the row on its own; rows with and without such a rest,
    of rank 2 to 4. Within float32 rounding of numpy's float64 softmax (relative, down to
    1e-17: fast_exp's error grows below 1e-30)."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common.softmax import softmax_last_axis
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    dims = [tvm.tirx.IntImm("int64", d) for d in shape]  # as Relax's legalization gives them
    x = te.placeholder(dims, "float32", name="x")
    mod = tvm.IRModule({"main": te.create_prim_func([x, softmax_last_axis(x)])})
    rules.register(describe(target))
    mod, done = sample_schedules(mod, target, describe(target), {"main"})
    assert done == {"main"}
    script = mod["main"].script()
    from edgepress.backends.kernels.common.softmax import PARALLEL_MIN

    assert ("T.parallel" in script) == (np.prod(shape) >= PARALLEL_MIN), script
    assert "T.vectorized(16)" in script, script
    assert 'T.sblock("T_fast_exp")' in script, script  # computed once, not in each reader
    lib = tvm.compile(mod, target=target)
    values = np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 8
    got = tvm.runtime.empty(shape, "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(values), got)
    exact = _exact("softmax", values)
    assert float(np.max(np.abs(got.numpy() - exact) / exact)) < 1e-5
