"""compress bench: both timings and their ratio, in the report, on a tiny model (no speed asserted)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests import builders
from tests.conftest import save


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from edgepress.compiler.cli import main

    folder = tmp_path_factory.mktemp("bench")
    source = save(builders.conv_relu(), folder / "tiny.onnx")
    for target in ("x86_64", "arm64"):
        assert main([str(source), "--target", target, "-o", str(folder / target), "-q"]) == 0
    return folder


def test_bench_json_reports_both_timings_and_ratio(cli, artifacts):
    r = cli("bench", artifacts / "x86_64", "--repeat", "5", "--threads", "1", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["artifact_ms"] > 0 and result["onnxruntime_ms"] > 0
    assert result["speedup"] == pytest.approx(result["onnxruntime_ms"] / result["artifact_ms"])
    assert result["threads"] == 1 and result["repeat"] == 5
    assert result["onnxruntime_model"].endswith("tiny.onnx")


def test_bench_writes_the_report_and_keeps_the_manifest_true(cli, artifacts):
    folder = artifacts / "x86_64"
    r = cli("bench", folder, "--repeat", "3", "--threads", "2")
    assert r.code == 0, r.err
    assert "artifact" in r.out and "onnxruntime" in r.out and "speedup" in r.out
    report = json.loads((folder / "report.json").read_text())
    assert report["bench"]["threads"] == 2
    assert "## Speed" in (folder / "report.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_bench_refuses_emulated_timings(cli, artifacts):
    r = cli("bench", artifacts / "arm64", "--repeat", "3")
    assert r.code == 2 and "emulator" in r.err and "edgepress-run" in r.err


def test_bench_bad_folder_and_options(cli, artifacts, tmp_path):
    r = cli("bench", tmp_path)
    assert r.code == 2 and "not an edgepress artifact folder" in r.err
    r = cli("bench", artifacts / "x86_64", "--threads", "0")
    assert r.code == 2 and "--threads" in r.err
