"""Float convolutions as edgepress's NHWC kernels (backends/kernels/float/lowering.py): every Conv,
depthwise Conv and Gemm of a small net is lowered, and the artifact still equals onnxruntime
on AVX-512 and AVX2 code; the register-tile rule; the weight prefetch.

Speed is measured by benchmarks/speed.py, not here.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.builders import random_initializer
from tests.conftest import disassembly, ort_outputs, save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL


def _saved(tmp_path, name: str, nodes, inits, x_shape: list, y_shape: list, opset: int = 17):
    """The graph (input x, output y) saved as tmp_path/name.onnx with `opset`."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return save(model, tmp_path / f"{name}.onnx")


def _float_net(tmp_path):
    """x 1x3x26x26 -> Conv 3x3 s2 (13x13, 32 ch) -> Relu -> MaxPool 3x3 s2 pad 1 (7x7) ->
    depthwise Conv 3x3 -> Clip(0, 6) -> 1x1 Conv to 24 channels (not a whole 16-lane block),
    no bias -> 1x1 Conv back to 32 -> + the pooled value -> Relu -> 3x3 Conv 32 -> 40 (pad 1)
    -> GlobalAveragePool -> Flatten -> Gemm to 10."""
    rng = np.random.default_rng(5)
    inits = [
        random_initializer(rng, "w1", (32, 3, 3, 3)),
        random_initializer(rng, "b1", (32,)),
        random_initializer(rng, "wd", (32, 1, 3, 3)),
        random_initializer(rng, "bd", (32,)),
        random_initializer(rng, "w2", (24, 32, 1, 1)),
        random_initializer(rng, "w3", (32, 24, 1, 1)),
        random_initializer(rng, "b3", (32,)),
        random_initializer(rng, "w4", (40, 32, 3, 3)),
        random_initializer(rng, "b4", (40,)),
        random_initializer(rng, "wf", (10, 40)),
        random_initializer(rng, "bf", (10,)),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "MaxPool", ["r1"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Conv", ["p", "wd", "bd"], ["d"], group=32, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["dc"]),
        helper.make_node("Conv", ["dc", "w2"], ["c2"]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c3", "p"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Conv", ["r2", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c4"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    return _saved(tmp_path, "float_net", nodes, inits, [1, 3, 26, 26], [1, 10])


def _host_has_avx512() -> bool:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return "avx512f" in line.split(":", 1)[-1].split()


def _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 3, 26, 26)) -> None:
    """The artifact in `out`, run by `compress run` on a random x of `shape`, equals
    onnxruntime on `source` to the fp32 artifact tolerance."""
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")
    assert r.code == 0, r.err
    (want,) = ort_outputs(source, {"x": x})
    np.testing.assert_allclose(
        np.load(tmp_path / "o.npz")["y"], want, rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL
    )


@pytest.mark.parametrize("mcpu", ["sapphirerapids", "znver3"], ids=["avx512", "avx2"])
def test_float_convs_run_as_nhwc_kernels_and_match_onnxruntime(cli, tmp_path, mcpu):
    """Every Conv (strided, depthwise, 1x1 to 24 channels, padded 3x3) and the Gemm run as
    edgepress's kernels; the artifact equals onnxruntime. AVX-512 code runs on this CPU only
    where it has AVX-512."""
    if mcpu == "sapphirerapids" and not _host_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    source = _float_net(tmp_path)
    out = tmp_path / mcpu
    r = cli(source, "--target", "x86_64", "--mcpu", mcpu, "-o", out, "-q")
    assert r.code == 0, r.err  # the build checks the artifact against onnxruntime too
    report = json.loads((out / "report.json").read_text())
    lowering = report["float_conv"]
    assert lowering["lanes"] == (16 if mcpu == "sapphirerapids" else 8)
    kernels = [layer["kernel"] for layer in lowering["layers"]]
    assert kernels == ["direct", "depthwise", "direct", "direct", "direct", "direct"]
    names = [k["name"] for k in report["kernels"]]
    assert not any(n.startswith(("conv2d_nchw", "fused_conv2d_add")) for n in names)
    assert any(n.startswith("max_pool2d_float") for n in names)  # pooled in NHWC
    assert "## Float convolutions" in (out / "report.md").read_text()
    _matches_onnxruntime(cli, tmp_path, source, out)


def test_a_stride_two_conv_over_512_channels_pads_its_pixels_off_4k_and_matches(cli, tmp_path):
    """A 3x3 stride-2 conv over 14x14x512 (ResNet-50's last stage entry): its tile's pixels
    are 2 x 512 x 4 bytes = 4 KB apart, one L1 set, so the padded input gets a vector of
    zero channels more (2x faster there); the artifact equals onnxruntime."""
    from edgepress.backends.kernels.float.lowering import _unaliased

    assert _unaliased(512, 2, 16) == 528 and _unaliased(512, 1, 16) == 512
    assert _unaliased(256, 2, 8) == 256 and _unaliased(1024, 1, 8) == 1032
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "stride2_512",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 7, 7])],
        [random_initializer(rng, "w", (32, 512, 3, 3), 0.05), random_initializer(rng, "b", (32,))],
    )  # fmt: skip
    source = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                  tmp_path / "stride2.onnx")  # fmt: skip
    # the lowering's pad writes 512 + 16 channels (16 lanes: AVX-512's vectors)
    from edgepress.backends.kernels.float.lowering import lower_float
    from edgepress.backends.relax.importer import import_onnx

    mod, names = import_onnx(onnx.load(source), str(source))
    mod, _ = lower_float(mod, 16, names)
    pads = [gv for gv in mod.get_global_vars() if gv.name_hint.startswith("pad")]
    assert len(pads) == 1 and "T.int64(528)" in mod[pads[0]].script()
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["direct"]
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 512, 14, 14))


def _residual_block(tmp_path, batch: int = 1, size: tuple[int, int] = (14, 14)):
    """x 1x16x14x14 (or `size`) -> Conv 3x3 pad 1 -> Relu -> Conv 3x3 pad 1 -> + x -> Relu:
    two 'same' 3x3 convs with 7 x 7 = 49 tiles of 2x2, Winograd F(2x2, 3x3)'s smallest."""
    rng = np.random.default_rng(6)
    inits = [
        random_initializer(rng, "w1", (16, 16, 3, 3)),
        random_initializer(rng, "b1", (16,)),
        random_initializer(rng, "w2", (16, 16, 3, 3)),
        random_initializer(rng, "b2", (16,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    shape = [batch, 16, *size]
    return _saved(tmp_path, f"residual{batch}_{size[0]}x{size[1]}", nodes, inits, shape, shape)


@pytest.mark.parametrize("choice", ["edgepress", "direct"])
def test_same_3x3_convs_run_as_winograd_and_match_onnxruntime(cli, tmp_path, choice):
    """By default both 3x3 convs of a residual block run as Winograd F(2x2, 3x3) (input
    transform, 16 products, output transform with the relu or residual add fused behind it);
    --float-conv direct keeps the direct kernel. Either way the artifact equals onnxruntime
    to the fp32 artifact tolerance."""
    source = _residual_block(tmp_path)
    out = tmp_path / choice
    assert cli(source, "--target", "x86_64", "-o", out, "-q", "--float-conv", choice).code == 0
    report = json.loads((out / "report.json").read_text())
    want = "winograd" if choice == "edgepress" else "direct"
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == [want, want]
    names = [k["name"] for k in report["kernels"]]
    assert any(n.startswith("winograd_products") for n in names) == (choice == "edgepress")
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 16, 14, 14))


@pytest.mark.parametrize("size", [(13, 13), (14, 13)])
def test_odd_sized_3x3_convs_run_as_winograd_and_match_onnxruntime(cli, tmp_path, size):
    """An odd height or width ends in half a 2x2 tile (SqueezeNet's 55x55, 27x27 and 13x13
    layers): the input gets one zero row or column more, the output transform writes only the
    rows it has, and the artifact equals onnxruntime."""
    source = _residual_block(tmp_path, size=size)
    out = tmp_path / "odd"
    assert cli(source, "--target", "x86_64", "-o", out, "-q").code == 0
    report = json.loads((out / "report.json").read_text())
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["winograd"] * 2
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 16, *size))


