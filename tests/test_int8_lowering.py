"""Integer int8 lowering: the kernels against a numpy integer reference (exact), a quantized
model end to end against onnxruntime's QDQ execution on x86-64 and on arm64 under qemu, and a
pattern the lowering cannot take left in float with its reason."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.builders import random_initializer
from tests.conftest import disassembly, ort_outputs, save


def _requantize_reference(acc, bias, multiplier, zero_point, dtype):
    """onnxruntime's (MLAS) requantization, in numpy: float32(acc + bias) * multiplier,
    rounded half to even, plus the zero point, saturated."""
    scaled = (acc + bias[None, :, None, None]).astype(np.float32) * multiplier[None, :, None, None]
    info = np.iinfo(dtype)
    return np.clip(np.rint(scaled) + zero_point, info.min, info.max).astype(dtype)


def _conv_reference(x, zx, w, stride, pad, groups=1):
    """sum over the window of (x - zx) * w, in int64, zero-padded after centring."""
    xc = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, width = xc.shape
    oc, icg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (width - kw) // stride + 1
    out = np.zeros((n, oc, oh, ow), np.int64)
    per_group = oc // groups
    for o in range(oc):
        g = o // per_group
        for i in range(kh):
            for j in range(kw):
                window = xc[:, g * icg : (g + 1) * icg, i : i + stride * oh : stride]
                window = window[..., j : j + stride * ow : stride]
                out[:, o] += np.einsum("nchw,c->nhw", window, w[o, :, i, j].astype(np.int64))
    return out


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _run_te(outputs_fn, arrays):
    """Build the kernels' functions as a build does for this CPU (MetaSchedule's sample with
    edgepress's rules: tiles, border cuts) and run them."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels import rules
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    placeholders = [
        te.placeholder(a.shape, str(a.dtype), name=f"a{i}") for i, a in enumerate(arrays)
    ]
    out = outputs_fn(*placeholders)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    mod = tvm.IRModule({"main": te.create_prim_func([*placeholders, out])})
    rules.register(describe(target))
    mod, done = sample_schedules(mod, target, describe(target), {"main"})
    assert done == {"main"}
    lib = tvm.compile(mod, target=target)
    result = tvm.runtime.empty([int(d) for d in out.shape], str(out.dtype), tvm.cpu())
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], result)
    return result.numpy()


