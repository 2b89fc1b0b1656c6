"""A build per target of a tiny model; outputs compared with onnxruntime by the test itself."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from tests import builders
from tests.conftest import ort_outputs, save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL, WINOGRAD_ERROR_OF_SCALE


@pytest.fixture
def tiny(tmp_path):
    return save(builders.conv_relu(), tmp_path / "tiny.onnx")


def _run_artifact(cli, artifact, tmp_path, x):
    np.savez(tmp_path / "in.npz", x=x)
    result = cli("run", artifact, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert result.code == 0, result.err
    return np.load(tmp_path / "out.npz")["y"]


@pytest.mark.parametrize("target", ["x86_64", "arm64"])
def test_cpu_target_builds_verifies_and_runs(cli, tiny, tmp_path, target):
    out = tmp_path / f"art-{target}"
    result = cli(tiny, "--target", target, "-o", out)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok"
    assert report["verification"]["artifact"]["status"] == "ok"
    if target == "arm64":
        assert "qemu-aarch64" in report["verification"]["artifact"]["reference"]
        assert (out / "model.so").read_bytes()[18:20] == struct.pack("<H", 183)  # EM_AARCH64
        assert (out / "runtime" / "edgepress-run").is_file()
    else:
        assert (out / "model.so").read_bytes()[18:20] == struct.pack("<H", 62)  # EM_X86_64
    # Independent of the build's own verification: run the artifact and compare here.
    x = np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = _run_artifact(cli, out, tmp_path, x)
    (ref,) = ort_outputs(tiny, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_target_embeds_device_code(cli, tiny, tmp_path):
    from edgepress.backends.runtime import cuda_codegen

    out = tmp_path / "art-cuda"
    result = cli(tiny, "--target", "cuda", "--arch", "sm_80", "-o", out)
    assert result.code == 0, result.err
    library = (out / "model.so").read_bytes()
    assert cuda_codegen.FATBIN_MAGIC in library
    assert b"__global__" not in library  # device code compiled, not CUDA C source
    report = json.loads((out / "report.json").read_text())
    status = report["verification"]["artifact"]["status"]
    if cuda_codegen.gpu_missing():
        assert status.startswith("not verified: no GPU")
        assert report["status"] != "ok"
    else:
        assert status == "ok"


def test_cuda_rejects_malformed_arch(cli, tiny, tmp_path):
    result = cli(tiny, "--target", "cuda", "--arch", "ampere", "-o", tmp_path / "a")
    assert result.code == 2
    assert "--arch 'ampere'" in result.err


WINOGRAD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,16,24,24] x) => (float[1,16,12,12] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r = Relu (a)
  y = Conv <pads=[1,1,1,1], strides=[2,2]> (r, w2, b2)
}
"""


@pytest.mark.parametrize("target", ["x86_64", "arm64"])
def test_winograd_build_matches_onnxruntime(cli, tmp_path, target):
    from tests.pass_checks import model, rand

    proto = model(
        WINOGRAD,
        {"w1": rand(16, 16, 3, 3, seed=1), "b1": rand(16, seed=2),
         "w2": rand(16, 16, 3, 3, seed=3), "b2": rand(16, seed=4)},
    )  # fmt: skip
    source = save(proto, tmp_path / "w.onnx")
    out = tmp_path / "art"
    result = cli(source, "--target", target, "-o", out, "--winograd")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    names = [k["name"] for k in report["kernels"]]
    # The stride-1 conv (36 output tiles) became Winograd; the strided one stays direct.
    assert sum("winograd" in n for n in names) == 1 and any("conv2d" in n for n in names)
    x = np.random.default_rng(5).standard_normal((1, 16, 24, 24)).astype(np.float32)
    got = _run_artifact(cli, out, tmp_path, x)
    (want,) = ort_outputs(source, {"x": x})
    assert np.abs(got - want).max() <= WINOGRAD_ERROR_OF_SCALE * np.abs(want).max()


@pytest.mark.parametrize(
    ("cpu", "added"),
    [("rocketlake", ["+amx-tile", "+amx-int8"]), ("sapphirerapids", None)],
)
def test_host_amx_features_are_added_only_where_the_cpu_name_lacks_them(
    monkeypatch, cpu, added
):
    """An AMX host that LLVM names after a CPU without AMX (a VM's "rocketlake") gets the
    features; one whose name has them keeps its plain target, whose hash keys the shipped
    tuning records."""
    from edgepress.backends.targets import x86_64
    from edgepress.backends.targets.base import TargetOptions

    monkeypatch.setattr(x86_64, "host_cpu_name", lambda: cpu)
    monkeypatch.setattr(x86_64, "host_amx", lambda: True)
    assert x86_64.tvm_target(TargetOptions()).get("mattr") == added
    # A user's own choice stays: -amx-int8 is not overruled.
    chosen = x86_64.tvm_target(TargetOptions(mattr=("-amx-int8",)))["mattr"]
    assert "-amx-int8" in chosen and "+amx-int8" not in chosen
