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


def test_bench_writes_its_own_file_and_leaves_the_artifact_as_built(cli, artifacts):
    """The figures go to bench.json/bench.md; report.json, report.md and every file the
    manifest hashes are byte for byte what the build wrote."""
    folder = artifacts / "x86_64"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    r = cli("bench", folder, "--repeat", "3", "--threads", "2")
    assert r.code == 0, r.err
    assert "artifact" in r.out and "onnxruntime" in r.out and "speedup" in r.out
    bench = json.loads((folder / "bench.json").read_text())
    assert bench["bench"]["threads"] == 2 and bench["machine"]
    assert "## Speed" in (folder / "bench.md").read_text()
    for name, data in before.items():
        if name not in ("bench.json", "bench.md", "profile.png"):
            assert (folder / name).read_bytes() == data, name
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


def test_profile_times_every_kernel_of_the_build(cli, artifacts):
    folder = artifacts / "x86_64"
    r = cli("bench", folder, "--repeat", "5", "--threads", "1", "--json", "--profile")
    assert r.code == 0, r.err
    profile = json.loads(r.out)["kernel_profile"]
    kernels = json.loads((folder / "report.json").read_text())["kernels"]
    rows = {row["name"]: row for row in profile["rows"]}
    assert {k["name"] for k in kernels} <= set(rows)
    assert all(rows[k["name"]]["calls"] >= 1 and rows[k["name"]]["ms"] > 0 for k in kernels)
    assert sum(row["share"] for row in profile["rows"]) == pytest.approx(1.0)
    assert "## Kernel profile" in (folder / "bench.md").read_text()
    assert "profile.png" in (folder / "bench.md").read_text()
    from PIL import Image

    assert Image.open(folder / "profile.png").size[1] > 100


def test_profile_picture_draws_measured_and_roofline_time_to_scale(tmp_path):
    """Each bar's length is its kernel's time and the dark bar inside it its roofline time, on
    one linear scale; rows past MAX_ROWS are summed into one."""
    from PIL import Image

    from edgepress.compiler import profile_plot as plot
    from edgepress.compiler.kernel_profile import VM_OVERHEAD

    rows = [
        {"name": "conv", "ms": 8.0, "roofline_ms": 2.0, "peak_fraction": 0.25},
        {"name": VM_OVERHEAD, "ms": 1.0, "roofline_ms": None, "peak_fraction": None},
        {"name": "add", "ms": 4.0, "roofline_ms": 3.0, "peak_fraction": 0.75},
    ]
    rows += [{"name": f"k{i}", "ms": 0.01, "roofline_ms": 0.005} for i in range(40)]
    path = plot.write_profile_plot({"rows": rows}, tmp_path / "p.png", "title")
    image = Image.open(path).convert("RGB")
    assert image.size[1] == plot.TOP + plot.ROW * plot.MAX_ROWS + 40  # 43 rows drawn as 30

    def run_of(y: int, colour: tuple) -> int:
        return sum(image.getpixel((x, y)) == colour for x in range(plot.LEFT, plot.WIDTH))

    def middle(i: int) -> int:
        return plot.TOP + i * plot.ROW + plot.ROW // 2

    edge = lambda i: plot.TOP + i * plot.ROW + 4  # above the roofline bar  # noqa: E731
    span = plot.bar_width(8.0, 8.0)
    assert abs(run_of(edge(0), plot.MEASURED) - span) <= 2  # slowest first, full width
    assert abs(run_of(middle(0), plot.ROOFLINE) - span / 4) <= 2
    assert abs(run_of(edge(1), plot.MEASURED) - span / 2) <= 2  # "add", 4 of 8 ms
    assert abs(run_of(middle(1), plot.ROOFLINE) - span * 3 / 8) <= 2
    assert run_of(edge(2), plot.OVERHEAD) == pytest.approx(span / 8, abs=2)


def test_kernel_rows_rates_and_roofline_from_flops_and_times():
    from edgepress.compiler.kernel_profile import VM_OVERHEAD, kernel_rows

    kernels = [
        {"name": "conv", "flops": 2e9, "schedule": "tuned"},  # per call: 4 GFLOP in 2 calls
        {"name": "add", "flops": 1e6, "schedule": "sampled"},
    ]
    timings = {"conv": (2, 0.040), "add": (1, 0.001), "vm.builtin.alloc_storage": (3, 0.009)}
    rows = {r.name: r for r in kernel_rows(timings, kernels, peak_gflops=200.0)}
    conv = rows["conv"]
    assert conv.calls == 2 and conv.ms == pytest.approx(40.0) and conv.gflop == pytest.approx(4.0)
    assert conv.gflops == pytest.approx(100.0) and conv.peak_fraction == pytest.approx(0.5)
    assert conv.roofline_ms == pytest.approx(20.0) and conv.share == pytest.approx(0.8)
    assert rows[VM_OVERHEAD].calls == 3 and rows[VM_OVERHEAD].ms == pytest.approx(9.0)