@pytest.mark.parametrize(
    ("act_dtype", "lanes", "x_dtype", "stride", "pad", "out_dtype"),
    [
        ("uint8", 16, "uint8", 1, 1, "uint8"),  # x86: u8 x s8
        ("int8", 4, "uint8", 2, 1, "uint8"),  # arm64: u8 activations moved to s8
        ("uint8", 8, "int8", 2, 0, "int8"),  # s8 activations moved to u8
        ("int16", 8, "int8", 1, 1, "uint8"),  # x86 AVX2: s8 activations widened to int16
    ],
)
@pytest.mark.parametrize("in_int32", [False, True], ids=["float-saturation", "int-saturation"])
def test_integer_conv_equals_numpy_integer_arithmetic(
    act_dtype, lanes, x_dtype, stride, pad, out_dtype, in_int32
):
    """Both epilogues: saturation in float, and rounding straight to int32 where the layer's
    scaled sums provably fit (scaled_in_int32)."""
    from edgepress.backends.kernels.int8.compute import (
        pack_activations,
        pack_weight,
        packed_conv2d,
        requantize_multiplier,
        scaled_in_int32,
        shift_zero_point,
    )

    rng = np.random.default_rng(0)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (1, 6, 9, 9)).astype(x_dtype)  # 6: not 4-aligned
    w = rng.integers(-127, 128, (20, 6, 3, 3)).astype(np.int8)  # 20: not lane-aligned
    zx, zy = (131, 7) if x_dtype == "uint8" else (-5, -3)
    bias = rng.integers(-5000, 5000, 20).astype(np.int64)
    multiplier = requantize_multiplier(0.02, rng.uniform(0.001, 0.01, 20), 0.5)
    zk = shift_zero_point(zx, x_dtype, act_dtype)
    kernel_bias = (bias - zk * w.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
    assert scaled_in_int32(w, kernel_bias, multiplier, act_dtype)
    assert not scaled_in_int32(w, kernel_bias, multiplier * 1e8, act_dtype)

    def compute(xt, wt, bt, mt):
        packed = pack_activations(xt, padding=(pad,) * 4, in_zero_point=zk, act_dtype=act_dtype)
        return packed_conv2d(
            packed,
            wt,
            bt,
            mt,
            strides=(stride, stride),
            dilation=(1, 1),
            out_zero_point=zy,
            out_dtype=out_dtype,
            out_channels=20,
            in_int32=in_int32,
        )

    got = _nchw(_run_te(compute, [_nhwc(x), pack_weight(w, lanes), kernel_bias, multiplier]))
    acc = _conv_reference(x, zx, w, stride, pad)
    want = _requantize_reference(acc, bias, multiplier, zy, out_dtype)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stride", [1, 2])
def test_integer_conv_computing_a_longer_row_keeps_the_first_columns(stride):
    """A 13-column output row computed as 14 (a 7-pixel register tile instead of 1): the
    input's right padding grows by a stride, the requantized output keeps 13 columns, and it
    equals numpy's integer arithmetic."""
    from edgepress.backends.kernels.int8.compute import (
        pack_activations,
        pack_weight,
        packed_conv2d,
        requantize_multiplier,
    )
    from edgepress.backends.kernels.int8.schedules import conv_tile, padded_width
    from edgepress.backends.targets.description import AVX2_8x2x2, VNNI_16x4

    # the decision: VNNI's 13-pixel rows of a 3x3 conv to 192 channels
    assert conv_tile(13, 12, 108, VNNI_16x4) == (1, 2)
    assert padded_width(13, 12, 108, VNNI_16x4) == 14
    assert conv_tile(14, 12, 108, VNNI_16x4) == (7, 2)
    assert padded_width(14, 12, 108, VNNI_16x4) == 14  # a row with a good tile stays
    # a fair tile stays too: AVX2's 1 x 4 of 7 accumulators, NEON's 14 x 1 of 24 at 56
    assert padded_width(13, 8, 36, AVX2_8x2x2) == 13 and padded_width(56, 4, 36, None) == 56

    rng = np.random.default_rng(5)
    size = 13 * stride
    x = rng.integers(0, 256, (1, 8, size, size)).astype(np.uint8)
    w = rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8)
    zx, zy = 120, 3
    bias = rng.integers(-5000, 5000, 16).astype(np.int64)
    multiplier = requantize_multiplier(0.02, rng.uniform(0.001, 0.01, 16), 0.5)
    kernel_bias = (bias - zx * w.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
    acc = _conv_reference(x, zx, w, stride, 1)
    assert acc.shape[3] == 13

    def compute(xt, wt, bt, mt):
        padding = (1, 1, 1, 1 + stride)  # one output column more
        packed = pack_activations(xt, padding=padding, in_zero_point=zx, act_dtype="uint8")
        return packed_conv2d(
            packed, wt, bt, mt, strides=(stride, stride), dilation=(1, 1), out_zero_point=zy,
            out_dtype="uint8", out_channels=16, out_width=13,
        )  # fmt: skip

    got = _nchw(_run_te(compute, [_nhwc(x), pack_weight(w, 16), kernel_bias, multiplier]))
    np.testing.assert_array_equal(got, _requantize_reference(acc, bias, multiplier, zy, "uint8"))


def _host_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _scheduled_conv(arrays, mcpu: str, intrinsic: str, out_zero_point: int):
    """packed_conv2d (stride 1, uint8 out) over `arrays` (padded input, packed weight, bias,
    multiplier), scheduled as a build does it for an x86 CPU: (module, target, output)."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels.common import tensor_intrinsics
    from edgepress.backends.kernels.int8.compute import packed_conv2d
    from edgepress.backends.kernels import rules
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    placeholders = [te.placeholder(a.shape, str(a.dtype)) for a in arrays]
    out = packed_conv2d(
        *placeholders,
        strides=(1, 1),
        dilation=(1, 1),
        out_zero_point=out_zero_point,
        out_dtype="uint8",
        out_channels=arrays[2].shape[0],
        intrinsic=intrinsic,
        pair_sums=intrinsic == "dot_8x2x2_avx2",
    )
    target = tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": 1}
    )
    tensor_intrinsics.load(("x86",))
    mod = tvm.IRModule({"main": te.create_prim_func([*placeholders, out])})
    rules.register(describe(target))
    mod, done = sample_schedules(mod, target, describe(target), {"main"})
    assert done == {"main"}
    return mod, target, out


@pytest.mark.parametrize(
    ("intrinsic", "lanes", "mcpu", "flag", "instruction"),
    [
        ("dot_8x2x2_avx2", 8, "znver3", "avx2", "vpmaddwd"),
        ("dot_16x4_vnni", 16, "icelake-server", "avx512_vnni", "vpdpbusd"),
    ],
)
def test_tensorized_conv_is_exact_where_int16_pairs_would_saturate(
    intrinsic, lanes, mcpu, flag, instruction
):
    """The conv scheduled as a build does it (MetaSchedule's sample with edgepress's rule,
    tensorized), on the host CPU, against numpy. Activations at 255 and weights at 127 make
    u8 x s8 pair sums of 64770: vpmaddubsw (TVM's AVX2/AVX-512 intrinsics) would saturate."""
    if flag not in _host_flags():
        pytest.skip(f"this CPU has no {flag}")
    import tvm

    from edgepress.backends.kernels.int8.compute import pack_weight

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 8, 9, 9)).astype(np.uint8)
    x[:, :, :5] = 255
    w = rng.integers(-128, 128, (24, 8, 3, 3)).astype(np.int8)
    w[:12], w[12:16] = 127, -128
    bias = rng.integers(-5000, 5000, 24).astype(np.int32)
    multiplier = rng.uniform(1e-5, 1e-4, 24).astype(np.float32)
    # The packed input (NHWC, padded by 1), as pack_activations would give it: widened to int16
    # for AVX2's intrinsic.
    xp = np.pad(_nhwc(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    if intrinsic == "dot_8x2x2_avx2":
        xp = xp.astype(np.int16)
    arrays = [xp, pack_weight(w, lanes), bias, multiplier]
    mod, target, out = _scheduled_conv(arrays, mcpu, intrinsic, out_zero_point=0)
    asm = tvm.compile(mod, target=target).mod.inspect_source("asm")
    assert instruction in asm
    # The tile holds both channel blocks (VNNI) or pair sums (AVX2); the epilogue reads the
    # accumulators as whole vectors (it once gathered them lane by lane: vpinsrd).
    assert "vpinsrd" not in asm
    got = tvm.runtime.empty([int(d) for d in out.shape], "uint8", tvm.cpu())
    tvm.compile(mod, target=target)["main"](*[tvm.runtime.tensor(a) for a in arrays], got)
    acc = _conv_reference(x, 0, w, 1, 1)
    want = _requantize_reference(acc, bias.astype(np.int64), multiplier, 0, "uint8")
    np.testing.assert_array_equal(_nchw(got.numpy()), want)


@pytest.mark.parametrize(
    ("x_dtype", "zx", "big_bias", "float_bias", "size", "stride"),
    [
        ("uint8", 100, 0, True, 10, 2),
        ("int8", -7, 2**25, False, 58, 1),  # 2^25: not exact in float32
    ],
)
def test_integer_depthwise_conv_equals_numpy_integer_arithmetic(
    x_dtype, zx, big_bias, float_bias, size, stride
):
    """Both requantizations: the bias added in float where every sum is exact there, in
    int32 where one channel's bias is too large for float32 to hold exactly. The padding is
    read in the kernel: a 58-pixel row has border and interior tiles, a 5-pixel one only a
    border tile."""
    from edgepress.backends.kernels.common.nhwc_compute import pack_depthwise_weight, per_channel
    from edgepress.backends.kernels.int8.compute import depthwise_conv2d, depthwise_sums_exact

    rng = np.random.default_rng(1)
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, (1, 24, size, size)).astype(x_dtype)
    w = rng.integers(-128, 128, (24, 1, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, 24).astype(np.int64)
    bias[0] += big_bias
    multiplier = rng.uniform(0.001, 0.02, 24).astype(np.float32)
    kernel_bias = (bias - zx * w.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
    assert depthwise_sums_exact(w, kernel_bias, x_dtype) == float_bias

    def compute(xt, wt, bt, mt):
        return depthwise_conv2d(
            xt,
            wt,
            bt,
            mt,
            strides=(stride, stride),
            padding=(1, 1, 1, 1),
            dilation=(1, 1),
            in_zero_point=zx,
            out_zero_point=3,
            out_dtype="uint8",
            lanes=16,
            float_bias=float_bias,
        )

    arrays = [_nhwc(x), pack_depthwise_weight(w), per_channel(kernel_bias), per_channel(multiplier)]
    got = _nchw(_run_te(compute, arrays))
    acc = _conv_reference(x, zx, w, stride, 1, groups=24)
    want = _requantize_reference(acc, bias, multiplier, 3, "uint8")
    assert 0 < np.count_nonzero((want > 0) & (want < 255))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "dtype, padding, strides", [("uint8", (1, 1, 1, 1), (2, 2)), ("int8", (0, 1, 2, 0), (1, 2))]
)
def test_integer_max_pool_equals_numpy(dtype, padding, strides):
    from edgepress.backends.kernels.common.nhwc_compute import max_pool2d

    info = np.iinfo(dtype)
    x = np.random.default_rng(2).integers(info.min, info.max + 1, (1, 5, 9, 11)).astype(dtype)
    # Every value at the dtype's minimum in one channel: padding must not win there either.
    x[0, 1] = info.min

    def compute(xt):
        return max_pool2d(xt, pool_size=(3, 3), strides=strides, padding=padding, dilation=(1, 1))

    top, left, bottom, right = padding
    xp = np.pad(
        x.astype(np.float64),
        ((0, 0), (0, 0), (top, bottom), (left, right)),
        constant_values=-np.inf,
    )
    oh = (xp.shape[2] - 3) // strides[0] + 1
    ow = (xp.shape[3] - 3) // strides[1] + 1
    windows = [
        xp[:, :, i : i + strides[0] * oh : strides[0], j : j + strides[1] * ow : strides[1]]
        for i in range(3)
        for j in range(3)
    ]
    got = _nchw(_run_te(compute, [_nhwc(x)]))
    np.testing.assert_array_equal(got, np.max(windows, axis=0).astype(dtype))


def _saved_with_calibration(path, nodes, inits, y_shape: list, rng, opset: int = 17):
    """The graph (input x: 1x3x16x16, output y) saved at `path` with `opset`, and 24
    calibration inputs beside it: (model path, calibration path)."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    source = save(model, path)
    cal = path.parent / "cal.npz"
    np.savez(cal, x=rng.standard_normal((24, 1, 3, 16, 16)).astype(np.float32))
    return source, cal


def _qdq_net(tmp_path):
    """Conv -> Relu -> depthwise Conv -> Relu -> 1x1 Conv (+ the depthwise output) ->
    grouped Conv (groups 2) -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm, and
    calibration data for it."""
    rng = np.random.default_rng(3)

    inits = [
        random_initializer(rng, "wa", (16, 3, 3, 3)),
        random_initializer(rng, "ba", (16,)),
        random_initializer(rng, "wd", (16, 1, 3, 3)),
        random_initializer(rng, "bd", (16,)),
        random_initializer(rng, "wb", (16, 16, 1, 1)),
        random_initializer(rng, "bb", (16,)),
        random_initializer(rng, "wg", (16, 8, 3, 3)),
        random_initializer(rng, "bg", (16,)),
        random_initializer(rng, "wf", (10, 16)),
        random_initializer(rng, "bf", (10,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1] * 4, name="conv_a"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node(
            "Conv", ["ar", "wd", "bd"], ["d"], pads=[1] * 4, strides=[2, 2], group=16, name="dw"
        ),
        helper.make_node("Relu", ["d"], ["dr"], name="relu_d"),
        helper.make_node("Conv", ["dr", "wb", "bb"], ["b"], name="conv_b"),
        helper.make_node("Add", ["b", "dr"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "wg", "bg"], ["g"], pads=[1] * 4, group=2, name="grouped"),
        helper.make_node("MaxPool", ["g"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("GlobalAveragePool", ["p"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    return _saved_with_calibration(tmp_path / "net.onnx", nodes, inits, [1, 10], rng)


def _int8_build(cli, tmp_path, *extra):
    source, cal = _qdq_net(tmp_path)
    out = tmp_path / "art"
    args = ("--target", "x86_64", "-o", out, "-q", "--quantize", "int8", "--calibration", cal)
    r = cli(source, *args, *extra)
    assert r.code == 0, r.err
    return out, json.loads((out / "report.json").read_text())


def _int8_without_floor(cli, tmp_path, source, cal, *extra):
    """(folder, report) of `source` built int8 into tmp_path/art, every layer quantized
    (--fidelity-floor 0: the kernels under test, not the fallback, are what runs)."""
    out = tmp_path / "art"
    r = cli(source, "--target", "x86_64", "-o", out, "-q", "--quantize", "int8",
            "--calibration", cal, "--fidelity-floor", "0", *extra)  # fmt: skip
    assert r.code == 0, r.err
    return out, json.loads((out / "report.json").read_text())


def _layers(report) -> dict[str, str]:
    layers = report["int8_compute"]["layers"]
    return {layer["node"]: layer["kernel"] or f"float: {layer['reason']}" for layer in layers}


def _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed: int) -> None:
    """Independently of the build's own check: `compress run` of the artifact against
    onnxruntime's run of its QDQ model.onnx, within one output step, on a fresh input."""
    x = np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    got = np.load(tmp_path / "out.npz")["y"]
    (ref,) = ort_outputs(out / "model.onnx", {"x": x})
    step = report["verification"]["artifact"]["outputs"][0]["step"]
    assert np.abs(got - ref).max() <= step * 1.001
    assert report["verification"]["artifact"]["status"] == "ok"


# This machine's CPU (VNNI where it has it) and an AVX2 CPU without VNNI (exact vpmaddwd).
@pytest.mark.parametrize("mcpu", [[], ["--mcpu", "znver3"]], ids=["host", "avx2"])
def test_quantized_model_runs_integer_kernels_within_one_step_of_onnxruntime(cli, tmp_path, mcpu):
    out, report = _int8_build(cli, tmp_path, *mcpu)
    intrinsic = report["int8_compute"]["intrinsic"]
    if mcpu:
        assert intrinsic == "dot_8x2x2_avx2"
    instruction = {"dot_16x4_vnni": "vpdpbusd", "dot_8x2x2_avx2": "vpmaddwd"}.get(intrinsic)
    if instruction and shutil.which("objdump"):
        # The library holds the instruction, not just the packed layout.
        listing = disassembly(out / "model.so")
        assert len(re.findall(rf"\b{instruction}\b", listing)) > 0
    layers = _layers(report)
    assert layers["conv_a"] == layers["conv_b"] == layers["fc"] == "dot-product"
    assert layers["dw"] == "depthwise"
    assert layers["grouped"] == "grouped"  # a dot-product kernel per group
    # Activations stay NHWC from one int8 kernel to the next: the residual add runs in the
    # conv's epilogue, and no transpose is left.
    names = [k["name"] for k in report["kernels"]]
    assert any("conv2d_int8" in n and "_add" in n for n in names), names
    assert sum(n.startswith("transpose") for n in names) == 0, names

    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=11)


def test_silu_between_integer_kernels_stays_nhwc(cli, tmp_path):
    """Conv -> SiLU (Sigmoid, Mul: a YOLO detector's every layer) -> Conv, int8: the sigmoid
    runs on the NHWC values in the first kernel's epilogue, with no transpose around it (each
    one cost two, a YOLO detector's int8 artifact a quarter of its time)."""
    rng = np.random.default_rng(5)
    inits = [
        random_initializer(rng, "wa", (16, 3, 3, 3)),
        random_initializer(rng, "ba", (16,)),
        random_initializer(rng, "wb", (16, 16, 3, 3)),
        random_initializer(rng, "bb", (16,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1] * 4, name="conv_a"),
        helper.make_node("Sigmoid", ["a"], ["gate"], name="sigmoid"),
        helper.make_node("Mul", ["a", "gate"], ["silu"], name="silu"),
        helper.make_node("Conv", ["silu", "wb", "bb"], ["y"], pads=[1] * 4, name="conv_b"),
    ]
    source, cal = _saved_with_calibration(tmp_path / "silu.onnx", nodes, inits,
                                          [1, 16, 16, 16], rng)  # fmt: skip
    out, report = _int8_without_floor(cli, tmp_path, source, cal)
    assert set(_layers(report).values()) == {"dot-product"}
    sigmoid = [k["name"] for k in report["kernels"] if "sigmoid" in k["name"]]
    assert sigmoid and not any("transpose" in name for name in sigmoid), sigmoid
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=12)