def _silu_head(tmp_path):
    """x 1x16x16x16 -> Conv 3x3 pad 1 -> SiLU (x * sigmoid(x)) -> two heads, 1x1 Convs to 1
    channel, one with its Sigmoid, concatenated: a YOLO-style detector's (ddddocr-det's)
    objectness and class layers."""
    rng = np.random.default_rng(9)
    inits = [
        random_initializer(rng, "w1", (16, 16, 3, 3)),
        random_initializer(rng, "b1", (16,)),
        random_initializer(rng, "wo", (1, 16, 1, 1)),
        random_initializer(rng, "bo", (1,)),
        random_initializer(rng, "wb", (1, 16, 1, 1)),
        random_initializer(rng, "bb", (1,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["g1"]),
        helper.make_node("Mul", ["c1", "g1"], ["s1"]),
        helper.make_node("Conv", ["s1", "wo", "bo"], ["o"]),
        helper.make_node("Sigmoid", ["o"], ["p"]),
        helper.make_node("Conv", ["s1", "wb", "bb"], ["q"]),
        helper.make_node("Concat", ["p", "q"], ["y"], axis=1),
    ]
    return _saved(tmp_path, "silu_head", nodes, inits, [1, 16, 16, 16], [1, 2, 16, 16])


@pytest.mark.parametrize("mcpu", ["sapphirerapids", "znver3"], ids=["avx512", "avx2"])
def test_silu_after_winograd_and_narrow_heads_get_schedules_and_match(cli, tmp_path, mcpu):
    """The SiLU reads the Winograd output's sums twice, and the heads' 1x1 convs to 1 channel
    would fill a vector of 8 or 16 output channels with padding: each was
    refused by the sampler (as recomputing) and ran as one thread of plain loops. Now the
    sums are computed once per tile, and the heads are dot products along the input
    channels (the narrow kernel); no kernel is left as plain loops, and the artifact equals
    onnxruntime."""
    if mcpu == "sapphirerapids" and not _host_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    source = _silu_head(tmp_path)
    out = tmp_path / mcpu
    r = cli(source, "--target", "x86_64", "--mcpu", mcpu, "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    kernels = [layer["kernel"] for layer in report["float_conv"]["layers"]]
    assert kernels == ["winograd", "narrow", "narrow"]
    schedules = {k["name"]: k["schedule"] for k in report["kernels"]}
    assert not [name for name, how in schedules.items() if how == "loops"], schedules
    assert any(name.startswith("fused_winograd_output_sigmoid") for name in schedules)
    assert sum(name.startswith(("narrow_", "fused_narrow_")) for name in schedules) == 2
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 16, 16, 16))


