"""int8 quantization: each calibrator against numpy on a known distribution, the QDQ model
against the float one in onnxruntime, a whole int8 build of the digits CNN (held-out fidelity,
size, the artifact against onnxruntime on the int8 model) and the messages for bad input."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgepress.passes.quantization.calibration import LEVELS, calibrate
from tests.pass_checks import model, rand

RELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,1000] x) => (float[1,1000] y) {
  y = Relu (x)
}
"""


@pytest.fixture(scope="module")
def gaussian_with_outliers():
    x = np.random.default_rng(0).standard_normal((64, 1, 1000)).astype(np.float32)
    x[3, 0, 5], x[7, 0, 9] = 12.0, -11.0
    return x


def _calibrated(x, method, **kw):
    return calibrate(model(RELU), {"x": x}, method=method, **kw)


def _fake_quant_mse(x: np.ndarray, threshold: float) -> float:
    step = 2 * threshold / LEVELS
    q = np.clip(np.round(x / step), -LEVELS // 2, LEVELS // 2) * step
    return float(np.mean((q - x) ** 2))


def test_minmax_is_numpys_min_and_max(gaussian_with_outliers):
    x = gaussian_with_outliers
    stats = _calibrated(x, "minmax")
    assert stats.ranges["x"] == (float(x.min()), float(x.max()))
    assert stats.ranges["y"] == (0.0, float(x.max()))  # a ReLU output starts at 0
    assert stats.samples == 64


def test_percentile_is_numpys_percentile_of_abs(gaussian_with_outliers):
    x = gaussian_with_outliers
    low, high = _calibrated(x, "percentile", percentile=99.9).ranges["x"]
    bin_width = float(np.abs(x).max()) / 2048
    assert low == -high
    assert abs(high - np.percentile(np.abs(x), 99.9)) <= 2 * bin_width


def test_entropy_clips_outliers_but_keeps_the_bulk(gaussian_with_outliers):
    x = gaussian_with_outliers
    low, high = _calibrated(x, "entropy").ranges["x"]
    assert np.percentile(np.abs(x), 99.9) < high < 0.5 * np.abs(x).max()
    assert low == pytest.approx(-high, rel=0.01)


def test_mse_threshold_is_as_good_as_a_brute_force_search(gaussian_with_outliers):
    x = gaussian_with_outliers
    low, high = _calibrated(x, "mse").ranges["x"]
    assert low == -high
    grid = np.linspace(1.0, float(np.abs(x).max()), 400)
    best = min(_fake_quant_mse(x, t) for t in grid)
    assert _fake_quant_mse(x, high) <= 1.02 * best
    assert _fake_quant_mse(x, high) < _fake_quant_mse(x, float(np.abs(x).max()))


def test_quantized_conv_matches_float_within_quantization_error():
    import onnxruntime as ort

    from edgepress.passes.quantization.quantize_int8 import quantize_int8

    float_model = model(
        """
        <ir_version: 8, opset_import: ["" : 11]>
        g (float[1,3,8,8] x) => (float[1,8,8,8] y) {
          c = Conv <pads=[1,1,1,1]> (x, w, b)
          y = Relu (c)
        }
        """,
        {"w": rand(8, 3, 3, 3), "b": rand(8, seed=1)},
    )
    data = {"x": np.random.default_rng(2).uniform(-1, 1, (32, 1, 3, 8, 8)).astype(np.float32)}
    stats = calibrate(float_model, data)
    result = quantize_int8(ir.from_proto(float_model), stats=stats)
    quantized = ir.to_proto(result.model)
    onnx.checker.check_model(quantized, full_check=True)
    assert quantized.opset_import[0].version >= 13  # opset 11 converted for per-channel axes
    ops = Counter(n.op_type for n in quantized.graph.node)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 2 and result.changes >= 1
    weights = [i for i in quantized.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert any(list(w.dims) == [8, 3, 3, 3] for w in weights)

    def run(m, x):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(m.SerializeToString(), options).run(None, {"x": x})[0]

    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    want, got = run(float_model, x), run(quantized, x)
    # Output step of the uint8 grid over [0, max]; input and weight rounding add a few steps.
    step = stats.ranges["y"][1] / 255
    assert np.abs(got - want).max() <= 4 * step
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_int8_build_of_the_digits_cnn(cli, digits, tmp_path):
    r = cli(
        digits / "digits.onnx",
        "--target",
        "x86_64",
        "-o",
        tmp_path / "q",
        "-q",
        "--quantize",
        "int8",
        "--calibration",
        digits / "calibration.npz",
        "--calibration-method",
        "percentile",
        "--eval",
        digits / "eval.npz",
    )
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["status"] == "ok"
    assert report["verification"]["artifact"]["reference"].startswith(
        "onnxruntime on the int8 model.onnx"
    )
    q = report["quantization"]
    assert q["method"] == "percentile" and q["fidelity_data"] == "held out of calibration"
    (logits,) = q["fidelity"]
    assert logits["cosine"] > 0.999 and logits["top1_agreement"] >= 0.98
    top1 = q["eval_top1"]
    assert top1["samples"] == 360 and top1["float"] > 0.95
    assert top1["float"] - top1["int8"] <= 0.005  # the digits budget: half a point
    assert report["sizes"]["model.onnx"] < 0.5 * report["sizes"]["source model"]
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "q" / "model.onnx").graph.node)
    assert (
        ops["QuantizeLinear"] >= 3
        and "## Quantization" in (tmp_path / "q" / "report.md").read_text()
    )
    assert report["passes"][-1]["name"] == "quantize_int8"
    assert (tmp_path / "q" / "sqnr.png").stat().st_size > 0
    r = cli("bench", tmp_path / "q", "--repeat", "3", "--json")
    assert r.code == 0, r.err
    timing = json.loads(r.out)
    assert timing["onnxruntime_int8_ms"] > 0 and timing["speedup_vs_onnxruntime_int8"] == (
        pytest.approx(timing["onnxruntime_int8_ms"] / timing["artifact_ms"])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "int8"], "--quantize int8 needs --calibration PATH"),
        (["--calibration", "x.npz"], "--calibration is given without --quantize int8"),
        (
            ["--quantize", "int8", "--calibration", "{cal}", "--calibration-method", "kl"],
            "--calibration-method 'kl': expected one of minmax, percentile, entropy, mse",
        ),
        (["--quantize", "int8", "--calibration", "{bad}"], "not a readable .npz file"),
        (
            ["--quantize", "int8", "--calibration", "{cal}", "--mean", "0.5,x"],
            "--mean '0.5,x': expected numbers",
        ),
    ],
)
def test_bad_quantization_options_are_named(cli, digits, tmp_path, args, message):
    (tmp_path / "bad.npz").write_bytes(b"PK not really")
    args = [a.format(cal=digits / "calibration.npz", bad=tmp_path / "bad.npz") for a in args]
    r = cli(digits / "digits.onnx", "--target", "x86_64", "-o", tmp_path / "out", *args)
    assert r.code == 2 and message in r.err
    assert not (tmp_path / "out").exists()


