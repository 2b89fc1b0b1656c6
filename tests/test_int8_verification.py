"""Verification of int8 artifacts is right in both directions: lowering bugs planted in the
integer kernels of the digits CNN are each caught (exit 6), and legitimate rounding behind a
float op (a softmax after an int8 matmul) passes within the int8 reference's own one-step
noise (compiler/quant_noise.py), which a planted bug lands far outside."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ort_outputs, save

INT8 = ["--quantize", "int8", "--calibration"]


def _first_chain_planted(monkeypatch, plant):
    """Every int8 build in this test lowers its first quantized layer through `plant`."""
    from edgepress.backends.kernels.int8 import lowering

    real = lowering._chain_of
    seen = []

    def planted(*args, **kwargs):
        out_var, chain = real(*args, **kwargs)
        if not seen and chain.kind == "dot-product":
            seen.append(chain)
            plant(chain)
        return out_var, chain

    monkeypatch.setattr(lowering, "_chain_of", planted)
    return seen


def _swap_channels(chain):
    chain.weight = chain.weight[[1, 0, *range(2, len(chain.weight))]]


def _drop_bias(chain):
    chain.bias = np.zeros_like(chain.bias)


def _shift_zero_point(chain):
    """A zero point off by 3: the output's, or where the output stays float (before a sigmoid,
    nothing to shift there) the input's, whose share the bias holds."""
    if chain.out_dtype == "float32":
        chain.bias = chain.bias - 3 * chain.weight.astype(np.int32).sum(axis=(1, 2, 3))
    else:
        chain.out_zero_point += 3


def _wrong_requantize_scale(chain):
    chain.out_scale *= 1.25


PLANTS = (_swap_channels, _drop_bias, _shift_zero_point, _wrong_requantize_scale)


@pytest.mark.parametrize("plant", PLANTS)
def test_planted_lowering_bugs_are_caught(cli, digits, tmp_path, monkeypatch, plant):
    seen = _first_chain_planted(monkeypatch, plant)
    out = tmp_path / "out"
    r = cli(digits / "digits.onnx", "--target", "x86_64", "-o", out, *INT8,
            digits / "calibration.npz", "-q")
    assert seen, "no integer layer was lowered: nothing was planted"
    assert r.code == 6, f"{plant.__name__} was not caught: {r.err}"
    check = json.loads((out / "report.json").read_text())["verification"]["artifact"]
    assert check["status"] == "failed"


def test_the_unplanted_build_passes(cli, digits, tmp_path):
    out = tmp_path / "out"
    r = cli(digits / "digits.onnx", "--target", "x86_64", "-o", out, *INT8,
            digits / "calibration.npz", "-q")
    assert r.code == 0, r.err


def _matmul_then(tmp_path, op: str = "Softmax"):
    """x -> MatMul (quantized, per-channel weight [K, N]) -> `op` over 300 classes: the float
    op stays float, so its output is checked by tolerance, not on an int8 grid. "Decode": a
    sigmoid scaled by 50 (a detector's box decoding) concatenated with the logits, which the
    quantizer rounds: the output is on an int8 grid, behind float ops that turn one step into
    several."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 300)).astype(np.float32) * 0.4, "w")
    stride = numpy_helper.from_array(np.full((1, 300), 50.0, np.float32), "stride")
    if op == "Decode":
        tail = [
            helper.make_node("Sigmoid", ["logits"], ["s"], name="sigmoid"),
            helper.make_node("Mul", ["s", "stride"], ["boxes"], name="decode"),
            helper.make_node("Concat", ["boxes", "logits"], ["p"], name="head", axis=1),
        ]
    else:
        attrs = {"axis": -1} if op == "Softmax" else {}
        tail = [helper.make_node(op, ["logits"], ["p"], name=op.lower(), **attrs)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="classifier"), *tail],
        f"matmul_{op.lower()}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT,
                                       [4, 600] if op == "Decode" else [4, 300])],
        [w, stride],
    )
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                 tmp_path / f"{op.lower()}.onnx")
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((32, 4, 64)).astype(np.float32))
    return model


def test_rounding_behind_a_float_softmax_is_within_the_int8_noise(tmp_path):
    """The one-step noise of the QDQ model is measured on its float outputs, is small, and a
    whole-tensor error of one layer (what a planted bug makes) is far outside it."""
    import onnx

    from edgepress.compiler.quant_noise import perturbed, quantization_noise

    source = _matmul_then(tmp_path)
    import edgepress

    artifact = edgepress.build(source, target="x86_64", output=tmp_path / "out",
                               quantize="int8", calibration=tmp_path / "cal.npz")
    assert artifact.status == "ok"
    model = onnx.load(artifact.path / "model.onnx")
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    noise = quantization_noise(model, {"x": x})["p"]
    assert 0 < noise.max_abs_err < 0.05 and noise.cosine > 0.99
    # the perturbation moves about a tenth of each quantized activation by one step
    extra = [n for n in perturbed(model, 0).graph.node if n.name.endswith("__one_step_add")]
    assert extra
    moved = numpy_helper.to_array(
        next(i for i in perturbed(model, 0).graph.initializer if i.name.endswith("_noise"))
    )
    assert 0.05 < np.count_nonzero(moved) / moved.size < 0.15
    # a planted whole-tensor error: the softmax of logits scaled by 1.25
    ref = ort_outputs(artifact.path / "model.onnx", {"x": x})[0]
    logits = np.log(np.clip(ref, 1e-30, None))
    wrong = np.exp(1.25 * logits)
    wrong /= wrong.sum(axis=-1, keepdims=True)
    assert np.abs(wrong - ref).max() > 2 * noise.max_abs_err


@pytest.mark.parametrize(
    ("op", "plant"),
    [
        *(("Sigmoid", p) for p in PLANTS),
        *(("Decode", p) for p in PLANTS),
        *(("Softmax", p) for p in (_swap_channels, _drop_bias, _wrong_requantize_scale)),
    ],
)
def test_planted_bugs_behind_a_float_op_are_caught(cli, tmp_path, monkeypatch, op, plant):
    """The same bugs in the int8 matmul before a float op: the output is checked by tolerance
    and, past it, within the one-step noise, which the bugs exceed. (A zero point shifted
    before a softmax moves every logit alike, which the softmax cancels: its output is right,
    so that pair is not planted.)"""
    source = _matmul_then(tmp_path, op)
    seen = _first_chain_planted(monkeypatch, plant)
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out", *INT8, tmp_path / "cal.npz",
            "-q")
    assert seen, "the matmul was not lowered to an integer kernel: nothing was planted"
    assert r.code == 6, f"{plant.__name__} behind {op}: exit {r.code} {r.err}"


def test_an_output_grid_behind_a_float_op_passes(cli, tmp_path):
    """The unplanted build of the "Decode" graph verifies: its output is on an int8 grid,
    checked within one step, or within the int8 noise where the sigmoid moved it further."""
    import onnx

    source = _matmul_then(tmp_path, "Decode")
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, *INT8, tmp_path / "cal.npz", "-q")
    assert r.code == 0, r.err
    ops = [n.op_type for n in onnx.load(out / "model.onnx").graph.node]
    assert ops[-1] == "DequantizeLinear" and "Sigmoid" in ops  # a grid output behind a float op
    check = json.loads((out / "report.json").read_text())["verification"]["artifact"]
    assert check["outputs"][0]["step"]