def _dynamically_quantized(tmp_path):
    """x 1x1x32x64 -> Conv 3x3 stride 2 pad 1 to 24 -> SiLU -> MaxPool 2 -> Conv 3x3 pad 1 to
    16 -> Relu,
    through onnxruntime's quantize_dynamic: each Conv is a DynamicQuantizeLinear (a range
    over all elements, a rounding), a ConvInteger, a Cast back to float, the scale and the
    bias (ddddocr's captcha model, opset 12, is this throughout)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(21)
    inits = [
        random_initializer(rng, "w1", (24, 1, 3, 3)),
        random_initializer(rng, "b1", (24,)),
        random_initializer(rng, "w2", (16, 24, 3, 3)),
        random_initializer(rng, "b2", (16,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Sigmoid", ["c1"], ["g1"]),
        helper.make_node("Mul", ["c1", "g1"], ["s1"]),
        helper.make_node("MaxPool", ["s1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    source = _saved(tmp_path, "float", nodes, inits, [1, 1, 32, 64], [1, 16, 8, 16], opset=12)
    quantized = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(source), str(quantized), op_types_to_quantize=["Conv"],
                     weight_type=QuantType.QUInt8)  # fmt: skip
    return quantized


def test_dynamically_quantized_convs_stay_nhwc_get_schedules_and_match(cli, tmp_path):
    """Each ConvInteger runs on the integer kernel (int8/integer_matmul), its input's
    dynamic quantization (range, scale, zero point, rounding) as one dynamic_quantize kernel
    on the NHWC values, its int32 round trip is gone (lower_integer_ops), and the last conv
    writes its NCHW output as a separate copy: no kernel is left as plain loops, two
    transposes are left (the input's and the output's), and the artifact equals
    onnxruntime."""
    source = _dynamically_quantized(tmp_path)
    assert "ConvInteger" in {n.op_type for n in onnx.load(source).graph.node}
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["integer"] * 2
    schedules = {k["name"]: k["schedule"] for k in report["kernels"]}
    assert not [name for name, how in schedules.items() if how == "loops"], schedules
    assert sum("transpose" in name for name in schedules) == 2, schedules
    assert sum(name.startswith("dynamic_quantize") for name in schedules) == 2, schedules
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 1, 32, 64))


def test_arm64_float_kernels_match_onnxruntime_under_qemu(cli, tmp_path):
    """The residual block's Winograd kernels, the small net's direct, depthwise and Gemm
    kernels and the dynamically quantized net's (its integer convs, its rounding on NHWC
    values, its NCHW output copy) built for arm64 (4 lanes) equal onnxruntime, run under qemu
    by the build."""
    sources = (_residual_block(tmp_path), _float_net(tmp_path), _silu_head(tmp_path),
               _dynamically_quantized(tmp_path))  # fmt: skip
    for source in sources:
        out = tmp_path / f"arm-{source.stem}"
        r = cli(source, "--target", "arm64", "-o", out, "-q")
        assert r.code == 0, r.err
        report = json.loads((out / "report.json").read_text())
        check = report["verification"]["artifact"]
        assert check["status"] == "ok" and "qemu-aarch64" in check["reference"]
        assert report["float_conv"]["lanes"] == 4
        assert all(layer["kernel"] for layer in report["float_conv"]["layers"])


def _sequence_net(tmp_path):
    """x 1x16x40 (a sequence of 40 steps) -> Conv1d to 32, kernel 3, pad 1 -> + a [32, 1]
    constant -> x * tanh(x) -> Unsqueeze to [1, 32, 40, 1] -> an identity Slice (tf2onnx's
    masked strided slice) -> Conv 5x1 to 24 (tf2onnx's Keras Conv1D) -> identity Slice ->
    Squeeze to [1, 24, 36] -> Relu -> GlobalMaxPool: magika's layers, and PyTorch's Conv1d."""
    rng = np.random.default_rng(11)
    big = np.iinfo(np.int64).max
    inits = [
        random_initializer(rng, "w1", (32, 16, 3)),
        random_initializer(rng, "b1", (32,)),
        random_initializer(rng, "shift", (32, 1)),
        random_initializer(rng, "w2", (24, 32, 5, 1)),
        numpy_helper.from_array(np.array([3], np.int64), "last"),
        numpy_helper.from_array(np.zeros(4, np.int64), "starts"),
        numpy_helper.from_array(np.full(4, big, np.int64), "ends"),
        numpy_helper.from_array(np.arange(4, dtype=np.int64), "axes"),
        numpy_helper.from_array(np.ones(4, np.int64), "steps"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1]),
        helper.make_node("Add", ["c1", "shift"], ["a1"]),
        helper.make_node("Tanh", ["a1"], ["t1"]),
        helper.make_node("Mul", ["a1", "t1"], ["g1"]),
        helper.make_node("Unsqueeze", ["g1", "last"], ["u"]),
        helper.make_node("Slice", ["u", "starts", "ends", "axes", "steps"], ["s1"]),
        helper.make_node("Conv", ["s1", "w2"], ["c2"]),
        helper.make_node("Slice", ["c2", "starts", "ends", "axes", "steps"], ["s2"]),
        helper.make_node("Squeeze", ["s2", "last"], ["q"]),
        helper.make_node("Relu", ["q"], ["r"]),
        helper.make_node("GlobalMaxPool", ["r"], ["y"]),
    ]
    return _saved(tmp_path, "sequence", nodes, inits, [1, 16, 40], [1, 24, 1])


def test_sequence_convs_stay_channels_last_fuse_their_epilogues_and_match(cli, tmp_path):
    """A 1-D conv's [N, C, L] values stay channels-last between the kernels: no transpose but
    the input's, each conv's epilogue (the tanh, the relu) fused into its kernel, the global
    max pool over the sequence as one column_max kernel, nothing in plain loops, and the
    artifact equals onnxruntime. Before, each Squeeze and Unsqueeze put a transpose between
    the kernels (magika: 0.62 ms of its 8), and its epilogue ran as a kernel of its own."""
    source = _sequence_net(tmp_path)
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    assert all(layer["kernel"] for layer in report["float_conv"]["layers"])
    schedules = {k["name"]: k["schedule"] for k in report["kernels"]}
    assert not [name for name, how in schedules.items() if how == "loops"], schedules
    assert sum("transpose" in name for name in schedules) <= 1, schedules
    convs = [n for n in schedules if n.startswith("fused_conv2d_float")]
    assert any("tanh" in n for n in convs) and any("relu" in n for n in convs), schedules
    assert any(n.startswith("column_max") for n in schedules), schedules
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 16, 40))


def test_patch_tokens_are_the_conv_output_reshaped_not_transposed(cli, tmp_path):
    """A ViT's patch embedding (a 4x4 stride-4 conv, flattened to [N, C, L] and transposed to
    [N, L, C] tokens, then a Linear): the tokens are the NHWC conv output's bytes, so no
    kernel transposes them (only the input's into NHWC), and the artifact equals
    onnxruntime. Before, they went NHWC -> NCHW -> tokens, two copies."""
    rng = np.random.default_rng(17)
    inits = [
        random_initializer(rng, "w1", (8, 3, 4, 4)),
        random_initializer(rng, "w2", (8, 8)),
        numpy_helper.from_array(np.array([1, 8, 16], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], strides=[4, 4]),
        helper.make_node("Reshape", ["p", "flat"], ["f"]),
        helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "w2"], ["y"]),
    ]
    source = _saved(tmp_path, "patches", nodes, inits, [1, 3, 16, 16], [1, 16, 8])
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    names = [k["name"] for k in report["kernels"]]
    assert sum("transpose" in name for name in names) <= 1, names
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 3, 16, 16))


def test_reductions_over_a_middle_axis_run_along_vectors_and_match(cli, tmp_path):
    """A mean, a sum of squares and a max over the 64 positions of a [1, 64, 32] value (a
    LayerNorm over the sequence axis, magika's) run as the per-vector spatial kernels, with
    the square inlined into its sum, nothing in plain loops, and equal onnxruntime. TVM's
    sample summed along the strided axis one element at a time (magika: 0.42 ms, now 0.02)."""
    rng = np.random.default_rng(13)
    inits = [
        random_initializer(rng, "w", (48, 32)),
        numpy_helper.from_array(np.array([1], np.int64), "seq"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["m"], axes=[1]),
        helper.make_node("Mul", ["h", "h"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "seq"], ["s"]),
        helper.make_node("ReduceMax", ["h"], ["mx"], axes=[1]),
        helper.make_node("Add", ["m", "s"], ["ms"]),
        helper.make_node("Add", ["ms", "mx"], ["y"]),
    ]
    source = _saved(tmp_path, "columns", nodes, inits, [1, 64, 48], [1, 1, 32])
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    schedules = {k["name"]: k["schedule"] for k in report["kernels"]}
    assert not [name for name, how in schedules.items() if how == "loops"], schedules
    for kernel in ("column_max", "column_mean"):
        assert any(name.startswith(kernel) for name in schedules), (kernel, schedules)
    # the square computed in its sum's kernel, not as an array of its own before it
    assert any(re.match(r"fused_multiply\d*_column_sum", name) for name in schedules), schedules
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 64, 48))


def test_full_reductions_run_as_one_vectorized_kernel_each_and_match(cli, tmp_path):
    """The max, min and mean of a conv's whole output (a dynamic quantization's range, and a
    mean), added back to it: each is one all_* kernel (rows of 16 lanes, then the lanes),
    and the artifact equals onnxruntime. TVM's sample of a full max ran at 2.5 GFLOP/s."""
    rng = np.random.default_rng(19)
    inits = [random_initializer(rng, "w", (16, 8, 3, 3))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMax", ["c"], ["hi"], keepdims=0),
        helper.make_node("ReduceMin", ["c"], ["lo"], keepdims=0),
        helper.make_node("ReduceMean", ["c"], ["mid"], keepdims=1),
        helper.make_node("Sub", ["hi", "lo"], ["range"]),
        helper.make_node("Add", ["range", "mid"], ["shift"]),
        helper.make_node("Add", ["c", "shift"], ["y"]),
    ]
    source = _saved(tmp_path, "ranges", nodes, inits, [1, 8, 32, 32], [1, 16, 32, 32])
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    schedules = {k["name"]: k["schedule"] for k in report["kernels"]}
    assert not [name for name, how in schedules.items() if how == "loops"], schedules
    for kernel in ("all_max", "all_min", "all_mean"):  # the mean with the ops around it
        assert any(kernel in name for name in schedules), (kernel, schedules)
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 8, 32, 32))


