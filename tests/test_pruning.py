"""Channel pruning: dependency groups on small hand-built graphs (each pruned model must equal
the original with the removed channels' consumer weights zeroed, in onnxruntime), the MAC
counter against a hand count, sensitivity allocation, recovery against no recovery, fine-tuning,
and whole builds through the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest
from onnx import numpy_helper

from edgepress.passes import get_pass
from edgepress.passes.analysis.macs import count_macs
from edgepress.passes.pruning.prune_channels import output_error
from edgepress.passes.pruning.select_channels import allocate, ratio_under
from edgepress.passes.quantization.sensitivity import run_samples
from tests.pass_checks import _run, model, rand, random_feeds
from tests.tolerances import FUSION_ATOL, FUSION_RTOL

SOURCES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def prune(proto: onnx.ModelProto, **kwargs):
    result = get_pass("prune_channels")(ir.from_proto(proto), **kwargs)
    pruned = ir.to_proto(result.model)
    onnx.checker.check_model(pruned, full_check=True)
    return pruned, result


def zeroed(proto: onnx.ModelProto, removed: dict[str, list[int]]) -> onnx.ModelProto:
    """The original with each removed channel cut off where it is consumed: the consumer's
    weight slice for it set to zero (a grouped Conv consumer drops the matching outputs, whose
    own consumers are zeroed in turn). Pruning must give the same outputs."""
    out = copy.deepcopy(proto)
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        gone = removed.get(node.input[0])
        if node.op_type not in SOURCES or not gone:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("group", 1) > 1:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).copy()
        if node.op_type == "Conv" or (node.op_type == "Gemm" and attrs.get("transB", 0)):
            w[:, gone] = 0
        else:
            w[gone] = 0
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
    return out


def weight_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(i.dims) for i in proto.graph.initializer}


def check_pruned(proto: onnx.ModelProto, **kwargs) -> tuple[onnx.ModelProto, dict]:
    """Prune without data; assert same outputs (names, shapes) and equal numbers to the
    zeroed original on random inputs."""
    pruned, result = prune(proto, **kwargs)
    assert [(o.name, o.type) for o in pruned.graph.output] == [
        (o.name, o.type) for o in proto.graph.output
    ]
    reference = zeroed(proto, result.details["removed"])
    for seed in (1, 2):
        feeds = random_feeds(proto, seed)
        for got, want in zip(_run(pruned, feeds), _run(reference, feeds), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=FUSION_RTOL, atol=FUSION_ATOL)
    return pruned, result.details


RESIDUAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6,6] x) => (float[1,3] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  ra = Relu (a)
  c = Conv <pads=[1,1,1,1]> (ra, w2, b2)
  rc = Relu (c)
  d = Conv <pads=[1,1,1,1]> (rc, w3, b3)
  s = Add (ra, d)
  rs = Relu (s)
  p = GlobalAveragePool (rs)
  f = Flatten (p)
  y = Gemm <transB=1> (f, wf, bf)
}
"""


def residual() -> onnx.ModelProto:
    return model(
        RESIDUAL,
        {
            "w1": rand(8, 4, 3, 3, seed=1),
            "b1": rand(8, seed=2),
            "w2": rand(8, 8, 3, 3, seed=3),
            "b2": rand(8, seed=4),
            "w3": rand(8, 8, 3, 3, seed=5),
            "b3": rand(8, seed=6),
            "wf": rand(3, 8, seed=7),
            "bf": rand(3, seed=8),
        },
    )