SENSITIVE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,8,8,8] y) {
  a = Conv <pads=[1,1,1,1]> (x, wa, ba)
  r = Relu (a)
  y = Conv <pads=[1,1,1,1]> (r, wb, bb)
}
"""


def _sensitive_model(tmp_path, then_add: bool = False):
    """Layer `b` writes the output with one huge channel (bias 400) beside channels of about 1:
    its per-tensor uint8 output step of about 1.6 swamps them (max error about 0.8). Keeping
    `b` in float leaves only its input's small error; keeping `a` in float does not help.
    With `then_add`, an Add follows `b` (and goes float with it)."""
    text = SENSITIVE
    if then_add:
        text = text.replace("y = Conv", "c = Conv").replace(
            "(r, wb, bb)\n", "(r, wb, bb)\n  y = Add (c, c)\n"
        )
    bias_b = rand(8, seed=3)
    bias_b[0] = 400.0
    proto = model(
        text,
        {
            "wa": rand(8, 3, 3, 3),
            "ba": rand(8, seed=1),
            "wb": rand(8, 8, 3, 3, seed=2),
            "bb": bias_b,
        },
    )
    proto.graph.node[0].name, proto.graph.node[2].name = "a", "b"
    path = tmp_path / "sensitive.onnx"
    onnx.save(proto, path)
    data = np.random.default_rng(4).uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=data)
    return path, tmp_path / "cal.npz"


def test_fallback_keeps_exactly_the_planted_sensitive_layer_in_float(cli, tmp_path):
    source, cal = _sensitive_model(tmp_path)
    plain = cli(
        source,
        "--target",
        "x86_64",
        "-o",
        tmp_path / "plain",
        "-q",
        "--quantize",
        "int8",
        "--calibration",
        cal,
    )
    assert plain.code == 0, plain.err
    all_int8 = json.loads((tmp_path / "plain" / "report.json").read_text())["quantization"]
    assert all_int8["fidelity"][0]["max_abs_err"] > 0.5  # the planted damage is real

    r = cli(
        source,
        "--target",
        "x86_64",
        "-o",
        tmp_path / "mixed",
        "-q",
        "--quantize",
        "int8",
        "--calibration",
        cal,
        "--max-accuracy-drop",
        "0.2",
        "--fidelity-metric",
        "max-error",
    )
    assert r.code == 0, r.err
    q = json.loads((tmp_path / "mixed" / "report.json").read_text())["quantization"]
    assert [f["layer"] for f in q["float_layers"]] == ["b"]
    assert q["budget"]["met"] and q["budget"]["final_drop"] <= 0.2
    assert q["fidelity"][0]["max_abs_err"] <= 0.2
    assert (tmp_path / "mixed" / "sqnr.png").stat().st_size > 0
    report_md = (tmp_path / "mixed" / "report.md").read_text()
    assert "Layers kept in float:" in report_md and "`b`" in report_md


def test_the_ops_after_a_layer_go_float_with_it(cli, tmp_path):
    """The Add after `b` rounds its output too: keeping `b` in float keeps the Add in float with
    it, and the budget is met (an Add left int8 would keep the error of `b`'s huge channel)."""
    source, cal = _sensitive_model(tmp_path, then_add=True)
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "--quantize", "int8", "--calibration", cal,
            "--max-accuracy-drop", "0.4", "--fidelity-metric", "max-error", "-q")  # fmt: skip
    assert r.code == 0, r.err
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert [f["layer"] for f in q["float_layers"]] == ["b"]
    assert len(q["float_layers"][0]["with"]) == 1  # the Add
    nodes = list(onnx.load(out / "model.onnx").graph.node)
    b = next(i for i, n in enumerate(nodes) if n.name == "b")
    assert [n.op_type for n in nodes[b + 1 :]] == ["Add"]  # nothing after b is rounded