def test_a_conv_read_in_place_is_copied_to_a_longer_row_only_where_it_cuts_loads():
    """Extra columns cost a conv without padding of its own a copy of its whole input: one
    block of 16 channels over 55 columns keeps its row (11 pixels a tile, one broadcast per
    multiply-add like 14 would be), two blocks over 27 columns still take 28 (7 x 2 tiles: 0.64
    loads per multiply-add against 1.11 on 9 x 1), and a conv padded anyway takes the longer
    row as before."""
    from types import SimpleNamespace

    from edgepress.backends.kernels.float.lowering import _Conv, _direct_padding

    def padding(in_channels, out_channels, width, pads=(0, 0, 0, 0), kernel=1):
        weight = np.zeros((out_channels, in_channels, kernel, kernel), np.float32)
        conv = _Conv(None, None, weight, np.zeros(out_channels, np.float32), strides=(1, 1),
                     padding=pads, dilation=(1, 1), depthwise=False, matmul=False)  # fmt: skip
        x_nhwc = SimpleNamespace(ty=SimpleNamespace(shape=(1, width, width, in_channels)))
        return _direct_padding(conv, x_nhwc, 16)

    assert padding(128, 16, 55) == (0, 0, 0, 0)
    assert padding(128, 32, 27) == (0, 0, 0, 1)
    assert padding(16, 64, 55) == (0, 0, 0, 2)
    assert padding(128, 16, 55, (1, 1, 1, 1), 3) == (1, 1, 1, 2)


def test_a_squeeze_conv_reads_its_odd_row_in_place_and_matches_onnxruntime(cli, tmp_path):
    """SqueezeNet's squeeze layer, a 1x1 conv 128 -> 16 with its relu over 55x55: no pad
    kernel copies its input, and the artifact equals onnxruntime."""
    source, out = _built_1x1_conv_relu(cli, tmp_path, "squeeze", 128, 16, 55, seed=10)
    report = json.loads((out / "report.json").read_text())
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["direct"]
    assert not [k["name"] for k in report["kernels"] if "pad" in k["name"]], report["kernels"]
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 128, 55, 55))


def test_a_prime_row_length_is_computed_padded_and_cropped(cli, tmp_path):
    """19 columns have no divisor for a register tile: the direct convs (Winograd off) compute
    21 (7 x 2 tiles) and drop 2 (float_schedules.padded_width). The artifact still equals
    onnxruntime."""
    from edgepress.backends.kernels.float.schedules import float_tile, padded_width

    assert padded_width(19, 2, 288, 16) == 21 and float_tile(21, 2, 288, 16) == (7, 2)
    rng = np.random.default_rng(7)
    inits = [
        random_initializer(rng, "w1", (32, 32, 3, 3)),
        random_initializer(rng, "w2", (24, 32, 1, 1)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    source = _saved(tmp_path, "prime", nodes, inits, [1, 32, 19, 19], [1, 24, 19, 19])
    out = tmp_path / "prime"
    assert cli(source, "--target", "x86_64", "-o", out, "-q", "--float-conv", "direct").code == 0
    report = json.loads((out / "report.json").read_text())
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["direct", "direct"]
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 32, 19, 19))


def test_a_batch_of_two_keeps_the_direct_kernel(cli, tmp_path):
    """The Winograd kernels transform one image: a batch of 2 takes the direct kernel (which
    loops over images) and still equals onnxruntime."""
    source = _residual_block(tmp_path, batch=2)
    out = tmp_path / "batch2"
    assert cli(source, "--target", "x86_64", "-o", out, "-q").code == 0
    report = json.loads((out / "report.json").read_text())
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["direct", "direct"]
    _matches_onnxruntime(cli, tmp_path, source, out, (2, 16, 14, 14))


@pytest.mark.parametrize("height, width", [(14, 16), (13, 15)])
def test_winograd_weights_transform_like_the_direct_convolution(height, width):
    """The input transform, products and output transform over packed G g G^T weights equal
    numpy's direct 3x3 convolution (float64), on an odd channel count and 24 outputs (a
    partial 16-lane block), and on an odd height and width (whose last tiles read one row or
    column past the padded input, which must not reach the outputs kept)."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels.float import compute as fk
    from edgepress.backends.kernels import rules
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})

    def run(fn, arrays):
        ph = [te.placeholder(a.shape, "float32", name=f"a{i}") for i, a in enumerate(arrays)]
        out = fn(*ph)
        mod = tvm.IRModule({"main": te.create_prim_func([*ph, out])})
        rules.register(describe(target))
        mod, done = sample_schedules(mod, target, describe(target), {"main"})
        assert done == {"main"}
        lib = tvm.compile(mod, target=target)
        got = tvm.runtime.empty([int(d) for d in out.shape], "float32", tvm.cpu())
        lib["main"](*[tvm.runtime.tensor(a) for a in arrays], got)
        return got.numpy()

    rng = np.random.default_rng(4)
    channels, out_channels = 5, 24
    tiles = fk.winograd_tiles(height, width)
    x = rng.standard_normal((1, 2 * tiles[0] + 2, 2 * tiles[1] + 2, channels)).astype(np.float32)
    w = rng.standard_normal((out_channels, channels, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    v = run(lambda xp: fk.winograd_input(xp, tiles=tiles), [x])
    m = run(
        lambda a, u: fk.conv2d_nhwc(
            a, u, None, strides=(1, 1), dilation=(1, 1), out_channels=out_channels
        ),
        [v, fk.winograd_weight(w, 8)],
    )
    y = run(
        lambda a, b: fk.winograd_output(
            a, b, height=height, width=width, out_channels=out_channels
        ),
        [m, bias],
    )
    want = np.zeros((height, width, out_channels)) + bias
    for ry in range(3):
        for rx in range(3):
            patch = x[0, ry : ry + height, rx : rx + width].astype(np.float64)
            want += patch @ w[:, :, ry, rx].T.astype(np.float64)
    np.testing.assert_allclose(y[0], want, rtol=1e-5, atol=1e-5)


def test_an_add_along_the_columns_is_not_taken_for_the_bias(cli, tmp_path):
    """Conv (8 channels, 8 columns) + a constant of shape [8] adds along the columns, not the
    channels: it must stay an add after the kernel, not be folded in as the conv's bias."""
    rng = np.random.default_rng(9)
    inits = [random_initializer(rng, "w", (8, 3, 3, 3)), random_initializer(rng, "v", (8,))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "v"], ["y"]),
    ]
    source = _saved(tmp_path, "columns", nodes, inits, [1, 3, 8, 8], [1, 8, 8, 8])
    out = tmp_path / "columns"
    assert cli(source, "--target", "x86_64", "-o", out, "-q").code == 0
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 3, 8, 8))


def test_float_conv_tvm_keeps_tvms_kernels(cli, tmp_path):
    source = _float_net(tmp_path)
    out = tmp_path / "tvm"
    assert cli(source, "--target", "x86_64", "-o", out, "-q", "--float-conv", "tvm").code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["float_conv"]["kernels"] == "tvm"
    assert not any("_float" in k["name"] for k in report["kernels"])
    _matches_onnxruntime(cli, tmp_path, source, out)


