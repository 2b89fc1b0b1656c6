"""Dynamic quantization's integer matmuls (MatMulInteger, DynamicQuantizeLSTM) and convs
(ConvInteger) on the int8 dot-product kernels (backends/kernels/int8/integer_matmul.py),
against onnxruntime running the quantized model: on this CPU, on AVX2 code, and on arm64
under qemu."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import disassembly, ort_outputs, save

DEPTH, COLUMNS = 30, 40  # K not whole dot-product terms (a pack), N not whole weight blocks


def _float_matmul(rng) -> onnx.ModelProto:
    """x [3, 5, K] -> MatMul -> Relu. Some weight columns lie far off zero, so that uint8
    weights centred on one zero point span more than int8 there (the kernel's column shift)."""
    w = rng.standard_normal((DEPTH, COLUMNS)).astype(np.float32) * 0.1
    w[:, ::7] += 0.6
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Relu", ["y"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, DEPTH])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 5, COLUMNS])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _quantized_dynamically(model: onnx.ModelProto, folder, weights: str) -> onnx.ModelProto:
    """onnxruntime's quantize_dynamic of `model` with `weights` ("uint8" or "int8") weights,
    written to folder/int8.onnx."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = save(model, folder / "float.onnx")
    weight_type = QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8
    quantize_dynamic(str(source), str(folder / "int8.onnx"), weight_type=weight_type)
    return onnx.load(folder / "int8.onnx")


@pytest.fixture(scope="module", params=["uint8", "int8"])
def quantized(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"dynamic_{request.param}")
    model = _quantized_dynamically(_float_matmul(np.random.default_rng(3)), folder, request.param)
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    if request.param == "uint8":  # the column shift is exercised
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        w = next(v for v in weights.values() if v.dtype == np.uint8 and v.ndim == 2)
        zero = next(v for v in weights.values() if v.dtype == np.uint8 and v.ndim == 0)
        assert (w.astype(int) - int(zero)).max() > 127
    return folder / "int8.onnx"


def _build(cli, source, out, *args) -> dict:
    r = cli(source, "-o", out, "-q", *args)
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["artifact"]["status"] == "ok"
    layers = report["float_conv"]["layers"]
    assert [layer["kernel"] for layer in layers] == ["integer"], layers
    assert any(k["name"].startswith("integer_matmul") for k in report["kernels"])
    return report


def _run_against_onnxruntime(cli, tmp_path, out, source) -> None:
    """`compress run` of the artifact against onnxruntime's run of the quantized model, on
    an input of both signs off centre (a zero point that is neither 0 nor 128)."""
    x = (np.random.default_rng(9).standard_normal((3, 5, DEPTH)) + 0.7).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    got = np.load(tmp_path / "out.npz")["out"]
    (ref,) = ort_outputs(source, {"x": x})
    # the same integers times the same scales: float32 rounding of the last multiply only
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("mcpu", [[], ["--mcpu", "znver3"]], ids=["host", "avx2"])
def test_integer_matmul_matches_onnxruntime_on_x86(cli, tmp_path, quantized, mcpu):
    out = tmp_path / "art"
    report = _build(cli, quantized, out, "--target", "x86_64", *mcpu)
    instruction = {"dot_16x4_vnni": "vpdpbusd", "dot_8x2x2_avx2": "vpmaddwd"}.get(
        report["int8_compute"]["intrinsic"] if report.get("int8_compute") else None
    )
    if instruction and shutil.which("objdump"):
        listing = disassembly(out / "model.so")
        assert re.search(rf"\b{instruction}\b", listing)
    _run_against_onnxruntime(cli, tmp_path, out, quantized)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
@pytest.mark.parametrize(
    ("mattr", "instruction"), [("+dotprod", "sdot"), ("+dotprod,+i8mm", "usdot")]
)
def test_integer_matmul_matches_onnxruntime_on_arm64_under_qemu(
    cli, tmp_path, quantized, mattr, instruction
):
    """sdot reads int8 activations (uint8 moved by 128: the kernel's offset), usdot uint8."""
    out = tmp_path / "arm"
    report = _build(cli, quantized, out, "--target", "arm64", f"--mattr={mattr}")
    assert "qemu-aarch64" in report["verification"]["artifact"]["reference"]
    listing = disassembly(out / "model.so", "aarch64-linux-gnu-objdump")
    assert re.search(rf"\b{instruction}\b", listing)


CONV_IN, CONV_OUT = 6, 20  # channels not whole dot-product terms, nor whole weight blocks


def _float_convs(rng) -> onnx.ModelProto:
    """x [1, 6, 9, 11] -> two 3x3 convs of it: stride 1 padded all round, and stride 2 padded
    on one side only. Their weights lie off zero, so that uint8 weights centred on one zero
    point span more than int8 (the kernel's shift, with the window sums)."""
    w1 = rng.standard_normal((CONV_OUT, CONV_IN, 3, 3)).astype(np.float32) * 0.2 + 0.25
    w2 = rng.standard_normal((8, CONV_IN, 3, 3)).astype(np.float32) * 0.2 - 0.25
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["b"], pads=[1, 0, 0, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CONV_IN, 9, 11])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, CONV_OUT, 9, 11]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 5, 6]),
        ],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module", params=["uint8", "int8"])
def quantized_convs(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"dynamic_conv_{request.param}")
    model = _quantized_dynamically(_float_convs(np.random.default_rng(5)), folder, request.param)
    assert [n.op_type for n in model.graph.node].count("ConvInteger") == 2
    return folder / "int8.onnx", request.param


def _check_convs(cli, tmp_path, out, source) -> None:
    """The artifact's outputs against onnxruntime's on an input of both signs off centre."""
    x = (np.random.default_rng(11).standard_normal((1, CONV_IN, 9, 11)) + 0.6).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    got = np.load(tmp_path / "out.npz")
    for name, ref in zip(("a", "b"), ort_outputs(source, {"x": x})):
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def _build_convs(cli, source, weights: str, out, *args) -> dict:
    r = cli(source, "-o", out, "-q", *args)
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["artifact"]["status"] == "ok"
    layers = report["float_conv"]["layers"]
    assert [(layer["op"], layer["kernel"]) for layer in layers] == [("conv2d", "integer")] * 2
    names = [k["name"] for k in report["kernels"]]
    assert any(name.startswith("integer_conv2d") for name in names), names
    # uint8 weights centred on their zero point leave int8: the shift's window sums
    assert any("window_sums" in name for name in names) == (weights == "uint8"), names
    return report


@pytest.mark.parametrize("mcpu", [[], ["--mcpu", "znver3"]], ids=["host", "avx2"])
def test_conv_integer_matches_onnxruntime_on_x86(cli, tmp_path, quantized_convs, mcpu):
    """ConvInteger (onnxruntime's dynamic quantization of a Conv) on the integer kernel, its
    input padded with the zero point computed at run time."""
    source, weights = quantized_convs
    out = tmp_path / "art"
    _build_convs(cli, source, weights, out, "--target", "x86_64", *mcpu)
    _check_convs(cli, tmp_path, out, source)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
def test_conv_integer_matches_onnxruntime_on_arm64_under_qemu(cli, tmp_path, quantized_convs):
    """sdot's int8 activations: the uint8 input and its run-time zero point moved by 128."""
    source, weights = quantized_convs
    out = tmp_path / "arm"
    report = _build_convs(cli, source, weights, out, "--target", "arm64", "--mattr=+dotprod")
    assert "qemu-aarch64" in report["verification"]["artifact"]["reference"]
    assert re.search(r"\bsdot\b", disassembly(out / "model.so", "aarch64-linux-gnu-objdump"))