ONLY_ELEMENTWISE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  s = Add (x, x)
  y = Mul (s, s)
}
"""


def test_a_budget_that_cannot_be_met_exits_with_the_table(cli, tmp_path):
    """No compute layer to keep in float, and the int8 Add and Mul miss a zero budget."""
    source = tmp_path / "elementwise.onnx"
    onnx.save(model(ONLY_ELEMENTWISE, {}), source)
    data = np.random.default_rng(4).uniform(-1, 1, (40, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=data)
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out", "--quantize", "int8",
            "--calibration", tmp_path / "cal.npz", "--max-accuracy-drop", "0",
            "--fidelity-metric", "max-error")  # fmt: skip
    assert r.code == 7, r.err
    assert "--max-accuracy-drop 0 (max abs error" in r.err and "cannot be met" in r.err
    assert not (tmp_path / "out").exists()


def test_bias_correction_lowers_the_mean_output_error(tmp_path):
    """Heavy clipping (percentile 90 on a skewed input) shifts the conv's mean output; the
    correction, measured on the calibration samples, removes most of that shift on fresh ones."""
    from edgepress.passes.quantization.bias_correction import correct_biases
    from edgepress.passes.quantization.quantize_int8 import quantize_int8
    from edgepress.passes.quantization.sensitivity import run_samples

    float_model = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,6,6] x) => (float[1,8,6,6] y) {
          y = Conv <pads=[1,1,1,1]> (x, w, b)
        }
        """,
        {"w": rand(8, 4, 3, 3, low=0.0, high=1.0), "b": rand(8, seed=1)},
    )
    float_model.graph.node[0].name = "conv"
    rng = np.random.default_rng(5)
    cal = {"x": rng.exponential(1.0, (48, 1, 4, 6, 6)).astype(np.float32)}
    fresh = {"x": rng.exponential(1.0, (48, 1, 4, 6, 6)).astype(np.float32)}
    stats = calibrate(float_model, cal, method="percentile", percentile=90.0)

    def quantize(m):
        return ir.to_proto(quantize_int8(ir.from_proto(m), stats=stats).model)

    def mean_error(quantized):
        got = run_samples(quantized, fresh)["y"]
        want = run_samples(float_model, fresh)["y"]
        return float(np.abs((got - want).mean(axis=(0, 1, 3, 4))).mean())

    corrected, shifts = correct_biases(float_model, quantize, cal)
    assert set(shifts) == {"conv"} and shifts["conv"] > 0
    before, after = mean_error(quantize(float_model)), mean_error(quantize(corrected))
    assert after < 0.5 * before


