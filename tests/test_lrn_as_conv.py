"""lrn_as_conv: LRN as a 1x1 convolution over the channel windows, against onnxruntime's LRN
(graph optimizations off) and a numpy reference of the ONNX definition, and through builds."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgepress.passes import get_pass
from edgepress.passes.decompose.lrn_as_conv import band
from tests.builders import random_initializer
from tests.conftest import save
from tests.pass_checks import _run, apply, check_pass, model, ops, rand


def _lrn(channels: int, attributes: str):
    return model(
        f"""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2, {channels}, 5, 6] x) => (float[2, {channels}, 5, 6] y) {{
            y = LRN <{attributes}> (x)
        }}"""
    )


def _numpy_lrn(x, size, alpha, beta, bias):
    """The ONNX definition: each channel's window from c - floor((size - 1) / 2) to
    c + ceil((size - 1) / 2)."""
    squares = x.astype(np.float64) ** 2
    total = np.zeros_like(squares)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels - 1, c + -(-(size - 1) // 2))
        total[:, c] = squares[:, lo : hi + 1].sum(axis=1)
    return x / (bias + alpha / size * total) ** beta


def _assert_numpy_lrn(after, channels, size, alpha, beta, bias):
    x = np.random.default_rng(4).uniform(-3, 3, (2, channels, 5, 6)).astype(np.float32)
    (got,) = _run(after, {"x": x})
    np.testing.assert_allclose(got, _numpy_lrn(x, size, alpha, beta, bias), rtol=2e-6, atol=1e-7)


# GoogLeNet's and AlexNet's LRN (size 5, beta 0.75); the exponents that take Sqrt, no power
# and Pow.
@pytest.mark.parametrize(
    ("channels", "size", "alpha", "beta", "bias", "kept"),
    [
        (16, 5, 1e-4, 0.75, 1.0, {"Sqrt": 2}),
        (7, 3, 0.02, 0.5, 2.0, {"Sqrt": 1}),
        (6, 3, 0.5, 1.0, 1.0, {}),
        (9, 3, 0.1, 0.9, 0.5, {"Pow": 1}),
    ],
)
def test_lrn_becomes_a_window_sum_conv_and_matches_onnxruntime(
    channels, size, alpha, beta, bias, kept
):
    attributes = f"size = {size}, alpha = {alpha}, beta = {beta}, bias = {bias}"
    after = check_pass("lrn_as_conv", _lrn(channels, attributes), changes=1)
    assert ops(after) == {"Mul": 1 + (beta == 0.75), "Conv": 1, "Div": 1, **kept}
    _assert_numpy_lrn(after, channels, size, alpha, beta, bias)


def test_an_even_window_follows_the_onnx_definition():
    """onnxruntime refuses an even size (and TVM's import of one returns a channel more): the
    rewrite follows the ONNX definition, one channel more after than before."""
    after, changes = apply("lrn_as_conv", _lrn(7, "size = 4, alpha = 0.02, beta = 0.5, bias = 2.0"))
    assert changes == 1
    _assert_numpy_lrn(after, 7, 4, 0.02, 0.5, 2.0)


def test_band_covers_the_onnx_window():
    # size 4: channel 3's window is 2..5 (one before, two after), clipped at the last channel.
    weight = band(6, 4, 8.0)[:, :, 0, 0]
    assert np.flatnonzero(weight[3]).tolist() == [2, 3, 4, 5]
    assert np.flatnonzero(weight[5]).tolist() == [4, 5]
    assert np.flatnonzero(weight[0]).tolist() == [0, 1, 2]
    assert set(weight[weight != 0].tolist()) == {2.0}


def _conv_lrn_net(tmp_path):
    """Conv 3x3 (3 -> 32) -> Relu -> LRN (size 5) -> Conv 1x1 (32 -> 16), as GoogLeNet's stem."""
    rng = np.random.default_rng(8)
    inits = [
        random_initializer(rng, "w1", (32, 3, 3, 3)),
        random_initializer(rng, "w2", (16, 32, 1, 1)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name="conv1"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
        helper.make_node(
            "LRN", ["ar"], ["n"], size=5, alpha=1e-4, beta=0.75, bias=1.0, name="norm1"
        ),
        helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 20, 20])],
        inits,
    )
    source = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                  tmp_path / "lrn.onnx")  # fmt: skip
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rng.standard_normal((16, 1, 3, 20, 20)).astype(np.float32))
    return source, cal


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_a_built_lrn_runs_as_a_conv_with_no_pool_or_transpose(cli, tmp_path, int8):
    """The build verifies against onnxruntime; its kernels hold no avg_pool3d, power or
    transpose around the LRN (TVM's LRN: 46% of GoogLeNet's time). int8 keeps the window sum
    in float."""
    source, cal = _conv_lrn_net(tmp_path)
    out = tmp_path / "art"
    extra = ["--quantize", "int8", "--calibration", cal, "--fidelity-floor", "0"] if int8 else []
    r = cli(source, "--target", "x86_64", "-o", out, "-q", *extra)
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    names = [k["name"] for k in report["kernels"]]
    assert not [n for n in names if "pool3d" in n or "power" in n], names
    # The model's input into NHWC and its output back: none around the LRN.
    assert sum("transpose" in n for n in names) <= 2, names
    if int8:
        layers = {layer["node"]: layer for layer in report["int8_compute"]["layers"]}
        assert layers["conv1"]["kernel"] == "dot-product"
        assert not layers["norm1_lrn_window_sum"]["kernel"]  # float: not quantized


def test_pruning_leaves_an_lrns_channels_whole():
    """Slicing the window sum, or the channels the LRN normalizes, would change its windows:
    prune_channels freezes them (the conv after the LRN may still lose channels)."""
    proto = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x) => (float[1, 3, 6, 6] y) {
            a = Conv <pads = [1, 1, 1, 1]> (x, w1)
            r = Relu (a)
            n = LRN <size = 3> (r)
            b = Conv (n, w2)
            rb = Relu (b)
            y = Conv (rb, w3)
        }""",
        {"w1": rand(8, 4, 3, 3, seed=1), "w2": rand(8, 8, 1, 1, seed=2),
         "w3": rand(3, 8, 1, 1, seed=3)},  # fmt: skip
    )
    after, _ = apply("lrn_as_conv", proto)
    result = get_pass("prune_channels")(ir.from_proto(after), ratio=0.5, sensitivity=False)
    pruned = ir.to_proto(result.model)
    shapes = {i.name: tuple(i.dims) for i in pruned.graph.initializer}
    convs = {n.output[0]: shapes[n.input[1]] for n in pruned.graph.node if n.op_type == "Conv"}
    (window,) = [n for n in pruned.graph.node if n.name.endswith("lrn_window_sum")]
    assert convs[window.output[0]] == (8, 8, 1, 1)
    assert convs["a"] == (8, 4, 3, 3)
    assert convs["b"] == (4, 8, 1, 1)  # after the LRN: pruned as before