def test_a_conv_before_hardswish_writes_its_float_sum_into_the_chain(cli, tmp_path):
    """Conv -> HardSwish as opset 13 exports write it (x * clip(x + 3, 0, 6) / 6) -> depthwise
    Conv, int8: quantize_int8 leaves the first conv's output float (only float ops read it),
    its integer kernel writes the dequantized sum, and the HardSwish chain with the depthwise
    input's channel gains (equalize_depthwise_inputs) runs on the NHWC values with no
    transpose; the result is within one step of onnxruntime on model.onnx."""
    import onnx

    rng = np.random.default_rng(6)
    spread = np.logspace(-1, 1, 16).astype(np.float32)  # channels of different ranges
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
                                * spread[:, None, None, None], "wa"),
        random_initializer(rng, "ba", (16,)),
        random_initializer(rng, "wd", (16, 1, 3, 3)),
        random_initializer(rng, "bd", (16,)),
        *(numpy_helper.from_array(np.array(v, np.float32), n)
          for n, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1] * 4, name="conv_a"),
        helper.make_node("Add", ["a", "three"], ["a3"], name="plus_three"),
        helper.make_node("Clip", ["a3", "zero", "six"], ["c"], name="relu6"),
        helper.make_node("Mul", ["a", "c"], ["m"], name="times"),
        helper.make_node("Div", ["m", "six"], ["h"], name="hardswish"),
        helper.make_node("Conv", ["h", "wd", "bd"], ["y"], pads=[1] * 4, group=16, name="dw"),
    ]
    source, cal = _saved_with_calibration(tmp_path / "hardswish.onnx", nodes, inits,
                                          [1, 16, 16, 16], rng, opset=13)  # fmt: skip
    out, report = _int8_without_floor(cli, tmp_path, source, cal)
    rounded = [n.input[0] for n in onnx.load(out / "model.onnx").graph.node
               if n.op_type == "QuantizeLinear"]  # fmt: skip
    assert "a" not in rounded and report["quantization"]["equalized_depthwise_inputs"] == 1
    assert _layers(report) == {"conv_a": "dot-product", "dw": "depthwise"}
    names = [k["name"] for k in report["kernels"]]
    # the float sum never leaves the conv's kernel: HardSwish, the gains and the quantize for
    # the depthwise conv are its epilogue; the one transpose left turns y back to NCHW
    conv = [name for name in names if "conv2d_int8" in name and "depthwise" not in name]
    assert len(conv) == 1 and all(op in conv[0] for op in ("minimum", "divide", "quantize"))
    assert sum(name.startswith("transpose") for name in names) == 1, names
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=13)