DEPTHWISE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r = Relu (a)
  d = Conv <group=8, pads=[1,1,1,1]> (r, w2, b2)
  s = Relu (d)
  y = Conv (s, w3, b3)
}
"""


def _badly_scaled_depthwise() -> onnx.ModelProto:
    """Conv -> Relu -> depthwise -> Relu -> 1x1, with channel ranges spread over 1000x: a
    per-tensor int8 grid on the activations loses the small channels."""
    scales = np.logspace(-1.5, 1.5, 8).astype(np.float32)
    w1 = rand(8, 3, 3, 3) * scales[:, None, None, None]
    w2 = rand(8, 1, 3, 3, seed=1) / scales[:, None, None, None]
    return model(
        DEPTHWISE,
        {
            "w1": w1,
            "b1": rand(8, seed=2) * scales,
            "w2": w2,
            "b2": rand(8, seed=3),
            "w3": rand(4, 8, 1, 1, seed=4),
            "b3": rand(4, seed=5),
        },
    )


def test_equalization_leaves_float_outputs_unchanged_and_evens_the_ranges():
    from tests.pass_checks import check_pass

    after = check_pass(
        "equalize_cross_layer", _badly_scaled_depthwise(), changes=2, rtol=1e-5, atol=1e-5
    )
    w = {i.name: onnx.numpy_helper.to_array(i) for i in after.graph.initializer}
    conv1, dw = (n for n in after.graph.node if n.op_type == "Conv" and n.output[0] in "ad")
    r1 = np.abs(w[conv1.input[1]]).reshape(8, -1).max(1)
    r2 = np.abs(w[dw.input[1]]).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_equalization_stops_at_relu6():
    from tests.pass_checks import check_pass

    clipped = _badly_scaled_depthwise()
    text = DEPTHWISE.replace("r = Relu (a)", "r = Clip (a, zero, six)")
    params = {i.name: onnx.numpy_helper.to_array(i) for i in clipped.graph.initializer}
    params.update(zero=np.array(0, np.float32), six=np.array(6, np.float32))
    check_pass("equalize_cross_layer", model(text, params), changes=1, rtol=1e-5, atol=1e-5)


def test_equalization_rescues_int8_of_a_badly_scaled_depthwise_net():
    from edgepress.passes import get_pass
    from edgepress.passes.quantization.quantize_int8 import quantize_int8
    from edgepress.passes.quantization.sensitivity import run_samples
    from edgepress.compiler.verify import cosine_similarity

    rng = np.random.default_rng(6)
    cal = {"x": rng.uniform(-1, 1, (32, 1, 3, 8, 8)).astype(np.float32)}
    fresh = {"x": rng.uniform(-1, 1, (16, 1, 3, 8, 8)).astype(np.float32)}
    original = _badly_scaled_depthwise()
    want = run_samples(original, fresh)["y"]

    def int8_cosine(float_model):
        stats = calibrate(float_model, cal)
        q = ir.to_proto(quantize_int8(ir.from_proto(float_model), stats=stats).model)
        return cosine_similarity(run_samples(q, fresh)["y"], want)

    equalized = ir.to_proto(get_pass("equalize_cross_layer")(ir.from_proto(original)).model)
    plain, better = int8_cosine(original), int8_cosine(equalized)
    assert better > plain and better >= 0.999


def test_build_with_equalization_and_bias_correction_reports_both(cli, tmp_path):
    source = tmp_path / "dw.onnx"
    onnx.save(_badly_scaled_depthwise(), source)
    data = np.random.default_rng(7).uniform(-1, 1, (30, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=data)
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out", "-q", "--quantize", "int8",
            "--calibration", tmp_path / "cal.npz", "--equalize", "--bias-correction")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    q = report["quantization"]
    assert q["equalized_pairs"] == 2 and q["bias_correction"]["layers"] == 3
    assert q["fidelity"][0]["cosine"] >= 0.999
    assert [p["name"] for p in report["passes"]][-3:] == [
        "equalize_cross_layer", "equalize_depthwise_inputs", "quantize_int8"
    ]


def test_int8_build_of_a_model_with_an_input_removed_as_unused(cli, tmp_path):
    """Calibration data need only the inputs left after the passes, and the fidelity run on
    the float source still works without the removed one."""
    proto = model(
        SENSITIVE.replace("(float[1,3,8,8] x)", "(float[1,3,8,8] x, float[4] unused)"),
        {"wa": rand(8, 3, 3, 3), "ba": rand(8, seed=1), "wb": rand(8, 8, 3, 3, seed=2),
         "bb": rand(8, seed=3)},
    )
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=rand(20, 3, 8, 8, seed=4))
    r = cli(tmp_path / "m.onnx", "--target", "x86_64", "-o", tmp_path / "out", "-q",
            "--quantize", "int8", "--calibration", tmp_path / "cal.npz")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [i["name"] for i in report["inputs"]] == ["x"]
    assert report["quantization"]["fidelity"][0]["cosine"] > 0.99


LOUD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,8,8,8] y) {
  c = Conv <pads=[1,1,1,1]> (x, wc, bc)
  s = Relu (c)
  a = Conv <pads=[1,1,1,1]> (s, wa, ba)
  r = Relu (a)
  y = Conv <pads=[1,1,1,1]> (r, wb, bb)
}
"""