def test_register_tiles_divide_the_row_and_fit_the_registers():
    """Every tile is an exact divisor of the row and of the channel blocks and stays within
    the target's accumulators; the measured choices hold (module docstring of float_tile)."""
    from edgepress.backends.kernels.float.schedules import ACCUMULATORS, float_tile

    assert float_tile(56, 4, 576, 16) == (7, 2)  # ResNet-18's 3x3 layers on AVX-512
    assert float_tile(7, 32, 4608, 16) == (7, 2)
    assert float_tile(7, 64, 4608, 8) == (7, 1)  # AVX2: no 2-block tile of 7 pixels fits
    assert float_tile(56, 8, 576, 8) == (4, 2)
    assert float_tile(112, 6, 16, 16) == (2, 6)  # shallow: blocks first
    # weights of 3 blocks in L1 (96 x 3 x 64 B): fewest loads per FMA, not 13 x 1's 14 per 13
    assert float_tile(676, 6, 96, 16) == (4, 3)
    assert float_tile(169, 6, 96, 16) == (13, 1)  # no other tile of half the accumulators
    assert float_tile(2, 6, 96, 16) == (2, 2)  # none of half the accumulators: the deep rule
    for lanes, most in ACCUMULATORS.items():
        for width in (1, 5, 7, 13, 20, 56, 112):
            for blocks in (1, 2, 3, 9, 63):
                for depth in (16, 576):
                    z, b = float_tile(width, blocks, depth, lanes)
                    assert width % z == 0 and blocks % b == 0 and z * b <= most