def test_a_float_layer_between_int8_layers_adds_no_transposes(cli, tmp_path):
    """Conv (int8) -> Conv kept in float -> Conv (int8), as a fidelity search leaves a
    sensitive layer: the int8 lowering runs first and leaves NCHW views of its kernels' NHWC
    outputs, which the float lowering reads through (nhwc_rewriter.layout_transpose) instead
    of transposing back; the result is within one step of onnxruntime on the QDQ model."""
    import onnx
    import onnx_ir as ir

    from edgepress.passes.quantization.calibration import calibrate
    from edgepress.passes.quantization.quantize_int8 import quantize_int8

    rng = np.random.default_rng(8)
    inits = [random_initializer(rng, f"{w}{n}", shape) for n in "abc"
             for w, shape in (("w", (16, 16 if n != "a" else 3, 3, 3)), ("b", (16,)))]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1] * 4, name="conv_a"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "wb", "bb"], ["b"], pads=[1] * 4, name="conv_b"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Conv", ["br", "wc", "bc"], ["y"], pads=[1] * 4, name="conv_c"),
    ]
    source, cal = _saved_with_calibration(tmp_path / "float_middle.onnx", nodes, inits,
                                          [1, 16, 16, 16], rng)  # fmt: skip
    float_model = onnx.load(source)
    stats = calibrate(float_model, {"x": np.load(cal)["x"]})
    qdq = quantize_int8(ir.from_proto(float_model), stats=stats, exclude=["conv_b", "relu_b"])
    onnx.save(ir.to_proto(qdq.model), tmp_path / "qdq.onnx")
    out = tmp_path / "art"
    r = cli(tmp_path / "qdq.onnx", "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert _layers(report)["conv_a"] == _layers(report)["conv_c"] == "dot-product"
    assert [layer["kernel"] for layer in report["float_conv"]["layers"]] != [None]
    names = [k["name"] for k in report["kernels"]]
    # two transposes: x's to NHWC (in its quantize) and y's back; none around conv_b (each
    # boundary kept a pair, fused into the pad before it and the quantize after it)
    assert sum(name.count("transpose") for name in names) == 2, names
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=14)


def _fire_module(tmp_path):
    """Conv -> Relu -> two Convs (1x1, 3x3) -> Concat (a SqueezeNet fire module) -> Resize x2
    (an FPN's upsampling) -> Conv; (model, calibration data)."""
    rng = np.random.default_rng(6)
    inits = [
        random_initializer(rng, "ws", (8, 3, 1, 1)),
        random_initializer(rng, "we1", (16, 8, 1, 1)),
        random_initializer(rng, "we3", (16, 8, 3, 3)),
        random_initializer(rng, "wo", (8, 32, 3, 3)),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["s"], name="squeeze"),
        helper.make_node("Relu", ["s"], ["sr"], name="relu_s"),
        helper.make_node("Conv", ["sr", "we1"], ["e1"], name="expand1"),
        helper.make_node("Conv", ["sr", "we3"], ["e3"], pads=[1] * 4, name="expand3"),
        helper.make_node("Concat", ["e1", "e3"], ["cat"], axis=1, name="concat"),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], mode="nearest", name="up"),
        helper.make_node("Conv", ["up", "wo"], ["y"], pads=[1] * 4, name="conv_out"),
    ]
    return _saved_with_calibration(tmp_path / "fire.onnx", nodes, inits,
                                   [1, 8, 32, 32], rng)  # fmt: skip


