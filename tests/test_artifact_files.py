"""manifest.json and report.json/report.md: contents checked against the files and the model."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from tests import builders
from tests.conftest import save


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgepress.compiler.cli import main

    folder = tmp_path_factory.mktemp("artifact")
    source = save(builders.shape_subgraph(opset=13), folder / "model_in.onnx")
    out = folder / "out"
    assert (
        main(
            [str(source), "--target", "x86_64", "-o", str(out), "--input-shape", "x=2,2,6,6", "-q"]
        )
        == 0
    )
    return source, out


def test_manifest_describes_the_artifact(artifact):
    source, out = artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": [2, 2, 6, 6], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "y", "shape": [2, 5], "dtype": "float32"}]
    assert manifest["target"]["name"] == "x86_64"
    assert manifest["target"]["tvm"]["kind"] == "llvm"
    for dist in ("edgepress", "apache-tvm", "onnx", "onnxruntime"):
        assert manifest["versions"][dist]
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()


def test_model_onnx_is_folded_static_and_runnable(artifact):
    _, out = artifact
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Reshape", "Gemm"]  # the shape subgraph is gone
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 2, 6, 6]


def test_report_records_sizes_passes_verification_and_time(artifact):
    _, out = artifact
    report = json.loads((out / "report.json").read_text())
    assert report["sizes"]["model.onnx"] == (out / "model.onnx").stat().st_size
    assert report["sizes"]["model.so"] == (out / "model.so").stat().st_size
    from edgepress.passes import DEFAULT_PIPELINE

    assert [p["name"] for p in report["passes"]] == DEFAULT_PIPELINE
    fold = report["passes"][0]
    assert (fold["nodes_before"], fold["nodes_after"]) == (9, 3)
    assert all(p["seconds"] >= 0 and p["param_bytes_after"] > 0 for p in report["passes"])
    check = report["verification"]["artifact"]
    assert check["status"] == "ok"
    (y,) = check["outputs"]
    assert y["name"] == "y" and y["max_abs_err"] < 1e-3 and y["cosine"] > 0.9999
    assert y["max_rel_err"] is not None
    assert report["timings_s"]["total"] > 0
    md = (out / "report.md").read_text()
    assert "| fold_constants | 6 | 9 | 3 |" in md
    assert "Status: **ok**" in md