def _one_loud_channel_model(tmp_path):
    """`a` writes one channel of about 400 (its bias) beside channels of about 1, and `b` reads
    only the quiet ones: on a per-tensor uint8 grid of step 1.6 they are lost, and `b`'s output
    points elsewhere (cosine far below 0.99). That tensor is rounded while `a` (its output) or
    `b` (its input) is int8: both must stay float; `c` before them need not."""
    bias_a = rand(8, seed=1)
    bias_a[0] = 400.0
    weight_b = rand(8, 8, 3, 3, seed=2)
    weight_b[:, 0] = 0.0
    weights = {"wc": rand(8, 3, 3, 3, seed=5), "bc": rand(8, seed=6),
               "wa": rand(8, 8, 3, 3, low=-0.15, high=0.15), "ba": bias_a,
               "wb": weight_b, "bb": rand(8, seed=3)}  # fmt: skip
    proto = model(LOUD, weights)
    for node, name in zip(proto.graph.node[::2], "cab"):
        node.name = name
    onnx.save(proto, tmp_path / "loud.onnx")
    data = np.random.default_rng(4).uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=data)
    return tmp_path / "loud.onnx", tmp_path / "cal.npz"


def test_the_default_fidelity_floor_keeps_the_layer_that_costs_it_in_float(cli, tmp_path):
    source, cal = _one_loud_channel_model(tmp_path)
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "--quantize", "int8", "--calibration", cal,
            "-q")  # fmt: skip
    assert r.code == 0, r.err
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert q["budget"]["what"] == "least cosine at least 0.99, searched for 0.997"
    assert q["budget"]["all_int8_drop"] > 0.01  # the all-int8 model missed the floor
    assert sorted(f["layer"] for f in q["float_layers"]) == ["a", "b"]
    assert min(f["min_cosine"] for f in q["fidelity"]) >= 0.99
    # the artifact itself, run on the same held-out samples, is held to the floor too
    assert q["fidelity_floor"] == 0.99
    assert min(f["min_cosine"] for f in q["artifact_fidelity"]) >= 0.99
    assert "2 layer(s) kept in float (" in r.out and "int8 min cosine" in r.out
    assert "least cosine at least 0.99" in (out / "report.md").read_text()
    assert "against the float model int8 started from (the fidelity floor: 0.99)" in (
        out / "report.md"
    ).read_text()


