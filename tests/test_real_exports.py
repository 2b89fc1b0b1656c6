"""Models as exporters write them (opsets 11-21, Constant nodes, shape subgraphs, dynamic dims,
If on shapes) load, fold and build; the artifact matches onnxruntime on the original file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests import builders
from tests.conftest import ort_outputs, save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL


def _build_and_compare(cli, source, tmp_path, shape, name="x"):
    out = tmp_path / "out"
    r = cli(
        source,
        "--target",
        "x86_64",
        "-o",
        out,
        "--input-shape",
        f"{name}={','.join(map(str, shape))}",
        "-q",
    )
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["artifact"]["status"] == "ok"
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    np.savez(tmp_path / "in.npz", **{name: x})
    assert (
        cli("run", out, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz", "-q").code == 0
    )
    got = np.load(tmp_path / "o.npz")
    refs = ort_outputs(source, {name: x})
    for ref, key in zip(refs, got.files):
        np.testing.assert_allclose(got[key], ref, rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL)
    return report


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_shape_subgraph_with_constants_folds(cli, tmp_path, opset):
    model = builders.shape_subgraph(opset=min(opset, 13))
    if opset > 13:
        model = onnx.version_converter.convert_version(model, opset)
    source = save(model, tmp_path / f"shape_op{opset}.onnx")
    report = _build_and_compare(cli, source, tmp_path, (3, 2, 6, 6))
    assert report["passes"][0]["nodes_after"] == 3


def test_if_on_shape_condition(cli, tmp_path):
    source = save(builders.if_on_shape(), tmp_path / "if.onnx")
    report = _build_and_compare(cli, source, tmp_path, (2, 3, 4, 4))
    assert report["passes"][0]["nodes_after"] <= 2  # the If was inlined: Relu, Mul


class _TorchNet:
    """A torch model whose export holds a view(x.size(0), -1) shape subgraph."""

    @staticmethod
    def make():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 6, 3, padding=1)
                self.bn = nn.BatchNorm2d(6)
                self.fc = nn.Linear(6 * 5 * 5, 4)

            def forward(self, x):
                y = torch.relu(self.bn(self.conv(x)))
                return self.fc(y.view(y.size(0), -1))

        torch.manual_seed(0)
        return Net().eval()


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_torchscript_export_dynamic_batch(cli, tmp_path, opset):
    import torch

    path = tmp_path / f"torch_op{opset}.onnx"
    torch.onnx.export(
        _TorchNet.make(),
        (torch.randn(2, 3, 5, 5),),
        str(path),
        opset_version=opset,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "Shape" in ops or "Flatten" in ops or "Reshape" in ops
    _build_and_compare(cli, path, tmp_path, (4, 3, 5, 5))


def test_dynamo_export(cli, tmp_path):
    import torch

    path = tmp_path / "dynamo.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        _TorchNet.make(),
        (torch.randn(2, 3, 5, 5),),
        dynamo=True,
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes={"x": {0: batch}},
    )
    program.save(str(path), external_data=False)
    assert onnx.load(path).opset_import[0].version >= 18
    _build_and_compare(cli, path, tmp_path, (3, 3, 5, 5))