def _weights_of(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Input-1 shape per node name of every source."""
    shapes = weight_shapes(proto)
    return {n.output[0]: shapes[n.input[1]] for n in proto.graph.node if n.op_type in SOURCES}


def test_residual_channels_are_pruned_together():
    pruned, details = check_pruned(residual(), ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    # Conv a, Conv d and the Add are one group (8 tied channels): half of them go everywhere.
    assert w["a"] == (4, 4, 3, 3) and w["d"] == (4, 4, 3, 3) and w["y"] == (3, 4)
    assert w["c"] == (4, 4, 3, 3)  # the inner conv is its own group
    assert sorted(len(g["layers"]) for g in details["groups"]) == [1, 2]
    assert details["removed"]["a"] == details["removed"]["d"] == details["removed"]["s"]


def test_zero_ratio_gives_the_same_outputs_exactly():
    proto = residual()
    pruned, result = prune(proto, ratio=0.0, sensitivity=False)
    assert result.changes == 0
    feeds = random_feeds(proto)
    for got, want in zip(_run(pruned, feeds), _run(proto, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


CONCAT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x) => (float[1,5,6,6] y) {
  a = Conv (x, wa)
  b = Conv (x, wb)
  c = Concat <axis=1> (a, b)
  r = Relu (c)
  y = Conv (r, wy)
}
"""


def test_concat_offsets_are_tracked():
    proto = model(
        CONCAT, {"wa": rand(4, 3, 1, 1, seed=1), "wb": rand(6, 3, 1, 1, seed=2) * 0.1,
                 "wy": rand(5, 10, 1, 1, seed=3)}
    )  # fmt: skip
    pruned, details = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    assert w["a"][0] + w["b"][0] == 5 and w["y"] == (5, 5, 1, 1)
    removed = details["removed"]["c"]
    # Concat channel k is a's channel k (k < 4), else b's channel k - 4.
    assert details["removed"].get("a", []) == [k for k in removed if k < 4]
    assert details["removed"].get("b", []) == [k - 4 for k in removed if k >= 4]


SPLIT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x) => (float[1,2,6,6] ya, float[1,2,6,6] yb) {
  a = Conv (x, wa)
  r = Relu (a)
  s1, s2 = Split <axis=1> (r, sizes)
  ya = Conv (s1, w1)
  yb = Conv (s2, w2)
}
"""


def test_split_sizes_follow_the_removed_channels():
    proto = model(
        SPLIT,
        {"wa": rand(8, 3, 1, 1, seed=1), "sizes": np.array([3, 5], np.int64),
         "w1": rand(2, 3, 1, 1, seed=2), "w2": rand(2, 5, 1, 1, seed=3)},
    )  # fmt: skip
    pruned, details = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    assert w["a"][0] == 4 and w["ya"][1] + w["yb"][1] == 4
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    sizes = numpy_helper.to_array(
        next(i for i in pruned.graph.initializer if i.name == split.input[1])
    )
    assert sizes.tolist() == [w["ya"][1], w["yb"][1]]


DEPTHWISE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
  e = Conv (x, we, be)
  re = Relu (e)
  d = Conv <group=8, pads=[1,1,1,1]> (re, wd, bd)
  rd = Relu (d)
  y = Conv (rd, wp)
}
"""


def _expand_conv_project(graph: str, group_width: int):
    """DEPTHWISE or GROUPED with its weights: 8 expanded channels in groups of `group_width`."""
    weights = {
        "we": rand(8, 3, 1, 1, seed=1),
        "be": rand(8, seed=2),
        "wd": rand(8, group_width, 3, 3, seed=3),
        "bd": rand(8, seed=4),
        "wp": rand(4, 8, 1, 1, seed=5),
    }
    return model(graph, weights)


def test_depthwise_channels_follow_their_inputs():
    proto = _expand_conv_project(DEPTHWISE, 1)
    pruned, _ = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    assert w["e"] == (4, 3, 1, 1) and w["d"] == (4, 1, 3, 3) and w["y"] == (4, 4, 1, 1)
    dw = next(n for n in pruned.graph.node if n.output[0] == "d")
    assert onnx.helper.get_attribute_value(dw.attribute[0]) == 4  # group


GROUPED = DEPTHWISE.replace("group=8", "group=2")


def test_grouped_conv_loses_whole_groups():
    proto = _expand_conv_project(GROUPED, 4)
    pruned, details = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    assert w["e"] == (4, 3, 1, 1) and w["d"] == (4, 4, 3, 3) and w["y"] == (4, 4, 1, 1)
    assert details["removed"]["e"] in ([0, 1, 2, 3], [4, 5, 6, 7])  # one whole group
    dw = next(n for n in pruned.graph.node if n.output[0] == "d")
    assert onnx.helper.get_attribute_value(dw.attribute[0]) == 1


