"""The default pipeline on exported models: BatchNorm left by the exporter is folded, the build
verifies against onnxruntime on the source model, and the report counts what each pass did."""

from __future__ import annotations

import json

import numpy as np

from tests.pass_checks import model, ops, rand


def _digits_with_batchnorm(path):
    import torch

    from edgepress.models.digits import DigitsCNN
    from edgepress.models.export import export_onnx, randomize_batchnorm

    net = DigitsCNN()
    randomize_batchnorm(net, torch.Generator().manual_seed(0))
    return export_onnx(net, torch.zeros(1, 1, 8, 8), path, keep_batchnorm=True)


def test_default_pipeline_folds_exported_batchnorm_and_verifies(cli, tmp_path):
    import onnx

    source = _digits_with_batchnorm(tmp_path / "digits_bn.onnx")
    bn = ops(onnx.load(source))["BatchNormalization"]
    assert bn == 3
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out", "-q")
    assert r.code == 0, r.err  # the artifact and model.onnx both match onnxruntime on the source
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    passes = {p["name"]: p for p in report["passes"]}
    assert passes["fuse_conv_bn"]["changes"] == bn
    assert passes["fuse_conv_bn"]["nodes_after"] == passes["fuse_conv_bn"]["nodes_before"] - bn
    assert "BatchNormalization" not in ops(onnx.load(tmp_path / "out" / "model.onnx"))


def test_an_input_removed_as_unused_is_not_asked_of_the_artifact(cli, tmp_path):
    source = tmp_path / "unused.onnx"
    import onnx

    onnx.save(
        model(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1,3,6,6] x, float[4] extra) => (float[1,4,4,4] y) {
              c = Conv (x, w)
              y = Relu (c)
            }
            """,
            {"w": rand(4, 3, 3, 3)},
        ),
        source,
    )
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "out", "-q")
    assert r.code == 0, r.err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["x"]
    np.savez(tmp_path / "in.npz", x=np.ones((1, 3, 6, 6), np.float32))
    r = cli("run", tmp_path / "out", "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")
    assert r.code == 0, r.err
    r = cli("bench", tmp_path / "out", "--repeat", "2")
    assert r.code == 0, r.err
