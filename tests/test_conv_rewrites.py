"""Convolutions TVM lowered generically, rewritten into ones edgepress's kernels take:
conv_along_width (1-D convs and k x 1 convs over a width of 1 as 2-D convs along the width;
TVM's conv1d had no kernel of ours, and a width of 1 filled no register tile) and
conv_transpose_as_depth_to_space (a ConvTranspose whose kernel equals its stride as a 1x1 conv
and a DepthToSpace). Equal in onnxruntime, and on the conv kernel in a build."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import save
from tests.pass_checks import check_pass, model, ops, rand


def _conv(x_shape: str, y_shape: str, w: np.ndarray, attributes: str, bias: bool = True) -> object:
    inputs = "x, w, b" if bias else "x, w"
    inits = {"w": w, **({"b": rand(w.shape[0], seed=2)} if bias else {})}
    return model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float{x_shape} x) => (float{y_shape} y) {{ y = Conv <{attributes}> ({inputs}) }}""",
        inits,
    )


@pytest.mark.parametrize(
    ("attributes", "length"),
    [
        ("pads = [2, 1], strides = [2], dilations = [2], group = 2", 18),
        ('auto_pad = "SAME_UPPER"', 37),
        ("kernel_shape = [3]", 35),
    ],
)
def test_1d_conv_becomes_a_2d_conv_along_the_width(attributes, length):
    groups = 2 if "group" in attributes else 1
    proto = _conv("[1, 4, 37]", f"[1, 6, {length}]", rand(6, 4 // groups, 3, seed=1), attributes)
    after = check_pass("conv_along_width", proto, changes=1, atol=0, rtol=0)
    assert ops(after) == {"Reshape": 2, "Conv": 1}
    (conv,) = [n for n in after.graph.node if n.op_type == "Conv"]
    weight = {i.name: list(i.dims) for i in after.graph.initializer}[conv.input[1]]
    assert weight == [6, 4 // groups, 1, 3]


def test_k_by_1_conv_over_a_width_of_1_runs_along_the_width():
    proto = _conv("[2, 4, 30, 1]", "[2, 6, 15, 1]", rand(6, 4, 5, 1, seed=1),
                  "pads = [2, 0, 1, 0], strides = [2, 1]")  # fmt: skip
    check_pass("conv_along_width", proto, changes=1, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "w_shape", "attributes"),
    [
        ("[1, 4, 8, 8]", "[1, 6, 8, 8]", (6, 4, 3, 3), "pads = [1, 1, 1, 1]"),  # a 2-D map
        ("[1, 4, 8, 1]", "[1, 6, 8, 3]", (6, 4, 3, 1), "pads = [1, 1, 1, 1]"),  # padded width
        ("[1, 4, 1, 1]", "[1, 6, 1, 1]", (6, 4, 1, 1), "group = 1"),  # a 1x1 map: nothing to gain
    ],
)
def test_other_convs_are_left_alone(x_shape, y_shape, w_shape, attributes):
    proto = _conv(x_shape, y_shape, rand(*w_shape, seed=1), attributes)
    check_pass("conv_along_width", proto, changes=0)


def test_a_weight_computed_at_run_time_is_left_alone():
    proto = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 9] x, float[6, 4, 3] w) => (float[1, 6, 7] y) { y = Conv (x, w) }"""
    )
    check_pass("conv_along_width", proto, changes=0)


def test_a_built_1d_conv_net_uses_the_direct_conv_kernel(cli, tmp_path):
    """Conv1d -> Relu -> Conv1d, as an audio or byte model has them: built, verified against
    onnxruntime, each conv on edgepress's kernel under its own node name."""
    proto = model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 8, 64] x) => (float[1, 8, 31] y) {
            h = Conv <pads = [2, 2], dilations = [2], kernel_shape = [3]> (x, w1, b1)
            r = Relu (h)
            y = Conv <strides = [2], kernel_shape = [4]> (r, w2, b2)
        }""",
        {"w1": rand(16, 8, 3, seed=1), "b1": rand(16, seed=2), "w2": rand(8, 16, 4, seed=3),
         "b2": rand(8, seed=4)},
    )  # fmt: skip
    for conv, name in zip((n for n in proto.graph.node if n.op_type == "Conv"), ("c1", "c2")):
        conv.name = name
    layers, changed = _built(cli, proto, tmp_path)
    assert {layers[n]["kernel"] for n in ("c1", "c2")} == {"direct"}, layers
    assert changed["conv_along_width"] == 2


def _built(cli, proto, tmp_path) -> tuple[dict, dict]:
    """`proto` built for x86_64 and verified against onnxruntime: the report's lowered conv
    layers by node name, and each pass's change count."""
    result = cli(save(proto, tmp_path / "model.onnx"), "--target", "x86_64", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verification"]["artifact"]["status"] == "ok"
    layers = {layer["node"]: layer for layer in report["float_conv"]["layers"]}
    return layers, {p["name"]: p["changes"] for p in report["passes"]}


# conv_transpose_as_depth_to_space: the other rewrite of a conv TVM lowered generically.


def _conv_transpose(
    stride: int, attributes: str, bias: bool, trim: int = 0, opset: int = 13
) -> object:
    """x[2, 5, 6, 9] -> ConvTranspose(7 channels, stride x stride kernel); `trim`: the output
    rows and columns its pads take off."""
    inputs = "x, w, b" if bias else "x, w"
    return model(
        f"""<ir_version: 8, opset_import: ["" : {opset}]>
        g (float[2, 5, 6, 9] x) => (float[2, 7, {6 * stride - trim}, {9 * stride - trim}] y) {{
            y = ConvTranspose <{attributes}> ({inputs})
        }}""",
        {"w": rand(5, 7, stride, stride, seed=1), **({"b": rand(7, seed=2)} if bias else {})},
    )


@pytest.mark.parametrize(
    ("stride", "bias", "opset"), [(2, True, 13), (3, False, 13), (4, True, 13), (2, True, 9)]
)
def test_conv_transpose_with_kernel_equal_to_stride_is_a_1x1_conv_and_depth_to_space(
    stride, bias, opset
):
    """(DepthToSpace in DCR mode, the only one before opset 11: an opset-9 model's too.)"""
    proto = _conv_transpose(stride, f"strides = [{stride}, {stride}]", bias, opset=opset)
    after = check_pass("conv_transpose_as_depth_to_space", proto, changes=1, atol=1e-5, rtol=1e-5)
    assert ops(after) == {"Conv": 1, "DepthToSpace": 1}


def test_overlapping_or_padded_conv_transposes_are_left_alone():
    padded = _conv_transpose(2, "strides = [2, 2], pads = [1, 1, 1, 1]", True, trim=2)
    check_pass("conv_transpose_as_depth_to_space", padded, changes=0)
    overlapping = model(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 5, 6, 6] x) => (float[1, 7, 13, 13] y) { y = ConvTranspose <strides = [2, 2]> (x, w) }""",
        {"w": rand(5, 7, 3, 3, seed=1)},
    )
    check_pass("conv_transpose_as_depth_to_space", overlapping, changes=0)


def test_a_built_upsampling_head_runs_its_conv_transpose_on_the_direct_conv_kernel(cli, tmp_path):
    proto = _conv_transpose(2, "strides = [2, 2]", True)
    proto.graph.node[0].name = "upsample"
    layers, changed = _built(cli, proto, tmp_path)
    assert layers["upsample"]["kernel"] == "direct", layers
    assert changed["conv_transpose_as_depth_to_space"] == 1