FLATTEN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x) => (float[1,5] y, float[1,5] z) {
  a = Conv <pads=[1,1,1,1]> (x, wa, ba)
  r = Relu (a)
  f = Flatten (r)
  y = Gemm <transB=1> (f, wf, bf)
  h = Reshape (r, shape)
  z = MatMul (h, wm)
}
"""


def test_flatten_and_reshape_into_gemm_lose_channel_blocks():
    proto = model(
        FLATTEN,
        {"wa": rand(4, 3, 3, 3, seed=1), "ba": rand(4, seed=2), "wf": rand(5, 144, seed=3),
         "bf": rand(5, seed=4), "shape": np.array([1, 144], np.int64), "wm": rand(144, 5, seed=5)},
    )  # fmt: skip
    pruned, details = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    assert w["a"] == (2, 3, 3, 3) and w["y"] == (5, 72) and w["z"] == (72, 5)
    gone = details["removed"]["a"]
    assert details["removed"]["f"] == [c * 36 + s for c in gone for s in range(36)]
    reshape = next(n for n in pruned.graph.node if n.op_type == "Reshape")
    shape = next(i for i in pruned.graph.initializer if i.name == reshape.input[1])
    assert numpy_helper.to_array(shape).tolist() == [1, 72]


CONV_TRANSPOSE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,4,4] x) => (float[1,3,16,16] y) {
  a = Conv <pads=[1,1,1,1]> (x, wa, ba)
  r = Relu (a)
  t = ConvTranspose <strides=[2,2]> (r, wt, bt)
  rt = Relu (t)
  y = ConvTranspose <strides=[2,2]> (rt, wu)
}
"""


def test_conv_transpose_is_pruned_as_source_and_consumer():
    proto = model(
        CONV_TRANSPOSE,
        {"wa": rand(8, 3, 3, 3, seed=1), "ba": rand(8, seed=2), "wt": rand(8, 4, 2, 2, seed=3),
         "bt": rand(4, seed=4), "wu": rand(4, 3, 2, 2, seed=5)},
    )  # fmt: skip
    pruned, _ = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    # ConvTranspose weights are [in, out / group, kh, kw].
    assert w["a"] == (4, 3, 3, 3) and w["t"] == (4, 2, 2, 2) and w["y"] == (2, 3, 2, 2)


OUTPUT_TIED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x) => (float[1,4,6,6] a, float[1,2,6,6] y) {
  a = Conv (x, wa)
  r = Relu (a)
  b = Conv (r, wb)
  rb = Relu (b)
  y = Conv (rb, wy)
}
"""


def test_channels_reaching_a_graph_output_are_never_removed():
    proto = model(
        OUTPUT_TIED,
        {"wa": rand(4, 3, 1, 1, seed=1), "wb": rand(6, 4, 1, 1, seed=2),
         "wy": rand(2, 6, 1, 1, seed=3)},
    )  # fmt: skip
    pruned, _ = check_pruned(proto, ratio=0.5, sensitivity=False)
    w = _weights_of(pruned)
    assert w["a"] == (4, 3, 1, 1)  # graph output: kept
    assert w["b"] == (3, 4, 1, 1) and w["y"] == (2, 3, 1, 1)


def test_exclusions_and_layer_ratios_from_the_config():
    named = ir.from_proto(residual())
    common_passes.NameFixPass()(named)  # the names a config refers to, as the pass gives them
    names = {n.outputs[0].name: n.name for n in named.graph}
    pruned, _ = prune(
        ir.to_proto(named),
        ratio=0.25,
        sensitivity=False,
        exclude=[names["c"]],
        overrides={names["d"]: 0.75},
    )
    w = _weights_of(pruned)
    assert w["c"][0] == 8  # excluded
    assert w["a"][0] == w["d"][0] == 2  # the residual group took d's ratio, 0.75


def macs(proto: onnx.ModelProto) -> int | None:
    return count_macs(ir.from_proto(onnx.shape_inference.infer_shapes(proto)))


def test_mac_counter_agrees_with_a_hand_count():
    proto = residual()
    # Conv a: 8 out x 36 positions x 4 in x 9; Convs c and d: 8 x 36 x 8 x 9; Gemm: 3 x 8.
    hand = 8 * 36 * 4 * 9 + 2 * (8 * 36 * 8 * 9) + 3 * 8
    assert macs(proto) == hand
    pruned, result = prune(proto, ratio=0.5, sensitivity=False)
    hand_after = 4 * 36 * 4 * 9 + 2 * (4 * 36 * 4 * 9) + 3 * 4
    assert result.details["macs_before"] == hand
    assert result.details["macs_after"] == macs(pruned) == hand_after


def test_flops_target_is_met():
    pruned, result = prune(residual(), flops=0.5, sensitivity=False)
    assert result.details["macs_after"] <= 0.5 * result.details["macs_before"]
    assert macs(pruned) == result.details["macs_after"]


def test_threshold_allocation_prunes_the_insensitive_group_more():
    assert ratio_under([0.1, 0.2, 0.4], 0.15, cap=0.9) == pytest.approx(0.375)
    curves = [[1.0, 2.0, 4.0], [0.001, 0.002, 0.004]]
    ratios, _ = allocate(curves, [None, None], lambda r: sum(r) >= 0.6, cap=0.9)
    assert ratios[1] > 0.5 and ratios[0] < ratios[1] and sum(ratios) >= 0.6
    ratios, threshold = allocate(curves, [0.0, None], lambda r: sum(r) >= 1.5, cap=0.9)
    assert threshold == float("inf")  # a fixed group and the cap make the target unreachable


TWO_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,8,6,6] x) => (float[1,8,6,6] y) {
  a = Conv <pads=[1,1,1,1]> (x, wa, ba)
  r = Relu (a)
  y = Conv <pads=[1,1,1,1]> (r, wb, bb)
}
"""


