"""The int8 convolution on AMX tiles (kernels/int8/amx_conv): the kernel against numpy's
integer arithmetic, and a quantized model end to end against onnxruntime. Both need a CPU
with AMX and a Linux that grants its tile data; elsewhere they are skipped."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from onnx import helper

from tests.builders import random_initializer
from tests.conftest import disassembly
from tests.test_int8_lowering import (
    _assert_within_one_step_of_onnxruntime,
    _layers,
    _saved_with_calibration,
)


def _amx_or_skip() -> None:
    from edgepress.backends.targets.x86_64 import host_amx

    if not host_amx():
        pytest.skip("this CPU has no AMX int8 tiles, or Linux does not grant their state")


def _numpy_conv(x, w, bias, multiplier, stride, zero_point, out_dtype="uint8"):
    """Integer sums of the padded NHWC x and OIHW w, requantized as packed_conv2d does (or,
    for a float32 output, scaled: the dequantized sum a float op reads)."""
    n, height, width, _ = x.shape
    oc, _, kh, kw = w.shape
    oh, ow = (height - kh) // stride + 1, (width - kw) // stride + 1
    total = np.zeros((n, oh, ow, oc), np.int64)
    for ry in range(kh):
        for rx in range(kw):
            patch = x[:, ry : ry + (oh - 1) * stride + 1 : stride,
                      rx : rx + (ow - 1) * stride + 1 : stride].astype(np.int64)  # fmt: skip
            total += patch @ w[:, :, ry, rx].astype(np.int64).T
    scaled = (total + bias).astype(np.float32) * multiplier
    if out_dtype == "float32":
        return scaled
    return np.clip(np.rint(scaled) + zero_point, 0, 255).astype(np.uint8)


# 1x1 over a whole image as one row (196 pixels: a last tile overlapping the one before),
# 3x3 over rows of 14 (tiles of 14 rows), 3x3 stride 2 over 9 columns, and an odd number of
# pixel tiles and of output-channel blocks; uint8 out, and float32 (a conv only float ops
# read, before a HardSwish).
@pytest.mark.parametrize(
    ("shape", "out_dtype"),
    [
        ((14, 14, 64, 32, 1, 1), "uint8"),
        ((16, 16, 128, 48, 3, 1), "uint8"),
        ((9, 21, 64, 16, 3, 2), "uint8"),
        ((5, 5, 64, 16, 1, 1), "uint8"),
        ((16, 16, 128, 48, 3, 1), "float32"),
    ],
    ids=["1x1-flat", "3x3", "3x3-stride2", "1x1-one-tile", "3x3-float-out"],
)
def test_amx_conv_equals_numpy_integer_arithmetic(shape, out_dtype):
    _amx_or_skip()
    import tvm

    from edgepress.backends.kernels.int8.amx_conv import amx_conv2d
    from edgepress.backends.kernels.int8.compute import pack_weight

    height, width, channels, out_channels, k, stride = shape
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, height, width, channels)).astype(np.uint8)
    w = rng.integers(-128, 128, (out_channels, channels, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, out_channels).astype(np.int32)
    multiplier = (rng.random(out_channels) * 2e-5).astype(np.float32)
    oh, ow = (height - k) // stride + 1, (width - k) // stride + 1
    packed = pack_weight(w, 16)
    func = amx_conv2d(x.shape, packed.shape, (1, oh, ow, out_channels), strides=(stride, stride),
                      dilation=(1, 1), out_zero_point=3, out_dtype=out_dtype,
                      in_int32=False)  # fmt: skip
    target = {"kind": "llvm", "mcpu": "sapphirerapids"}
    lib = tvm.compile(func.with_attr("global_symbol", "main"), target=target)
    out = tvm.runtime.tensor(np.zeros((1, oh, ow, out_channels), out_dtype))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, packed, bias, multiplier)), out)
    want = _numpy_conv(x, w, bias, multiplier, stride, 3, out_dtype)
    np.testing.assert_array_equal(out.numpy(), want)


def test_convs_whose_channels_fit_run_on_amx_within_one_step_of_onnxruntime(cli, tmp_path):
    """Conv 3x3 (3 -> 64: VNNI) -> Conv 3x3 pad 1 (64 -> 64) -> Conv 1x1 (64 -> 128) ->
    Conv 1x1 stride 2 (128 -> 96) -> Conv 3x3 pad 1 (96 -> 32: its input padded to 128
    channels) -> Conv 1x1 (32 -> 16: VNNI, 32 channels are too far from a whole slice), int8
    on this machine: the four middle convs run on AMX (tdpbusd in the library), and the
    artifact stays within one step of onnxruntime's run of its QDQ model."""
    _amx_or_skip()
    rng = np.random.default_rng(23)
    inits = [
        random_initializer(rng, "w1", (64, 3, 3, 3)),
        random_initializer(rng, "w2", (64, 64, 3, 3)),
        random_initializer(rng, "w3", (128, 64, 1, 1)),
        random_initializer(rng, "w4", (96, 128, 1, 1)),
        random_initializer(rng, "w5", (32, 96, 3, 3)),
        random_initializer(rng, "w6", (16, 32, 1, 1)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv_in"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "w2"], ["b"], pads=[1] * 4, name="conv3x3"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Conv", ["br", "w3"], ["c"], name="conv1x1"),
        helper.make_node("Relu", ["c"], ["cr"], name="relu_c"),
        helper.make_node("Conv", ["cr", "w4"], ["d"], strides=[2, 2], name="conv_stride2"),
        helper.make_node("Relu", ["d"], ["dr"], name="relu_d"),
        helper.make_node("Conv", ["dr", "w5"], ["e"], pads=[1] * 4, name="conv96"),
        helper.make_node("Relu", ["e"], ["er"], name="relu_e"),
        helper.make_node("Conv", ["er", "w6"], ["y"], name="conv32"),
    ]
    source, cal = _saved_with_calibration(tmp_path / "amx.onnx", nodes, inits, [1, 16, 7, 7], rng)
    out = tmp_path / "art"
    r = cli(source, "--target", "x86_64", "-o", out, "-q", "--quantize", "int8",
            "--calibration", cal, "--fidelity-floor", "0")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert set(_layers(report).values()) == {"dot-product"}
    assert report["int8_compute"]["amx"] is True
    names = [k["name"] for k in report["kernels"]]
    assert sum("conv2d_int8_amx" in n for n in names) == 4, names
    # Their FLOPs are counted (TVM's estimate sees only the epilogue): the 1x1 conv's
    # 2 x 14 x 14 pixels x 128 x 64 channels.
    flops = {k["name"]: k["flops"] for k in report["kernels"] if "conv2d_int8_amx" in k["name"]}
    assert 2 * 14 * 14 * 128 * 64 in flops.values(), flops
    if shutil.which("objdump"):
        assert len(re.findall(r"\btdpbusd\b", disassembly(out / "model.so"))) >= 4
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=29)