def _built_1x1_conv_relu(cli, tmp_path, name: str, channels: int, out_channels: int,
                         size: int, *, seed: int):
    """(source, artifact folder) of x [1, channels, size, size] -> 1x1 Conv with bias ->
    Relu, built for x86_64 through the CLI."""
    rng = np.random.default_rng(seed)
    inits = [
        random_initializer(rng, "w", (out_channels, channels, 1, 1)),
        random_initializer(rng, "b", (out_channels,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    shapes = [1, channels, size, size], [1, out_channels, size, size]
    source = _saved(tmp_path, name, nodes, inits, *shapes)
    out = tmp_path / f"{name}_out"
    assert cli(source, "--target", "x86_64", "-o", out, "-q").code == 0
    return source, out


def test_a_conv_on_an_l1_resident_tile_matches_onnxruntime(cli, tmp_path):
    """A 1x1 conv 96 -> 96 over 28x28: its 6 blocks of weights fit L1 and float_tile gives it
    4 pixels x 3 blocks (fewest loads per multiply-add), a tile the deep rule never made;
    the artifact equals onnxruntime."""
    from edgepress.backends.kernels.float.schedules import float_tile

    assert float_tile(28, 6, 96, 16) == (4, 3)
    source, out = _built_1x1_conv_relu(cli, tmp_path, "resident", 96, 96, 28, seed=9)
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 96, 28, 28))


def test_rows_go_outside_the_channel_steps_only_for_small_expanding_convs():
    """rows_outer: ResNet-50's 64 -> 256 1x1 conv yes; its 256 -> 64 (reads more than it
    writes) and 128 -> 512 (256 KB of weights, read again per row) no. _float_net's 24 -> 32
    conv takes it, and test_float_convs_run_as_nhwc_kernels_and_match_onnxruntime checks its
    outputs."""
    from edgepress.backends.kernels.float.schedules import rows_outer

    assert rows_outer(64, 256) and rows_outer(24, 32)
    assert not rows_outer(256, 64) and not rows_outer(128, 512) and not rows_outer(64, 64)


def test_conv_with_large_weights_prefetches_them_and_stays_exact():
    """A conv whose weights pass PREFETCH_MIN_BYTES (64 -> 64 channels, 3x3: 147 KB) gets the
    weight prefetch at the top of its reduction loop (as a build does it), its tile's
    accumulators stay on the stack (no workspace), and it equals numpy."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels.common import tiles
    from edgepress.backends.kernels.float.compute import conv2d_nhwc, pack_conv_weight
    from edgepress.backends.kernels import rules
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 9, 9, 64)).astype(np.float32)  # padded 7x7
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    arrays = [x, pack_conv_weight(w, 16), bias]
    assert arrays[1].nbytes >= tiles.PREFETCH_MIN_BYTES
    ph = [te.placeholder(a.shape, "float32", name=f"a{i}") for i, a in enumerate(arrays)]
    out = conv2d_nhwc(*ph, strides=(1, 1), dilation=(1, 1), out_channels=64)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1})
    mod = tvm.IRModule({"main": te.create_prim_func([*ph, out])})
    rules.register(describe(target))
    mod, done = sample_schedules(mod, target, describe(target), {"main"})
    assert done == {"main"}
    mod["main"] = rules.inject(mod["main"], describe(target))  # as a build does it
    lib = tvm.compile(mod, target=target)
    assert "prefetcht1" in lib.mod.inspect_source("asm")
    assert "@__TVMBackendAllocWorkspace" not in lib.mod.inspect_source("ll")
    if not _host_has_avx512():
        pytest.skip("built and its prefetch checked; not run: this CPU has no AVX-512")
    got = tvm.runtime.empty((1, 7, 7, 64), "float32", tvm.cpu())
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], got)
    want = np.zeros((7, 7, 64), np.float64) + bias
    for ry in range(3):
        for rx in range(3):
            want += x[0, ry : ry + 7, rx : rx + 7].astype(np.float64) @ w[:, :, ry, rx].T
    np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump to read the library")
def test_a_built_1x1_conv_with_large_weights_prefetches_them(cli, tmp_path):
    """A 1x1 conv over 512 channels (512 KB of weights) built as a build does it: MetaSchedule
    rewrites its weights to a rank-3 layout, and the prefetch still finds them (it looked for
    rank 5 or more, and ResNet-50's 4-8 MB 1x1 convs went unprefetched); the artifact equals
    onnxruntime."""
    source, out = _built_1x1_conv_relu(cli, tmp_path, "wide", 512, 256, 7, seed=8)
    assert "prefetcht1" in disassembly(out / "model.so")
    _matches_onnxruntime(cli, tmp_path, source, out, (1, 512, 7, 7))


def test_a_sample_that_recomputes_a_reduction_is_refused():
    """MetaSchedule's samples of a 1000-class softmax compute its max and sum inside the loop
    over the classes (550x the work at seed 0); sample_schedules refuses such samples, and what
    it keeps is estimated at no more than RECOMPUTE_LIMIT x the softmax's own FLOPs."""
    import tvm
    from tvm import te, topi
    from tvm.s_tir.analysis import estimate_tir_flops

    from edgepress.backends.relax.pipeline import RECOMPUTE_LIMIT, sample_schedules
    from edgepress.backends.targets.description import describe

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    x = te.placeholder((1, 1000), "float32", name="x")
    mod = tvm.IRModule({"main": te.create_prim_func([x, topi.nn.softmax(x, axis=1)])})
    before = float(estimate_tir_flops(mod))
    mod, _ = sample_schedules(mod, target, describe(target), {"main"})
    assert float(estimate_tir_flops(mod)) <= RECOMPUTE_LIMIT * before


def test_a_sample_of_a_function_without_reductions_is_kept():
    """A YOLO's Focus layer, int8: four strided slices of the image, each quantized,
    concatenated over channels and packed for the first conv (edgepress's pack rule). The
    sample inlines the four quantizations into the pack's select, estimated at 4x the
    function's FLOPs, over OUR_RECOMPUTE_LIMIT; but nothing there reduces, so nothing can
    be recomputed per element of a consumer: sample_schedules keeps it (it went to plain
    loops on one thread, 0.83 ms on ddddocr's detector), and the built function equals numpy."""
    import tvm
    from tvm import te, topi

    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.int8.compute import pack_activations
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    description = describe(target)
    rules.register(description)
    x = te.placeholder((1, 3, 16, 16), "float32", name="x")
    parts = [
        topi.cast(topi.clip(topi.round(topi.divide(
            topi.strided_slice(x, [0, 0, i, j], [1, 3, 16, 16], [1, 1, 2, 2]), 0.02)),
            -128, 127), "int8")  # fmt: skip
        for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))
    ]
    nhwc = topi.transpose(topi.concatenate(parts, axis=1), (0, 2, 3, 1))
    packed = pack_activations(nhwc, padding=(1, 1, 1, 1), in_zero_point=0, act_dtype="uint8")
    mod = tvm.IRModule({"main": te.create_prim_func([x, packed])})
    mod, done = sample_schedules(mod, target, description, {"main"})
    assert done == {"main"}

    xs = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    got = tvm.runtime.empty((1, 10, 10, 12), "uint8", tvm.cpu())
    lib["main"](tvm.runtime.tensor(xs), got)
    slices = [xs[:, :, i::2, j::2] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
    q = np.clip(np.rint(np.concatenate(slices, axis=1) / np.float32(0.02)), -128, 127)
    want = np.zeros((1, 10, 10, 12), np.int32)  # padded with in_zero_point, as given
    want[:, 1:-1, 1:-1] = q.transpose(0, 2, 3, 1) + 128  # int8 moved to uint8
    np.testing.assert_array_equal(got.numpy(), want)


def test_a_sample_that_only_inlines_a_tanh_gelu_is_kept():
    """A tanh-GELU before a max over the sequence (magika's conv epilogue): fast_tanh reads
    its clipped input once per term of its polynomial, so the sample's inlining puts 5.9x the
    function's FLOPs in the estimate (copies of one expression, which common-subexpression
    elimination removes). sample_schedules keeps that sample (it went to plain loops on one
    thread), and the built function equals numpy."""
    import tvm
    from tvm import te, topi

    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    x = te.placeholder((1, 64, 508), "float32", name="x")
    b = te.placeholder((1, 64, 1), "float32", name="b")
    a = topi.add(x, b)
    cube = topi.multiply(a, topi.multiply(a, topi.multiply(0.044715, a)))
    inner = topi.multiply(0.7978846, topi.add(a, cube))
    gelu = topi.multiply(a, topi.multiply(0.5, topi.add(1.0, topi.fast_tanh(inner))))
    out = topi.max(gelu, axis=2, keepdims=True)
    mod = tvm.IRModule({"main": te.create_prim_func([x, b, out])})
    mod, done = sample_schedules(mod, target, describe(target), {"main"})
    assert done == {"main"}

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(1, 64, 508)).astype(np.float32)
    bs = rng.normal(size=(1, 64, 1)).astype(np.float32)
    host = tvm.target.Target({"kind": "llvm"})
    lib = tvm.compile(mod, target=host)
    got = tvm.runtime.empty((1, 64, 1), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(bs), got)
    v = (xs + bs).astype(np.float64)
    want = (0.5 * v * (1 + np.tanh(0.7978846 * (v + 0.044715 * v**3)))).max(axis=2, keepdims=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def _built(cli, tmp_path, source) -> dict:
    """The report of `source` built for this machine into tmp_path/out (the build checks the
    artifact against onnxruntime too)."""
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    return json.loads((out / "report.json").read_text())


def _layout_ops_net(tmp_path):
    """x 1x8x12x12 -> Conv to 16 -> Concat with a second Conv (24 channels) -> Resize x2
    (nearest) -> Slice of channels 4..20 -> AveragePool 2x2 s2 -> Split into 8 + 8 channels ->
    a 1x1 Conv of each -> Add: the data movement between a detector's kernels."""
    rng = np.random.default_rng(7)
    inits = [
        random_initializer(rng, "w1", (16, 8, 3, 3)),
        random_initializer(rng, "w2", (8, 8, 1, 1)),
        random_initializer(rng, "wa", (8, 8, 1, 1)),
        random_initializer(rng, "wb", (8, 8, 1, 1)),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([4], np.int64), "starts"),
        numpy_helper.from_array(np.array([20], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["c2"]),
        helper.make_node("Concat", ["c1", "c2"], ["cat"], axis=1),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("AveragePool", ["sl"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Split", ["ap"], ["s0", "s1"], axis=1, num_outputs=2),
        helper.make_node("Conv", ["s0", "wa"], ["ca"]),
        helper.make_node("Conv", ["s1", "wb"], ["cb"]),
        helper.make_node("Add", ["ca", "cb"], ["y"]),
    ]
    # Split's num_outputs is opset 18
    return _saved(tmp_path, "layout_ops", nodes, inits, [1, 8, 12, 12], [1, 8, 12, 12], opset=18)


def test_concat_resize_slice_pool_split_stay_nhwc_between_kernels(cli, tmp_path):
    """The data-movement ops between NHWC kernels run on the NHWC values: no kernel of the
    artifact transposes, and it equals onnxruntime."""
    source = _layout_ops_net(tmp_path)
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    kernels = [layer["kernel"] for layer in report["float_conv"]["layers"]]
    assert None not in kernels
    names = [k["name"] for k in report["kernels"]]
    transposing = [n for n in names if "transpose" in n]
    # the input's one transpose into NHWC and the output's one back: nothing between kernels
    assert len(transposing) <= 2, names
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 8, 12, 12))


def _grouped_net(tmp_path):
    """x 1x8x10x10 -> Conv 3x3 -> Relu -> Conv 3x3 of 2 groups -> Relu -> Conv 1x1 of 4 groups."""
    rng = np.random.default_rng(8)
    inits = [
        random_initializer(rng, "w1", (16, 8, 3, 3)),
        random_initializer(rng, "w2", (16, 8, 3, 3)),
        random_initializer(rng, "b2", (16,)),
        random_initializer(rng, "w3", (24, 4, 1, 1)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["y"], group=4),
    ]
    return _saved(tmp_path, "grouped", nodes, inits, [1, 8, 10, 10], [1, 24, 10, 10])


def test_grouped_convs_run_as_a_direct_kernel_per_group(cli, tmp_path):
    """A 3x3 conv of 2 groups and a 1x1 conv of 4 (AlexNet's, ShuffleNet's) run as one direct
    kernel per group over its NHWC channel slice, joined without a transpose; the artifact
    equals onnxruntime."""
    source = _grouped_net(tmp_path)
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    kernels = [layer["kernel"] for layer in report["float_conv"]["layers"]]
    assert kernels[1:] == ["grouped", "grouped"], kernels
    names = [k["name"] for k in report["kernels"]]
    assert not any(n.startswith(("conv2d_nchw", "group_conv2d")) for n in names), names
    assert sum("transpose" in n for n in names) <= 2, names
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 8, 10, 10))


