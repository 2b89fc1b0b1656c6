"""Resize and ConvTranspose, the ops of detector heads, over the attribute combinations
exporters write (PyTorch's interpolate, Paddle's and TensorFlow's resizes; transposed convs with
strides, pads, output padding, groups, dilation, one output channel): each built for x86_64 and
compared with onnxruntime on random inputs by the build's own verification and by a run on
other inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ort_outputs, save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL

X_SHAPE = (1, 3, 5, 7)

# (mode, coordinate_transformation_mode, nearest_mode or cubic_coeff_a, scales or sizes, opset):
# who writes it
RESIZES = [
    ("nearest", "asymmetric", "floor", (2.0, 2.0), 11),  # PyTorch / Paddle nearest
    ("nearest", "asymmetric", "floor", (0.5, 0.5), 13),  # downscale
    ("nearest", "half_pixel", "round_prefer_ceil", (2.0, 3.0), 13),  # TF half_pixel_centers
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_floor", (2.0, 2.0), 11),
    ("nearest", "align_corners", "round_prefer_floor", (8, 11), 13),  # sizes
    ("nearest", "asymmetric", "ceil", (1.5, 1.5), 13),  # 7 x 1.5 is not whole: gathered
    ("nearest", "half_pixel", "round_prefer_floor", (1.5, 2.5), 13),
    ("nearest", "pytorch_half_pixel", "floor", (0.6, 1.3), 11),
    ("linear", "half_pixel", None, (2.0, 2.0), 13),  # bilinear, align_corners=False
    ("linear", "align_corners", None, (2.0, 2.0), 13),  # bilinear, align_corners=True
    ("linear", "pytorch_half_pixel", None, (2.0, 2.0), 11),
    ("linear", "asymmetric", None, (3.0, 2.0), 13),
    ("linear", "half_pixel", None, (9, 4), 18),  # sizes, down in width
    ("cubic", "half_pixel", -0.75, (2.0, 2.0), 13),  # PyTorch bicubic
    ("cubic", "align_corners", -0.5, (2.0, 2.0), 11),
    ("nearest", "asymmetric", "floor", (2.0, 2.0), 10),  # opset 10: scales only, no modes
]


def _resize_model(mode, ctm, extra, target, opset) -> onnx.ModelProto:
    attrs = {"mode": mode}
    inputs = ["x"]
    inits = []
    if opset >= 11:
        attrs["coordinate_transformation_mode"] = ctm
        if mode == "nearest":
            attrs["nearest_mode"] = extra
        elif mode == "cubic":
            attrs["cubic_coeff_a"] = extra
        inputs.append("" if opset >= 13 else "roi")
        if opset < 13:
            inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
    sizes = all(isinstance(v, int) for v in target)
    if sizes:
        inputs += ["", "sizes"]
        inits.append(numpy_helper.from_array(np.array([*X_SHAPE[:2], *target], np.int64), "sizes"))
        out = [*X_SHAPE[:2], *target]
    else:
        inputs.append("scales")
        inits.append(numpy_helper.from_array(np.array([1, 1, *target], np.float32), "scales"))
        out = [*X_SHAPE[:2], *(int(np.floor(d * s)) for d, s in zip(X_SHAPE[2:], target))]
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], name="resize", **attrs)],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _build_and_check(cli, model: onnx.ModelProto, tmp_path, x_shape) -> dict:
    source = save(model, tmp_path / "m.onnx")
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "-q")
    assert r.code == 0, r.err
    check = json.loads((out / "report.json").read_text())["verification"]["artifact"]
    assert check["status"] == "ok" and all(o["note"] is None for o in check["outputs"])
    x = np.random.default_rng(5).standard_normal(x_shape).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz", "-q").code == 0
    got = np.load(tmp_path / "o.npz")
    want = ort_outputs(source, {"x": x})[0]
    np.testing.assert_allclose(got[got.files[0]], want, rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL)
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("mode, ctm, extra, target, opset", RESIZES,
                         ids=["-".join(map(str, r)) for r in RESIZES])  # fmt: skip
def test_resize_matches_onnxruntime(cli, tmp_path, mode, ctm, extra, target, opset):
    report = _build_and_check(cli, _resize_model(mode, ctm, extra, target, opset), tmp_path, X_SHAPE)
    gathered = {p["name"]: p["changes"] for p in report["passes"]}["gather_nearest_resize"]
    whole = all(isinstance(t, int) or (d * t).is_integer() for d, t in zip(X_SHAPE[2:], target))
    assert gathered == (0 if whole or mode != "nearest" else 1)


# (in channels, out channels per group, kernel, strides, pads, output_padding, group, dilation)
CONV_TRANSPOSES = [
    (8, 1, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 1, (1, 1)),  # DB head's last layer
    (8, 4, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 1, (1, 1)),
    (6, 3, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 1)),  # PyTorch's "same" upsampling
    (4, 2, (4, 4), (2, 2), (1, 1, 1, 1), (0, 0), 1, (1, 1)),  # DCGAN-style
    (4, 2, (3, 2), (3, 2), (0, 1, 2, 0), (2, 1), 1, (1, 1)),  # uneven everything
    (6, 2, (3, 3), (2, 2), (1, 1, 1, 1), (0, 0), 3, (1, 1)),  # grouped
    (4, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4, (1, 1)),  # depthwise
    (4, 3, (3, 3), (1, 1), (2, 2, 2, 2), (0, 0), 1, (2, 2)),  # dilated
]


def _conv_transpose_model(cin, cout, kernel, strides, pads, output_padding, group, dilation):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((cin, cout, *kernel)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout * group).astype(np.float32)
    x_shape = (1, cin, 5, 6)
    out = [
        s * (d - 1) + op + ((k - 1) * dl + 1) - p0 - p1
        for d, s, op, k, dl, p0, p1 in zip(
            x_shape[2:], strides, output_padding, kernel, dilation, pads[:2], pads[2:]
        )
    ]
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=kernel,
                             strides=strides, pads=pads, output_padding=output_padding,
                             group=group, dilations=dilation),  # fmt: skip
        ],
        "conv_transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout * group, *out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), x_shape


@pytest.mark.parametrize("case", CONV_TRANSPOSES, ids=[str(i) for i in range(len(CONV_TRANSPOSES))])
def test_conv_transpose_matches_onnxruntime(cli, tmp_path, case):
    model, x_shape = _conv_transpose_model(*case)
    _build_and_check(cli, model, tmp_path, x_shape)