@pytest.mark.parametrize("mcpu", [[], ["--mcpu", "znver3"]], ids=["host", "avx2"])
def test_convs_over_13_columns_compute_longer_rows_within_one_step_of_onnxruntime(
    cli, tmp_path, mcpu
):
    """16x16 -> Conv 4x4 -> 13x13 -> Conv 3x3 pad 1 -> Conv 1x1: 13 has no divisor for a
    register tile of several pixels, so the convs may compute 14 columns and drop one
    (int8/schedules.padded_width). The artifact stays within one step of onnxruntime."""
    rng = np.random.default_rng(21)
    inits = [
        random_initializer(rng, "w1", (16, 3, 4, 4)),
        random_initializer(rng, "w2", (64, 16, 3, 3)),
        random_initializer(rng, "w3", (16, 64, 1, 1)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv4x4"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "w2"], ["b"], pads=[1] * 4, name="conv3x3"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Conv", ["br", "w3"], ["y"], name="conv1x1"),
    ]
    source, cal = _saved_with_calibration(
        tmp_path / "odd.onnx", nodes, inits, [1, 16, 13, 13], rng
    )
    out = tmp_path / "art"
    r = cli(source, "--target", "x86_64", "-o", out, "-q", "--quantize", "int8",
            "--calibration", cal, "--fidelity-floor", "0", *mcpu)  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert set(_layers(report).values()) == {"dot-product"}
    # VNNI's tile for the 3x3 conv's 13 columns is 1 pixel x 2 blocks, for 14 it is 7 x 2:
    # its kernel multiplies 13 rows of 14 columns (FLOPs as TVM counts them). AVX2's, 1 x 4
    # of its 7 accumulators, is fair: the row stays 13.
    vnni = report["int8_compute"]["intrinsic"] == "dot_16x4_vnni"
    conv3x3 = max(k["flops"] for k in report["kernels"] if "conv2d_int8" in k["name"])
    assert (conv3x3 >= 2 * 13 * 14 * 64 * 16 * 9) == vnni, report["kernels"]
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=17)


def test_fire_module_concat_and_upsample_stay_nhwc_between_integer_kernels(cli, tmp_path):
    """A fire module and an upsampling, int8: the concat and the resize run on the NHWC values
    between the integer kernels, with no transpose (each cost two, a fifth of SqueezeNet's
    int8 time)."""
    source, cal = _fire_module(tmp_path)
    out, report = _int8_without_floor(cli, tmp_path, source, cal)
    assert set(_layers(report).values()) == {"dot-product"}
    names = [k["name"] for k in report["kernels"]]
    assert any("concat" in n for n in names) and any("resize" in n for n in names), names
    # the input's transpose into NHWC and the output's back; none between the kernels
    transposing = [n for n in names if "transpose" in n]
    assert len(transposing) <= 2 and not any("concat" in n for n in transposing), names
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=13)


@pytest.mark.parametrize("mattr", [["--mattr=-amx-int8"], []], ids=["vnni", "host"])
def test_dense_block_batch_norm_runs_on_nhwc_values_in_whole_channel_vectors(
    cli, tmp_path, mattr
):
    """A DenseNet dense block, int8: Concat -> BatchNormalization -> Relu -> Conv, whose batch
    norm no conv before it can absorb. It runs on the concatenation's NHWC value
    (nhwc_rewriter.batch_norm_in_nhwc; left NCHW it sat between two transposes) in a function
    scheduled channels-as-vectors (common/elementwise_schedule: TVM's sample vectorized the
    fused axes by 64, gathering 48 channels' parameters lane by lane); the result is within one
    step of onnxruntime on the QDQ model. On an AMX CPU (the host case there) conv_c's 48
    channels are padded to 64 for AMX, and the batch norm runs inside that pack instead."""
    rng = np.random.default_rng(21)
    channels = 48  # whole AVX-512 vectors, not whole vectors of TVM's 64
    bn = [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.uniform(-0.2, 0.2, channels).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.uniform(-0.1, 0.3, channels).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, channels).astype(np.float32), "var"),
    ]
    inits = [
        random_initializer(rng, "wa", (24, 3, 3, 3)),
        random_initializer(rng, "wb", (24, 24, 3, 3)),
        random_initializer(rng, "wc", (16, channels, 1, 1)),
        *bn,
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1] * 4, name="conv_a"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "wb"], ["b"], pads=[1] * 4, name="conv_b"),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Concat", ["ar", "br"], ["cat"], axis=1, name="concat"),
        helper.make_node("BatchNormalization", ["cat", "gamma", "beta", "mean", "var"],
                         ["norm"], name="norm"),  # fmt: skip
        helper.make_node("Relu", ["norm"], ["nr"], name="relu_norm"),
        helper.make_node("Conv", ["nr", "wc"], ["y"], name="conv_c"),
    ]
    source, cal = _saved_with_calibration(tmp_path / "dense.onnx", nodes, inits,
                                          [1, 16, 16, 16], rng)  # fmt: skip
    out, report = _int8_without_floor(cli, tmp_path, source, cal, *mattr)
    assert set(_layers(report).values()) == {"dot-product"}
    kernels = {k["name"]: k["schedule"] for k in report["kernels"]}
    norm = [name for name in kernels if "divide" in name]  # the decomposed batch norm
    assert len(norm) == 1 and "transpose" not in norm[0], kernels
    if report["int8_compute"]["amx"]:
        assert "pack_int8" in norm[0], kernels
    else:
        assert kernels[norm[0]] == "elementwise", kernels
    # the input's transpose into NHWC and the output's back; none around the batch norm
    assert sum(name.count("transpose") for name in kernels) <= 2, kernels
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=22)