def test_an_artifact_under_the_floor_fails_the_build_and_keeps_the_folder(
    cli, tmp_path, monkeypatch
):
    """The search measures model.onnx in onnxruntime; the artifact's integer kernels round
    otherwise. Where the artifact's own held-out fidelity misses the floor (planted here: its
    runs come back scaled off-direction), the build exits 7 (a broken budget) naming both
    figures, and the folder and its report stay for the user to read."""
    from edgepress.compiler import build as build_module

    real = build_module._artifact_fidelity

    def skewed(runner, compressed, held_out, float_outputs):
        rows = real(runner, compressed, held_out, float_outputs)
        return [{**row, "min_cosine": 0.95} for row in rows]

    monkeypatch.setattr(build_module, "_artifact_fidelity", skewed)
    source, cal = _one_loud_channel_model(tmp_path)
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "--quantize", "int8", "--calibration", cal,
            "-q")  # fmt: skip
    assert r.code == 7, r.err
    assert "least cosine of 0.9500" in r.err and "under the fidelity floor 0.99" in r.err
    ort_figure = r"model\.onnx in onnxruntime, against the source: (0\.99\d\d|1\.0000)"
    assert re.search(ort_figure, r.err), r.err
    assert "Traceback" not in r.err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    assert (out / "model.so").is_file()


def test_fidelity_floor_0_turns_it_off(cli, tmp_path):
    source, cal = _one_loud_channel_model(tmp_path)
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "--quantize", "int8", "--calibration", cal,
            "--fidelity-floor", "0", "-q")  # fmt: skip
    assert r.code == 0, r.err
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert q["float_layers"] == [] and "budget" not in q
    assert min(f["min_cosine"] for f in q["fidelity"]) < 0.99
    # no floor: the artifact's fidelity is reported (in the summary too), not held to one
    assert q["fidelity_floor"] is None
    least = min(f["min_cosine"] for f in q["artifact_fidelity"])
    assert least < 0.99 and f"int8 min cosine {least:.4f}" in r.out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fidelity-floor", "1.5"], "--fidelity-floor 1.5: expected 0 (off) up to below 1"),
        (["--fidelity-floor", "0.9", "--max-accuracy-drop", "1"], "give one"),
    ],
)
def test_fidelity_floor_errors_name_the_flag(cli, tmp_path, flags, message):
    source, cal = _one_loud_channel_model(tmp_path)
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out", "--quantize", "int8",
            "--calibration", cal, *flags)  # fmt: skip
    assert r.code == 2 and message in r.err and "Traceback" not in r.err, r.err