def test_int8_dot_product_kernels_are_held_to_their_instructions_peak():
    """vpdpbusd does 4 multiply-adds per lane: at 4x an fp32 FMA's rate an int8 conv is at
    100% of its peak, not 400%; the float-FMA depthwise kernel keeps the fp32 peak."""
    from edgepress.compiler.kernel_profile import kernel_rows

    kernels = [
        {"name": "fused_dequantize_conv2d_int82_add", "flops": 8e9, "schedule": "sampled"},
        {"name": "depthwise_conv2d_int810", "flops": 2e9, "schedule": "sampled"},
        {"name": "integer_matmul11_prepacked", "flops": 8e9, "schedule": "sampled"},
    ]
    timings = {
        "fused_dequantize_conv2d_int82_add": (1, 0.010),
        "depthwise_conv2d_int810": (1, 0.010),
        "integer_matmul11_prepacked": (1, 0.010),  # a dynamic quantization's (vpdpbusd too)
    }
    rows = {r.name: r for r in kernel_rows(timings, kernels, peak_gflops=200.0, dot_factor=4)}
    assert rows["fused_dequantize_conv2d_int82_add"].peak_fraction == pytest.approx(1.0)
    assert rows["integer_matmul11_prepacked"].peak_fraction == pytest.approx(1.0)
    assert rows["depthwise_conv2d_int810"].peak_fraction == pytest.approx(1.0)
    assert rows["fused_dequantize_conv2d_int82_add"].roofline_ms == pytest.approx(10.0)


@pytest.mark.parametrize(
    "flags, lanes",
    [("fma avx2 avx512f", 16), ("sse4_2 fma avx2", 8), ("sse4_2 avx", 4)],
)
def test_cpu_peak_from_the_instruction_sets(monkeypatch, flags, lanes):
    from edgepress.backends.runtime import cpu_peak as peak_module

    monkeypatch.setattr(peak_module, "_cpuinfo", lambda: f"flags\t: {flags}\ncpu MHz : 2500.0\n")
    monkeypatch.setattr(peak_module.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(peak_module.Path, "read_text", _no_cpufreq(peak_module.Path.read_text))
    monkeypatch.setenv(peak_module.FMA_ENV, "2")
    peak = peak_module.cpu_peak()
    assert peak.lanes == lanes and peak.ghz == pytest.approx(2.5)
    assert peak.gflops == pytest.approx(peak.cores * 2 * lanes * 2 * 2.5)


@pytest.mark.skipif(
    __import__("platform").machine() != "x86_64" or __import__("shutil").which("cc") is None,
    reason="the instruction-rate loop is x86-64 assembly built with cc",
)
def test_measured_peak_counts_what_one_core_runs():
    """The measured peak is the FMA instructions per ns of one core x lanes x 2 x cores, a
    figure between a tenth and four times the estimate (clocks of 0.3-10 GHz at 1-2 FMA
    units); the int8 peak is that of the dot-product instruction the CPU has."""
    from edgepress.backends.runtime.cpu_peak import cpu_peak

    measured, estimated = cpu_peak(measure=True), cpu_peak()
    assert measured.fma_per_ns is not None and 0.3 < measured.fma_per_ns < 20
    assert measured.gflops == pytest.approx(
        measured.cores * measured.fma_per_ns * measured.lanes * 2
    )
    assert 0.1 * estimated.gflops < measured.gflops < 4 * estimated.gflops
    assert "measured" in measured.describe()
    for intrinsic in measured.dot_gops or {}:  # vpdpbusd 4 multiply-adds a lane, vpmaddwd 2
        assert 0.5 < measured.dot_factor(intrinsic) < 16


def test_measured_peak_falls_back_to_the_estimate(monkeypatch):
    from edgepress.backends.runtime import cpu_peak as peak_module
    from edgepress.backends.runtime import instruction_rate

    monkeypatch.setattr(instruction_rate, "instructions_per_ns", lambda instructions: None)
    peak = peak_module.cpu_peak(measure=True)
    assert peak.fma_per_ns is None and peak.dot_factor("dot_16x4_vnni") is None
    assert peak.gflops == pytest.approx(peak_module.cpu_peak().gflops)


def _no_cpufreq(read_text):
    def read(self, *args, **kwargs):
        if "cpufreq" in str(self):
            raise OSError("no cpufreq here")
        return read_text(self, *args, **kwargs)

    return read


def test_only_the_targets_tensor_intrinsics_are_imported():
    """CUDA's intrinsics cost 18 s to import; an x86 build must not pay for them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tvm\n"
        "from edgepress.backends.kernels.common import tensor_intrinsics as t\n"
        "from edgepress.backends.targets.description import describe\n"
        "target = tvm.target.Target({'kind': 'llvm', 'mtriple': 'x86_64-linux-gnu'})\n"
        "t.load(describe(target).intrinsic_families)\n"
        "import tvm.s_tir.tensor_intrin\n"
        "from tvm.s_tir import TensorIntrin\n"
        "assert TensorIntrin.get('dot_16x4_avx512') is not None\n"
        "assert 'tvm.s_tir.tensor_intrin.cuda' not in sys.modules\n"
        "t.load(('cuda',))\n"
        "assert 'tvm.s_tir.tensor_intrin.cuda' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
