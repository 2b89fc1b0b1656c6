"""Bundled models: the listing, and the digits CNN with disjoint calibration and eval data."""

from __future__ import annotations

import numpy as np
import onnx

from tests.conftest import ort_outputs


def test_list(cli):
    r = cli("example", "--list")
    assert r.code == 0
    names = [line.split()[0] for line in r.out.splitlines()]
    assert names == ["resnet18", "mobilenetv2", "vit_tiny", "digits"]


def test_unknown_example(cli, tmp_path):
    r = cli("example", "vgg", "-o", tmp_path)
    assert r.code == 2 and "unknown example 'vgg'" in r.err


def test_digits_is_trained_and_its_data_disjoint(cli, tmp_path):
    from edgepress.models.digits import digits_splits

    r = cli("example", "digits", "-o", tmp_path)
    assert r.code == 0, r.err
    model = tmp_path / "digits.onnx"
    onnx.checker.check_model(onnx.load(model), full_check=True)
    cal, ev = np.load(tmp_path / "calibration.npz"), np.load(tmp_path / "eval.npz")
    assert cal.files == ["input"] and sorted(ev.files) == ["input", "label"]
    assert cal["input"].shape[1:] == (1, 8, 8) and len(ev["label"]) == len(ev["input"])
    train = digits_splits()["train"][0]
    rows = {arr.tobytes() for arr in train}
    # sklearn's digits hold a few exact duplicate images; the split is by index, so only such
    # duplicates may show up on both sides.
    assert sum(x.tobytes() in rows for x in ev["input"]) <= 5
    # Real accuracy on held-out data, measured by onnxruntime on the exported file.
    correct = sum(
        int(ort_outputs(model, {"input": x[None]})[0].argmax() == y)
        for x, y in zip(ev["input"], ev["label"])
    )
    assert correct / len(ev["label"]) >= 0.95
    # The file is not overwritten without --force.
    r = cli("example", "digits", "-o", tmp_path)
    assert r.code == 2 and "--force" in r.err


def test_resnet18_and_mobilenetv2_export_match_torch(cli, tmp_path):
    """The written file computes what the PyTorch definition computes."""
    import torch

    from edgepress.models.mobilenetv2 import mobilenetv2
    from edgepress.models.resnet import resnet18

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for name, make in (("resnet18", resnet18), ("mobilenetv2", mobilenetv2)):
        assert cli("example", name, "-o", tmp_path).code == 0
        path = tmp_path / f"{name}.onnx"
        onnx.checker.check_model(onnx.load(path))
        with torch.no_grad():
            expected = make()(torch.from_numpy(x)).numpy()
        (got,) = ort_outputs(path, {"input": x})
        assert got.shape == (1, 1000)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_vit_tiny_exports_what_torch_computes_and_builds_on_edgepress_kernels(cli, tmp_path):
    """The bundled transformer's file computes what its PyTorch definition computes, and its
    fp32 build runs every Linear as the matmul kernel and attention as the batched one (the
    build checks the artifact against onnxruntime)."""
    import json

    import torch

    from edgepress.models.vit import vit_tiny

    assert cli("example", "vit_tiny", "-o", tmp_path).code == 0
    path = tmp_path / "vit_tiny.onnx"
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = vit_tiny()(torch.from_numpy(x)).numpy()
    (got,) = ort_outputs(path, {"input": x})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "out", "-q")
    assert r.code == 0, r.err
    layers = json.loads((tmp_path / "out" / "report.json").read_text())["float_conv"]["layers"]
    kinds = [layer["kernel"] for layer in layers]
    assert None not in kinds and kinds.count("batched") == 8, kinds