SILU_DEPTHWISE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,8,8,8] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  s = Sigmoid (a)
  h = Mul (a, s)
  y = Conv <group=8, pads=[1,1,1,1]> (h, w2, b2)
}
"""


def _silu_then_depthwise() -> onnx.ModelProto:
    """Conv -> SiLU -> depthwise, the channels' ranges spread over 1000x by the first conv and
    undone by the depthwise weights (BN folded into both, as exported models have them). SiLU
    is not positively homogeneous: equalize_cross_layer cannot move these scales."""
    scales = np.logspace(-1.5, 1.5, 8).astype(np.float32)
    return model(
        SILU_DEPTHWISE,
        {
            "w1": rand(8, 3, 3, 3) * scales[:, None, None, None],
            "b1": rand(8, seed=2) * scales,
            "w2": rand(8, 1, 3, 3, seed=1) / scales[:, None, None, None],
            "b2": rand(8, seed=3),
        },
    )


def _int8_cosine(float_model, cal, fresh, want) -> float:
    from edgepress.compiler.verify import cosine_similarity
    from edgepress.passes.quantization.quantize_int8 import quantize_int8
    from edgepress.passes.quantization.sensitivity import run_samples

    stats = calibrate(float_model, cal)
    q = ir.to_proto(quantize_int8(ir.from_proto(float_model), stats=stats).model)
    return cosine_similarity(run_samples(q, fresh)["y"], want)


def test_depthwise_inputs_share_one_grid_with_the_function_unchanged():
    from edgepress.passes import get_pass
    from edgepress.passes.quantization.calibration import channel_ranges
    from edgepress.passes.quantization.equalize_depthwise_inputs import depthwise_inputs
    from edgepress.passes.quantization.sensitivity import run_samples

    rng = np.random.default_rng(11)
    cal = {"x": rng.uniform(-1, 1, (32, 1, 3, 8, 8)).astype(np.float32)}
    fresh = {"x": rng.uniform(-1, 1, (16, 1, 3, 8, 8)).astype(np.float32)}
    original = _silu_then_depthwise()
    assert depthwise_inputs(ir.from_proto(original)) == ["h"]
    ranges = channel_ranges(original, cal, ["h"])
    seen = run_samples(original, cal, ["h"])["h"]
    np.testing.assert_array_equal(ranges["h"][1], seen.max(axis=(0, 1, 3, 4)))
    result = get_pass("equalize_depthwise_inputs")(ir.from_proto(original), ranges=ranges)
    assert result.changes == 1
    equalized = ir.to_proto(result.model)
    onnx.checker.check_model(equalized, full_check=True)
    assert "w2" not in {i.name for i in equalized.graph.initializer}  # no stale float copy
    want = run_samples(original, fresh)["y"]
    np.testing.assert_allclose(run_samples(equalized, fresh)["y"], want, rtol=1e-4, atol=1e-5)
    plain = _int8_cosine(original, cal, fresh, want)
    better = _int8_cosine(equalized, cal, fresh, want)
    assert plain < 0.99 and better >= 0.999, (plain, better)


def test_channel_gains_fill_the_grid_and_stay_bounded():
    from edgepress.passes.quantization.equalize_depthwise_inputs import MAX_GAIN, channel_gains

    high = np.array([0.5, 2.0, 8.0, 40.0])
    np.testing.assert_allclose(channel_gains(np.zeros(4), high), high / 40.0)  # all on [0, k]
    # channels below zero too (HardSwish's -0.375): each fits the shared grid [-r, 1 - r]
    low = np.array([-0.375, -0.375, -0.2, -0.375])
    gains = channel_gains(low, high)
    grid = max(high / gains) - min(low / gains)  # the shared grid, over the scaled channels
    step, plain_step = gains * grid / (high - low), (high.max() - low.min()) / (high - low)
    assert np.sum(step**2) < np.sum(plain_step**2) / 100  # what the gains minimize
    assert step[0] < plain_step[0] / 10  # the 0.9-wide channel gets 10x finer steps
    assert step[-1] < 2 * plain_step[-1]  # for at most twice coarser ones on the widest
    dead = channel_gains(np.zeros(3), np.array([0.0, 1e-9, 4.0]))
    assert dead.min() >= 1 / MAX_GAIN - 1e-12 and dead.max() == 1.0


RELU_SIGMOID = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,8,8,8] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r = Relu (a)
  y = Sigmoid (r)
}
"""