def _saved_graph(path, nodes, inits, x_shape, y_shape):
    """A hand-written opset-17 graph from float x to float y, saved to `path`."""
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )  # fmt: skip
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_concat_at_its_inputs_own_scale_is_copied_not_requantized(cli, tmp_path):
    """A QDQ concat whose inputs are quantized at the concat's own scale and zero point (as
    DenseNet's, where each concat rereads the one before it): each dequantize-quantize pair
    is the identity, so the concat copies bytes: no requantize kernel (DenseNet-121 had 48,
    up to 1.1 ms each), and the build equals onnxruntime on the QDQ model."""
    rng = np.random.default_rng(8)

    def q(name, scale, zero, dtype):
        return [
            numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
            numpy_helper.from_array(np.array(zero, dtype), f"{name}_z"),
        ]

    w1 = rng.integers(-60, 60, (8, 8, 3, 3)).astype(np.int8)
    w2 = rng.integers(-60, 60, (4, 16, 1, 1)).astype(np.int8)
    inits = [
        *q("a", 0.05, 128, np.uint8), *q("w", 0.01, 0, np.int8),
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
    ]  # fmt: skip
    act = ["a_s", "a_z"]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", *act], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", *act], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1", "w_s", "w_z"], ["w1d"]),
        helper.make_node("Conv", ["xd", "w1d"], ["c"], pads=[1] * 4),
        helper.make_node("QuantizeLinear", ["c", *act], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", *act], ["cd"]),
        helper.make_node("Concat", ["xd", "cd"], ["cat"], axis=1),
        helper.make_node("QuantizeLinear", ["cat", *act], ["catq"]),
        helper.make_node("DequantizeLinear", ["catq", *act], ["catd"]),
        helper.make_node("DequantizeLinear", ["w2", "w_s", "w_z"], ["w2d"]),
        helper.make_node("Conv", ["catd", "w2d"], ["y"]),
    ]
    source = _saved_graph(
        tmp_path / "concat_qdq.onnx", nodes, inits, [1, 8, 12, 12], [1, 4, 12, 12]
    )
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err  # the build checks the artifact against onnxruntime
    names = [k["name"] for k in json.loads((out / "report.json").read_text())["kernels"]]
    assert any("concat" in n for n in names), names
    requantizing = [n for n in names if re.fullmatch(r"fused_dequantize\d*_quantize\d*", n)]
    assert not requantizing, names