def _correlated_inputs(count: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs whose 8 channels mix 3 latent ones: the features they make are redundant, so the
    kept channels can stand in for the removed ones."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((count, 1, 3, 6, 6))
    mix = np.random.default_rng(99).standard_normal((8, 3))
    x = np.einsum("ck,nbkhw->nbchw", mix, latent) + 0.05 * rng.standard_normal((count, 1, 8, 6, 6))
    return {"x": x.astype(np.float32)}


@pytest.fixture(scope="module")
def two_conv():
    return model(
        TWO_CONV,
        {"wa": rand(16, 8, 3, 3, seed=1), "ba": rand(16, seed=2, low=0.2, high=1.0),
         "wb": rand(8, 16, 3, 3, seed=3), "bb": rand(8, seed=4)},
    )  # fmt: skip


def test_reconstruction_lowers_the_output_error(two_conv):
    calibration, held_out = _correlated_inputs(48, 0), _correlated_inputs(16, 1)
    reference = run_samples(two_conv, held_out)
    errors = {}
    for recover in ("none", "bias", "lstsq"):
        pruned, _ = prune(two_conv, ratio=0.5, data=calibration, recover=recover, sensitivity=False)
        errors[recover] = output_error(run_samples(pruned, held_out), reference)
    # Measured on samples the recovery never saw.
    assert errors["lstsq"] < 0.5 * errors["none"], errors  # measured: 0.49 -> 0.16
    assert errors["bias"] < errors["none"], errors


def test_activation_importance_and_sensitivity_need_data(two_conv):
    with pytest.raises(ValueError, match="need calibration data"):
        prune(two_conv, ratio=0.5, importance="activation", recover="none", sensitivity=False)
    with pytest.raises(ValueError, match="BatchNormalization"):
        prune(two_conv, ratio=0.5, importance="bn", sensitivity=False)


BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,6,6] x) => (float[1,2,6,6] y) {
  a = Conv (x, wa)
  n = BatchNormalization (a, gamma, beta, mean, var)
  r = Relu (n)
  y = Conv (r, wy)
}
"""


def test_bn_importance_removes_the_smallest_scales_and_slices_bn():
    gamma = np.array([1.0, 0.01, 2.0, 0.02, 1.5, 0.9], np.float32)
    proto = model(
        BN,
        {"wa": rand(6, 3, 1, 1, seed=1), "gamma": gamma, "beta": rand(6, seed=2),
         "mean": rand(6, seed=3), "var": rand(6, seed=4, low=0.5, high=1.0),
         "wy": rand(2, 6, 1, 1, seed=5)},
    )  # fmt: skip
    _, details = check_pruned(proto, ratio=0.5, importance="bn", sensitivity=False)
    assert details["removed"]["a"] == [1, 3, 5]


def test_finetuning_in_pytorch_matches_onnxruntime_and_recovers_accuracy(digits):
    import torch

    from edgepress.models.finetune import finetune, torch_graph

    proto = onnx.load(digits / "digits.onnx")
    pruned, _ = prune(proto, ratio=0.5, sensitivity=False)
    train = dict(np.load(digits / "train.npz"))
    evaluation = dict(np.load(digits / "eval.npz"))
    labels = evaluation.pop("label")
    inputs = {"input": evaluation["input"][:, None]}

    def accuracy(m: onnx.ModelProto) -> float:
        logits = run_samples(m, inputs)["logits"].reshape(len(labels), -1)
        return float(np.mean(logits.argmax(-1) == labels))

    # The graph as torch runs it computes what onnxruntime computes.
    forward, _ = torch_graph(pruned)
    with torch.no_grad():
        got = forward(torch.from_numpy(evaluation["input"][:, None].reshape(-1, 1, 8, 8))).numpy()
    want = run_samples(pruned, inputs)["logits"].reshape(len(labels), -1)
    np.testing.assert_allclose(got, want, rtol=FUSION_RTOL, atol=FUSION_ATOL)
    tuned, history = finetune(pruned, {"input": train["input"][:, None]}, train["label"])
    assert history["loss_last_epoch"] < history["loss_first_epoch"]
    assert accuracy(tuned) > accuracy(pruned) + 0.2 and accuracy(tuned) > 0.9


def test_pruned_and_int8_build_of_the_digits_cnn(cli, digits, tmp_path):
    r = cli(
        digits / "digits.onnx", "--target", "x86_64", "-o", tmp_path / "p", "-q",
        "--prune", "0.5", "--calibration", digits / "calibration.npz",
        "--eval", digits / "eval.npz", "--quantize", "int8",
    )  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["status"] == "ok"
    assert [p["name"] for p in report["passes"][-3:]] == [
        "prune_channels", "equalize_depthwise_inputs", "quantize_int8"
    ]
    p = report["pruning"]
    assert p["removed_channels"] >= 0.5 * p["prunable_channels"]
    assert p["macs_after"] < 0.6 * p["macs_before"]
    assert p["eval_top1"]["float"] - p["eval_top1"]["pruned"] <= 0.02
    assert p["recovery"] == "lstsq" and p["ratios_from"] == "measured sensitivity"
    assert report["sizes"]["model.onnx"] <= 0.25 * report["sizes"]["source model"]
    assert "## Pruning" in (tmp_path / "p" / "report.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "1.5"], "--prune 1.5: expected a fraction in [0, 1)"),
        (["--prune", "0.3", "--prune-flops", "0.5"], "give one of --prune RATIO or"),
        (["--prune-importance", "l1"], "--prune-importance is given without --prune"),
        (["--prune", "0.3", "--prune-importance", "activation"], "need --calibration PATH"),
        (["--prune", "0.3", "--prune-importance", "taylor"], "expected one of l1, l2, bn"),
        (["--prune", "0.3", "--prune-config", "{cfg}"], "no prunable layer named 'nope'"),
        (["--prune", "0.3", "--finetune", "{cal}"], "--finetune {cal}: no 'label' array"),
        (["--prune", "0.99", "--prune-uniform"], "--prune: cannot remove 99% of the channels"),
        (["--prune", "0.3", "--prune-importance", "bn"], "--prune: bn importance needs"),
    ],
)
def test_bad_pruning_options_are_named(cli, digits, tmp_path, args, message):
    (tmp_path / "prune.json").write_text(json.dumps({"exclude": ["nope"]}))
    values = {"cfg": tmp_path / "prune.json", "cal": digits / "calibration.npz"}
    args = [a.format(**values) for a in args]
    r = cli(digits / "digits.onnx", "--target", "x86_64", "-o", tmp_path / "out", *args)
    assert r.code == 2 and message.format(**values) in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_pruned_fp32_build_is_verified_against_the_pruned_model(cli, digits, tmp_path):
    r = cli(
        digits / "digits.onnx", "--target", "x86_64", "-o", tmp_path / "p", "-q",
        "--prune", "0.25", "--prune-uniform",
    )  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["status"] == "ok"
    artifact = report["verification"]["artifact"]
    assert artifact["reference"].startswith("onnxruntime on the pruned model.onnx")
    assert artifact["status"] == "ok"
    assert report["verification"]["passes"]["status"].startswith("not verified")
    # Without calibration data: L1 ranking and no recovery.
    assert report["pruning"]["importance"] == "l1" and report["pruning"]["recovery"] == "none"