def _quantized(text: str, weights: dict) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    from edgepress.passes.quantization.quantize_int8 import quantize_int8

    float_model = model(text, weights)
    cal = {"x": np.random.default_rng(2).uniform(-1, 1, (16, 1, 3, 8, 8)).astype(np.float32)}
    quantized = quantize_int8(ir.from_proto(float_model), stats=calibrate(float_model, cal))
    return float_model, ir.to_proto(quantized.model), cal


def test_a_conv_output_only_float_ops_read_is_not_rounded():
    """SiLU's sigmoid and product read the conv's sum in float: no 8-bit grid in between (the
    most lossy rounding, taken before the activation narrows the range); the SiLU output the
    next conv reads is quantized."""
    weights = {"w1": rand(8, 3, 3, 3), "b1": rand(8, seed=1), "w2": rand(8, 1, 3, 3, seed=2),
               "b2": rand(8, seed=3)}  # fmt: skip
    _, q, _ = _quantized(SILU_DEPTHWISE, weights)
    rounded = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert "a" not in rounded and "h" in rounded, rounded
    assert not [i.name for i in q.graph.initializer if i.name.startswith("a_")]  # no orphans


def test_a_relu_folded_into_the_conv_range_keeps_its_rounding():
    """onnxruntime's quantizer drops a Relu after a quantized conv, its output range doing the
    clamping: that pair stays even though only a float sigmoid reads it (without it the
    sigmoid would see negative sums, below 0.5)."""
    from edgepress.passes.quantization.sensitivity import run_samples

    weights = {"w1": rand(8, 3, 3, 3), "b1": rand(8, seed=1)}
    float_model, q, cal = _quantized(RELU_SIGMOID, weights)
    assert "Relu" not in [n.op_type for n in q.graph.node]  # folded by onnxruntime's quantizer
    got, want = run_samples(q, cal)["y"], run_samples(float_model, cal)["y"]
    assert got.min() >= 0.5 - 1e-6 and np.abs(got - want).max() < 0.02


def test_a_crash_in_the_depthwise_equalization_leaves_the_int8_build_standing(
    cli, tmp_path, monkeypatch
):
    """The equalization is an optimization: where it crashes, the int8 build goes on without
    it, its record saying why; named in --passes (it needs calibration) it is skipped with
    the reason, never a traceback."""
    from edgepress.compiler.errors import STRICT_ENV
    from edgepress.passes.quantization import equalize_depthwise_inputs

    source = tmp_path / "silu_dw.onnx"
    onnx.save(_silu_then_depthwise(), source)
    rng = np.random.default_rng(12)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32))

    def broken(low, high):
        raise RuntimeError("planted gains bug")

    monkeypatch.setattr(equalize_depthwise_inputs, "channel_gains", broken)
    monkeypatch.delenv(STRICT_ENV, raising=False)
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q", "--quantize", "int8",
            "--calibration", tmp_path / "cal.npz", "--fidelity-floor", "0")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    record = next(p for p in report["passes"] if p["name"] == "equalize_depthwise_inputs")
    assert "planted gains bug" in record["details"]["failed"]
    assert report["quantization"]["equalized_depthwise_inputs"] == 0
    named = cli(source, "--target", "x86_64", "-o", tmp_path / "named", "-q",
                "--passes", "equalize_depthwise_inputs")  # fmt: skip
    assert named.code == 0 and "Traceback" not in named.err, named.err
    report = json.loads((tmp_path / "named" / "report.json").read_text())
    (record,) = report["passes"]
    assert "needs per-channel ranges from calibration" in record["details"]["failed"]