def test_spp_max_pools_requantized_to_another_scale_pool_the_8bit_values(cli, tmp_path):
    """A YOLO's SPP: max pools of 5, 9 and 13 (stride 1, padded) of one int8 conv output, each
    quantized at a scale of its own for the concat after them. Max commutes with the
    increasing dequantize, so each pools the 8-bit NHWC values (the int8 max-pool kernel) and
    then requantizes (TVM's float pool of the dequantized values, sampled: 0.2-0.5 ms each
    on ddddocr's detector); the build equals onnxruntime on the QDQ model."""
    rng = np.random.default_rng(12)

    def q(name, scale, zero):
        return [
            numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
            numpy_helper.from_array(np.array(zero, np.uint8 if zero else np.int8), f"{name}_z"),
        ]

    inits = [
        *q("a", 0.05, 128), *q("c", 0.04, 100), *q("w", 0.01, 0),
        *q("p5", 0.03, 90), *q("p9", 0.035, 95), *q("p13", 0.045, 110), *q("cat", 0.05, 100),
        numpy_helper.from_array(rng.integers(-60, 60, (16, 8, 3, 3)).astype(np.int8), "w1"),
        numpy_helper.from_array(rng.integers(-60, 60, (8, 64, 1, 1)).astype(np.int8), "w2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1", "w_s", "w_z"], ["w1d"]),
        helper.make_node("Conv", ["xd", "w1d"], ["c"], pads=[1] * 4),
        helper.make_node("QuantizeLinear", ["c", "c_s", "c_z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "c_s", "c_z"], ["cd"]),
    ]
    for k in (5, 9, 13):
        nodes += [
            helper.make_node("MaxPool", ["cd"], [f"p{k}"], kernel_shape=[k, k],
                             pads=[k // 2] * 4, strides=[1, 1]),  # fmt: skip
            helper.make_node("QuantizeLinear", [f"p{k}", f"p{k}_s", f"p{k}_z"], [f"p{k}q"]),
            helper.make_node("DequantizeLinear", [f"p{k}q", f"p{k}_s", f"p{k}_z"], [f"p{k}d"]),
        ]
    nodes += [
        helper.make_node("Concat", ["cd", "p5d", "p9d", "p13d"], ["cat"], axis=1),
        helper.make_node("QuantizeLinear", ["cat", "cat_s", "cat_z"], ["catq"]),
        helper.make_node("DequantizeLinear", ["catq", "cat_s", "cat_z"], ["catd"]),
        helper.make_node("DequantizeLinear", ["w2", "w_s", "w_z"], ["w2d"]),
        helper.make_node("Conv", ["catd", "w2d"], ["o"]),
        helper.make_node("QuantizeLinear", ["o", "a_s", "a_z"], ["oq"]),
        helper.make_node("DequantizeLinear", ["oq", "a_s", "a_z"], ["y"]),
    ]
    source = _saved_graph(tmp_path / "spp_qdq.onnx", nodes, inits, [1, 8, 20, 20], [1, 8, 20, 20])
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    names = [k["name"] for k in report["kernels"]]
    assert sum(n.startswith("max_pool2d_int8") for n in names) == 3, names
    assert not any("max_pool" in n and not n.startswith("max_pool2d_int8") for n in names), names
    x = (rng.standard_normal((1, 8, 20, 20)) * 2).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    (ref,) = ort_outputs(source, {"x": x})
    step = report["verification"]["artifact"]["outputs"][0]["step"]
    assert np.abs(np.load(tmp_path / "out.npz")["y"] - ref).max() <= step * 1.001


def test_int8_compute_float_keeps_tvms_float_qdq(cli, tmp_path):
    _, report = _int8_build(cli, tmp_path, "--int8-compute", "float")
    assert report["int8_compute"]["compute"] == "float"
    assert report["verification"]["artifact"]["status"] == "ok"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
@pytest.mark.parametrize(
    ("mattr", "intrinsic", "instruction"),
    [
        ("+dotprod", "dot_4x4_i8i8s32_sdot", "sdot"),
        ("+dotprod,+i8mm", "dot_4x4_u8i8s32_usdot", "usdot"),  # uint8 activations as they are
    ],
)
def test_arm64_int8_artifact_uses_dot_products_and_matches_onnxruntime_under_qemu(
    cli, tmp_path, mattr, intrinsic, instruction
):
    _, report = _int8_build(cli, tmp_path)  # x86 first: the same model.onnx for both
    source = tmp_path / "art" / "model.onnx"
    out = tmp_path / "arm"
    r = cli(source, "--target", "arm64", f"--mattr={mattr}", "-o", out, "-q")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    check = report["verification"]["artifact"]
    assert check["status"] == "ok" and "qemu-aarch64" in check["reference"]
    assert report["int8_compute"]["intrinsic"] == intrinsic
    listing = disassembly(out / "model.so", "aarch64-linux-gnu-objdump")
    assert len(re.findall(rf"\b{instruction}\b", listing)) > 0


def test_only_per_tensor_operands_follow_the_kernels_nhwc_layout():
    """An elementwise op between int8 kernels runs on their NHWC values only when its other
    operands broadcast the same in any layout: clip's bounds and one-element scales do, a
    per-channel [1, C, 1, 1] tensor does not."""
    import tvm
    from tvm import relax

    from edgepress.backends.kernels.common.nhwc_rewriter import is_scalar as _is_scalar

    clip = relax.op.clip(relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32")), 0.0, 6.0)
    assert _is_scalar(clip.args[1]) and _is_scalar(clip.args[2])
    assert _is_scalar(relax.const(np.float32(0.5)))
    assert _is_scalar(relax.const(np.ones((1, 1, 1, 1), np.float32)))
    assert not _is_scalar(relax.const(np.ones((1, 8, 1, 1), np.float32)))
    assert not _is_scalar(relax.Var("n", relax.TensorType((tvm.tirx.Var("n", "int64"),), "f32")))


def test_depthwise_windows_too_large_for_exact_float_sums_are_refused():
    """23 x 23 taps of 255 x 128 reach 2^24, where float32 stops holding every integer: such a
    layer must not take the float-FMA depthwise kernel (the lowering leaves it float)."""
    from edgepress.backends.kernels.int8.compute import depthwise_sums_exact

    def window(k: int) -> np.ndarray:
        return np.full((8, 1, k, k), -128, np.int8)

    assert depthwise_sums_exact(window(3), np.zeros(8, np.int64), "uint8")
    assert not depthwise_sums_exact(window(23), np.zeros(8, np.int64), "uint8")
    assert not depthwise_sums_exact(window(3), np.full(8, 1 << 24, np.int64), "uint8")


@pytest.mark.parametrize("keepdims", [True, False])
def test_spatial_mean_of_nhwc_equals_numpy(keepdims):
    """The global average pool the lowering runs on the kernels' NHWC values."""
    from edgepress.backends.kernels.common.nhwc_compute import spatial_mean

    x = np.random.default_rng(4).standard_normal((1, 7, 7, 48)).astype(np.float32)
    got = _run_te(lambda xt: spatial_mean(xt, keepdims=keepdims), [x])
    want = x.mean(axis=(1, 2), keepdims=keepdims)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["max", "min", "sum", "mean"])
@pytest.mark.parametrize("inner", [1000, 48, 7])
def test_column_and_full_reductions_equal_numpy(kind, inner):
    """column_reduce (over the middle axis of [outer, reduced, inner]) and full_reduce (over
    everything, as rows of lanes) for inner axes of whole 16-lane vectors, of 8-lane ones
    (1000 classes) and of none."""
    from edgepress.backends.kernels.common.nhwc_compute import column_reduce, full_reduce

    x = np.random.default_rng(6).standard_normal((2, 9, inner)).astype(np.float32)
    got = _run_te(lambda xt: column_reduce(xt, kind=kind), [x])
    want = getattr(x.astype(np.float64), kind)(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    rows = x.reshape(1, -1, 2) if inner == 7 else x.reshape(1, -1, 16 if inner == 48 else 8)
    got = _run_te(lambda xt: full_reduce(xt, kind=kind, shape=(1, 1)), [rows])
    want = getattr(x.astype(np.float64), kind)(keepdims=True)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_1000_class_mean_is_vectorized_by_8():
    """1000 channels are no whole number of 16-lane vectors: the mean runs 8 lanes at a time
    (as one 1000-lane vector, SqueezeNet's pool ran at 1.2 GFLOP/s: 0.136 ms, now 0.018)."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common.nhwc_compute import spatial_mean
    from edgepress.backends.relax.pipeline import sample_schedules
    from edgepress.backends.targets.description import describe

    x = te.placeholder((1, 13, 13, 1000), "float32", name="x")
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    mod = tvm.IRModule({"main": te.create_prim_func([x, spatial_mean(x, keepdims=False)])})
    rules.register(describe(target))
    mod, done = sample_schedules(mod, target, describe(target), {"main"})
    assert done == {"main"}
    script = mod["main"].script()
    assert "T.vectorized(8)" in script and "T.vectorized(1000)" not in script


def _conv_transpose_net(tmp_path):
    """Conv -> Relu -> ConvTranspose (strides 2 x 3, a 3 x 2 window, uneven pads, output
    padding) -> Relu -> grouped ConvTranspose -> Relu -> ConvTranspose whose pads crop more
    than its window reaches; and calibration data."""
    rng = np.random.default_rng(5)

    inits = [
        random_initializer(rng, "wa", (8, 3, 3, 3)),
        random_initializer(rng, "ba", (8,)),
        random_initializer(rng, "wt", (8, 12, 3, 2)),  # IOHW
        random_initializer(rng, "bt", (12,)),
        random_initializer(rng, "wg", (12, 6, 3, 3)),
        random_initializer(rng, "wc", (12, 4, 2, 2)),
    ]
    transpose = "ConvTranspose"
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node(
            transpose,
            ["ar", "wt", "bt"],
            ["t"],
            strides=[2, 3],
            pads=[1, 0, 0, 1],
            output_padding=[1, 2],
            name="up",
        ),
        helper.make_node("Relu", ["t"], ["tr"]),
        helper.make_node(transpose, ["tr", "wg"], ["g"], pads=[1] * 4, group=2, name="grouped"),
        helper.make_node("Relu", ["g"], ["gr"]),
        helper.make_node(transpose, ["gr", "wc"], ["y"], pads=[2] * 4, name="cropped"),
    ]
    return _saved_with_calibration(tmp_path / "up.onnx", nodes, inits, [1, 4, 14, 21], rng)


@pytest.mark.parametrize("mcpu", [[], ["--mcpu", "znver3"]], ids=["host", "avx2"])
def test_quantized_conv_transpose_runs_integer_kernels_within_one_step_of_onnxruntime(
    cli, tmp_path, mcpu
):
    """A ConvTranspose is the stride-1 conv of its input spread out by its strides, with the
    window flipped: strides that differ per axis, an uneven window and padding, and output
    padding all change the result if any of that is wrong."""
    source, cal = _conv_transpose_net(tmp_path)
    out = tmp_path / "art"
    args = ("--target", "x86_64", "-o", out, "-q", "--quantize", "int8", "--calibration", cal)
    r = cli(source, *args, *mcpu)
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    layers = _layers(report)
    assert layers["up"] == "dot-product"
    assert layers["grouped"] == "float: grouped ConvTranspose (groups=2)"
    assert (
        layers["cropped"]
        == "float: its padding [2, 2, 2, 2] is more than its window reaches (1, 1)"
    )
    _assert_within_one_step_of_onnxruntime(cli, tmp_path, out, report, seed=12)


def test_pack_spreads_the_input_by_the_upsample_factors():
    """pack_activations with upsample: the input's pixels at multiples of the factors, after
    the padding; the zero point everywhere else, channels padded to 4."""
    from edgepress.backends.kernels.int8.compute import pack_activations

    x = np.random.default_rng(6).integers(0, 256, (1, 3, 4, 5), dtype=np.uint8)  # NHWC
    padding, zero_point = (2, 1, 1, 3), 7
    got = _run_te(
        lambda xt: pack_activations(
            xt, padding=padding, in_zero_point=zero_point, act_dtype="uint8", upsample=(2, 3)
        ),
        [x],
    )
    rows, cols = (3 - 1) * 2 + 1, (4 - 1) * 3 + 1
    want = np.full((1, 2 + rows + 1, 1 + cols + 3, 8), zero_point, np.uint8)
    want[:, 2 : 2 + rows : 2, 1 : 1 + cols : 3, :5] = x
    np.testing.assert_array_equal(got, want)


def test_vnni_conv_with_large_weights_prefetches_them_and_stays_exact():
    """A conv whose weights pass PREFETCH_MIN_BYTES (256 -> 64 channels, 3x3: 147 KB) gets the
    weight prefetch put into its tensorized loop (inject_weight_prefetch, as a build does),
    and its results stay those of numpy's integer arithmetic. Its tile's accumulators fit the
    stack: the tile does not allocate a workspace."""
    if "avx512_vnni" not in _host_flags():
        pytest.skip("this CPU has no avx512_vnni")
    import tvm

    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common import tiles
    from edgepress.backends.kernels.int8.compute import pack_weight
    from edgepress.backends.targets.description import describe

    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (1, 256, 7, 7)).astype(np.uint8)
    w = rng.integers(-128, 128, (64, 256, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 64).astype(np.int32)
    multiplier = rng.uniform(1e-6, 1e-5, 64).astype(np.float32)
    arrays = [np.pad(_nhwc(x), ((0, 0), (1, 1), (1, 1), (0, 0))), pack_weight(w, 16)]
    arrays += [bias, multiplier]
    assert arrays[1].nbytes >= tiles.PREFETCH_MIN_BYTES
    mod, target, out = _scheduled_conv(arrays, "icelake-server", "dot_16x4_vnni", out_zero_point=3)
    # as a build does it: the rule table's injector, found by its marker on the scheduled loops
    mod["main"] = rules.inject(mod["main"], describe(target))
    lib = tvm.compile(mod, target=target)
    assert "prefetcht1" in lib.mod.inspect_source("asm")
    assert "load ptr, ptr @__TVMBackendAllocWorkspace" not in lib.mod.inspect_source("ll")
    got = tvm.runtime.empty([int(d) for d in out.shape], "uint8", tvm.cpu())
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], got)
    acc = _conv_reference(x, 0, w, 1, 1)
    want = _requantize_reference(acc, bias.astype(np.int64), multiplier, 3, "uint8")
    np.testing.assert_array_equal(_nchw(got.numpy()), want)


@pytest.mark.parametrize("out_dtype", ["uint8", "int8"])
def test_quantized_add_follows_onnxruntimes_qlinearadd_arithmetic(out_dtype):
    """A residual add's quantize(dequantize(a) + dequantize(b)) as one kernel: a * sa/sc +
    b * sb/sc + (zc - za sa/sc - zb sb/sc) in float32, rounded half to even, saturated (MLAS's
    QLinearAdd), against numpy; within one step where the compiler contracts to an FMA."""
    from edgepress.backends.kernels.int8.compute import quantized_add, quantized_add_terms

    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (1, 5, 6, 32)).astype(np.uint8)
    b = rng.integers(0, 256, (1, 5, 6, 32)).astype(np.uint8)
    terms = quantized_add_terms(0.031, 131, 0.017, 90, 0.02, 7 if out_dtype == "uint8" else -3)
    got = _run_te(
        lambda at, bt: quantized_add(
            at, bt, a_ratio=terms[0], b_ratio=terms[1], constant=terms[2], out_dtype=out_dtype
        ),
        [a, b],
    )
    ra, rb, c = (np.float32(t) for t in terms)
    total = a.astype(np.float32) * ra + b.astype(np.float32) * rb + c
    info = np.iinfo(out_dtype)
    want = np.clip(np.rint(total), info.min, info.max).astype(out_dtype)
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert got.dtype == np.dtype(out_dtype) and (got == info.max).any() and (got == info.min).any()


def _token_matmuls(tmp_path):
    """[1, 37, 48] x [48, 64] -> Relu -> x [64, 10] (a transformer's Linear layers: rank-3
    inputs); (model, calibration data)."""
    rng = np.random.default_rng(14)
    inits = [random_initializer(rng, "w1", (48, 64)), random_initializer(rng, "w2", (64, 10))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        helper.make_node("Relu", ["m1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 37, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 37, 10])],
        inits,
    )
    source = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                  tmp_path / "tokens.onnx")  # fmt: skip
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((16, 1, 37, 48)).astype(np.float32))
    return source, tmp_path / "cal.npz"


def test_token_matmuls_run_integer_kernels_within_the_check(cli, tmp_path):
    """Token MatMuls with per-channel weights [K, N], int8: both run as the dot-product kernel
    over one row of all the tokens, and the build's check against onnxruntime on its QDQ model
    passes."""
    _, report = _int8_without_floor(cli, tmp_path, *_token_matmuls(tmp_path))
    assert _layers(report) == {"fc1": "dot-product", "fc2": "dot-product"}, _layers(report)
    assert report["verification"]["artifact"]["status"] == "ok"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
@pytest.mark.parametrize("net", [_fire_module, _token_matmuls], ids=["fire", "tokens"])
def test_arm64_int8_concat_and_token_matmuls_use_sdot_under_qemu(cli, tmp_path, net):
    """The fire module's requantized channel concat and the token MatMuls, int8 for arm64
    +dotprod: every layer a dot-product kernel, sdot in the library, the artifact within the
    check against onnxruntime on its QDQ model under qemu, and NHWC kept between kernels."""
    source, cal = net(tmp_path)
    out = tmp_path / "arm"
    r = cli(source, "--target", "arm64", "--mattr=+dotprod", "-o", out, "-q", "--quantize",
            "int8", "--calibration", cal, "--fidelity-floor", "0")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    check = report["verification"]["artifact"]
    assert check["status"] == "ok" and "qemu-aarch64" in check["reference"]
    assert set(_layers(report).values()) == {"dot-product"}, _layers(report)
    names = [k["name"] for k in report["kernels"]]
    assert sum("transpose" in n for n in names) <= 2, names
    listing = disassembly(out / "model.so", "aarch64-linux-gnu-objdump")
    assert len(re.findall(r"\bsdot\b", listing)) > 0