def test_channel_shuffle_stays_nhwc_between_kernels(cli, tmp_path):
    """Conv -> Reshape [1, 4, 4, H, W] -> Transpose (0, 2, 1, 3, 4) -> Reshape -> Conv (a
    ShuffleNet channel shuffle) shuffles the NHWC channels in place of the NCHW transposes;
    the artifact equals onnxruntime."""
    rng = np.random.default_rng(9)
    inits = [
        random_initializer(rng, "w1", (16, 8, 3, 3)),
        random_initializer(rng, "w2", (8, 16, 1, 1)),
        numpy_helper.from_array(np.array([1, 4, 4, 6, 6], np.int64), "grouped"),
        numpy_helper.from_array(np.array([1, 16, 6, 6], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c1", "grouped"], ["g"]),
        helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "flat"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ]
    source = _saved(tmp_path, "shuffle", nodes, inits, [1, 8, 6, 6], [1, 8, 6, 6])
    out = tmp_path / "out"
    names = [k["name"] for k in _built(cli, tmp_path, source)["kernels"]]
    # the input's transpose into NHWC, the shuffle's own swap, and the output's transpose back
    # (not the NCHW shuffle between two transposes, which FuseOps puts in one kernel)
    assert sum(n.count("transpose") for n in names) <= 3, names
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 8, 6, 6))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_stays_nhwc_between_kernels(cli, tmp_path, mode):
    """Conv to 4 x 8 channels -> DepthToSpace (blocksize 2) -> Add a per-channel bias -> Relu
    -> Conv 3x3 (an upsampling head, as conv_transpose_as_depth_to_space writes one): the
    rearrangement runs on the NHWC values, not between a transpose to NCHW and one back, and
    the artifact equals onnxruntime in both modes."""
    rng = np.random.default_rng(11)
    inits = [
        random_initializer(rng, "w1", (32, 8, 1, 1)),
        random_initializer(rng, "bias", (1, 8, 1, 1)),
        random_initializer(rng, "w2", (8, 8, 3, 3)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("DepthToSpace", ["c1"], ["d"], blocksize=2, mode=mode),
        helper.make_node("Add", ["d", "bias"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    source = _saved(tmp_path, f"d2s_{mode}", nodes, inits, [1, 8, 6, 7], [1, 8, 12, 14])
    names = [k["name"] for k in _built(cli, tmp_path, source)["kernels"]]
    # the input's transpose into NHWC and the output's back (NCHW, the rearrangement sat
    # between two more transposes and its own, all fused into one kernel)
    assert sum(n.count("transpose") for n in names) == 2, names
    assert [n for n in names if "depth_to_space" in n], names
    _matches_onnxruntime(cli, tmp_path, source, tmp_path / "out", shape=(1, 8, 6, 7))


def _squeeze_excitation_net(tmp_path):
    """x -> Conv 3x3 (24 channels) = t; t + t * HardSigmoid(Conv(Relu(Conv(GlobalAveragePool(
    t))))) -> Conv 3x3 (PP-OCR's residual squeeze-and-excitation)."""
    rng = np.random.default_rng(13)
    inits = [
        random_initializer(rng, "w1", (24, 8, 3, 3)),
        random_initializer(rng, "w_down", (6, 24, 1, 1)),
        random_initializer(rng, "w_up", (24, 6, 1, 1)),
        random_initializer(rng, "b_up", (24,)),
        random_initializer(rng, "w2", (8, 24, 3, 3)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["t"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["t"], ["p"]),
        helper.make_node("Conv", ["p", "w_down"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Conv", ["r", "w_up", "b_up"], ["u"]),
        helper.make_node("HardSigmoid", ["u"], ["g"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["t", "g"], ["m"]),
        helper.make_node("Add", ["t", "m"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return _saved(tmp_path, "se", nodes, inits, [1, 8, 10, 12], [1, 8, 10, 12])


def test_squeeze_excitation_gate_is_not_fused_into_its_conv(cli, tmp_path):
    """The gate's product over the whole image (_squeeze_excitation_net) runs in a function of
    its own, not fused behind the 1x1 conv of the pooled gate, which left that function to
    plain loops on one thread. The artifact equals onnxruntime."""
    source = _squeeze_excitation_net(tmp_path)
    kernels = {k["name"]: k["schedule"] for k in _built(cli, tmp_path, source)["kernels"]}
    assert "loops" not in kernels.values(), kernels
    # the product, the residual add and the next conv's padding: the pack rule's
    gates = [name for name in kernels if "multiply" in name and "conv2d" not in name]
    assert len(gates) == 1, kernels
    _matches_onnxruntime(cli, tmp_path, source, tmp_path / "out", shape=(1, 8, 10, 12))


def test_a_failing_unfuse_leaves_the_build_to_fuse_ops(cli, tmp_path, monkeypatch):
    """relax/expanding_broadcasts is an optimization: planted to crash, the squeeze-and-
    excitation graph still builds (FuseOps' own fusion) and equals onnxruntime, with a
    warning; under EDGEPRESS_STRICT the crash is the build's error."""
    from edgepress.backends.relax import expanding_broadcasts
    from edgepress.compiler.errors import STRICT_ENV

    def crash(mod):
        raise RuntimeError("planted")

    monkeypatch.setattr(expanding_broadcasts, "unfuse_expanding_broadcasts", crash)
    source = _squeeze_excitation_net(tmp_path)
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "strict", "-q")
    assert r.code != 0 and "planted" in r.err
    monkeypatch.delenv(STRICT_ENV)
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out")
    assert r.code == 0, r.err
    assert "expanding broadcasts left fused" in r.err
    _matches_onnxruntime(cli, tmp_path, source, tmp_path / "out", shape=(1, 8, 10, 12))


def _grouped_shuffle_net(tmp_path):
    """x 1x16x10x12 -> Conv (group 4) -> Relu -> ShuffleNet's channel shuffle of the 4
    groups -> depthwise Conv 3x3 -> Conv (group 4)."""
    rng = np.random.default_rng(10)
    inits = [
        random_initializer(rng, "w1", (32, 4, 1, 1)),
        random_initializer(rng, "wd", (32, 1, 3, 3)),
        random_initializer(rng, "w2", (16, 8, 1, 1)),
        numpy_helper.from_array(np.array([1, 4, 8, 10, 12], np.int64), "grouped"),
        numpy_helper.from_array(np.array([1, 32, 10, 12], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], group=4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "grouped"], ["g"]),
        helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "flat"], ["s"]),
        helper.make_node("Conv", ["s", "wd"], ["d"], group=32, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w2"], ["y"], group=4),
    ]
    return _saved(tmp_path, "grouped_shuffle", nodes, inits, [1, 16, 10, 12], [1, 16, 10, 12])


def test_grouped_conv_then_shuffle_is_one_interleaving_copy(cli, tmp_path):
    """The grouped conv's outputs, each through the Relu, are written interleaved by one copy
    kernel (no concatenation, no shuffle of its own), and each group's conv reads its input
    channels in place; the artifact equals onnxruntime."""
    source = _grouped_shuffle_net(tmp_path)
    out = tmp_path / "out"
    names = [k["name"] for k in _built(cli, tmp_path, source)["kernels"]]
    assert sum(n.startswith("interleave_channels") for n in names) == 1, names
    assert sum(n.startswith("concat_channels") for n in names) == 1, names  # the second conv's
    assert not [n for n in names if "reshape" in n and "transpose" in n], names
    # the 1x1 grouped convs pad nothing (12 columns are a whole register tile): each group's
    # kernel reads its channels in place, no slice is copied out
    assert not [n for n in names if "strided_slice" in n], names
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 16, 10, 12))


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_padded_average_pool_between_kernels_equals_onnxruntime(cli, tmp_path, count_include_pad):
    """Conv -> AveragePool 3x3 s2 pad 1 (a ShuffleNet shortcut) -> Conv: the pool is
    edgepress's NHWC window kernel, dividing by the taps inside the input (or the whole window
    with count_include_pad), and equals onnxruntime."""
    rng = np.random.default_rng(10)
    inits = [random_initializer(rng, "w1", (16, 8, 1, 1)), random_initializer(rng, "w2", (8, 16, 1, 1))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node(
            "AveragePool", ["c1"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
            pads=[1, 1, 1, 1], count_include_pad=count_include_pad,
        ),
        helper.make_node("Conv", ["p", "w2"], ["y"]),
    ]  # fmt: skip
    source = _saved(tmp_path, "avg", nodes, inits, [1, 8, 11, 11], [1, 8, 6, 6])
    out = tmp_path / "out"
    names = [k["name"] for k in _built(cli, tmp_path, source)["kernels"]]
    assert any(n.startswith("avg_pool2d_float") for n in names), names
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 8, 11, 11))


def test_token_matmuls_run_as_kernels_and_match_onnxruntime(cli, tmp_path):
    """[1, 37, 48] x [48, 64] + bias -> GELU-free ReLU -> x [64, 1000] (a transformer's Linear
    layers and a recognizer's CTC head: rank-3 inputs, 37 tokens, a prime row) run as
    edgepress's matmul kernel, not TVM's; the artifact equals onnxruntime."""
    rng = np.random.default_rng(11)
    inits = [
        random_initializer(rng, "w1", (48, 64)),
        random_initializer(rng, "b1", (64,)),
        random_initializer(rng, "w2", (64, 1000)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["y"]),
    ]
    source = _saved(tmp_path, "tokens", nodes, inits, [1, 37, 48], [1, 37, 1000])
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] == ["direct", "direct"]
    names = [k["name"] for k in report["kernels"]]
    assert sum("matmul_float" in n for n in names) == 2, names
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 37, 48))


def _attention_net(tmp_path):
    """x [1, 37, 48] -> Q, K, V projections into 3 heads of 16 -> Q K^T -> Softmax -> times V
    -> heads merged back: both operands of two MatMuls computed."""
    rng = np.random.default_rng(12)
    inits = [
        random_initializer(rng, "wq", (48, 48)),
        random_initializer(rng, "wk", (48, 48)),
        random_initializer(rng, "wv", (48, 48)),
        numpy_helper.from_array(np.array([1, 37, 3, 16], np.int64), "heads"),
        numpy_helper.from_array(np.array([1, 37, 48], np.int64), "merged"),
    ]
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_flat"]),
            helper.make_node("Reshape", [f"{name}_flat", "heads"], [f"{name}_split"]),
            helper.make_node("Transpose", [f"{name}_split"], [name],
                             perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3]),
        ]  # fmt: skip
    nodes += [
        helper.make_node("MatMul", ["q", "k"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["heads_out"]),
        helper.make_node("Transpose", ["heads_out"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "merged"], ["y"]),
    ]
    return _saved(tmp_path, "attention", nodes, inits, [1, 37, 48], [1, 37, 48])


def test_attention_matmuls_run_as_the_batched_kernel(cli, tmp_path):
    """Attention over 37 tokens (no whole register tile or vector) and 3 heads of 16: Q K^T,
    softmax, times V, where both operands are computed: the batched kernel of ours (operands
    padded to whole tiles by a written copy, the result cropped), equal to onnxruntime."""
    source = _attention_net(tmp_path)
    out = tmp_path / "out"
    report = _built(cli, tmp_path, source)
    kernels = [layer["kernel"] for layer in report["float_conv"]["layers"]]
    assert kernels.count("batched") == 2, kernels
    names = [k["name"] for k in report["kernels"]]
    assert sum(n.startswith("batch_matmul_float") for n in names) == 2, names
    assert not any(n.startswith(("matmul", "fused_matmul")) and "float" not in n for n in names)
    _matches_onnxruntime(cli, tmp_path, source, out, shape=(1, 37, 48))


def _functions(listing: str) -> dict[str, list[str]]:
    """objdump -d's listing as each function's instructions, by symbol."""
    functions: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        symbol = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if symbol:
            current = functions.setdefault(symbol.group(1), [])
        elif "\t" in line:
            current.append(line)
    return functions


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
@pytest.mark.parametrize(
    ("net", "kernels", "nhwc"),
    [
        (_layout_ops_net, ("concat_channels", "avg_pool2d_float", "conv2d_float"), True),
        (_grouped_net, ("conv2d_float",), True),
        (_grouped_shuffle_net, ("interleave_channels", "conv2d_float"), True),
        (_attention_net, ("batch_matmul_float", "matmul_float", "softmax"), False),
        (_sequence_net, ("fused_conv2d_float",), True),
    ],
)
def test_arm64_layout_grouped_and_attention_kernels_use_neon_under_qemu(
    cli, tmp_path, net, kernels, nhwc
):
    """The kernels beyond convolutions built for arm64 equal onnxruntime under qemu (the build
    runs them there), and the arithmetic ones are NEON: 4-lane fmla in each matmul, conv and
    softmax kernel (qemu times mean nothing, so the instructions are what is checked)."""
    source = net(tmp_path)
    out = tmp_path / "arm"
    r = cli(source, "--target", "arm64", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    check = report["verification"]["artifact"]
    assert check["status"] == "ok" and "qemu-aarch64" in check["reference"]
    names = [k["name"] for k in report["kernels"]]
    if nhwc:  # the input's transpose into NHWC and the output's back; none between kernels
        assert sum("transpose" in n for n in names) <= 2, names
    listing = disassembly(out / "model.so", "aarch64-linux-gnu-objdump")
    functions = _functions(listing)
    for prefix in kernels:
        bodies = [body for name, body in functions.items() if name.startswith(prefix)]
        assert bodies, (prefix, sorted(functions))
        if prefix in ("concat_channels", "interleave_channels", "avg_pool2d_float"):
            continue  # data movement and one add per tap: checked by the result above
        for body in bodies:
            assert any(re.search(r"\bfmla\s+v\d+\.4s", line) for line in body), prefix
