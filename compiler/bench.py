"""`compress bench`: the artifact against onnxruntime, same inputs, same thread count, one run.

Both are timed in alternating rounds (onnxruntime, artifact, onnxruntime, ...) after warm-up,
so drift on a shared machine hits both alike. onnxruntime runs the source model (the one the
artifact was built from, if it is still there unchanged; else the artifact's model.onnx) with
its graph optimizations on, as users run it. speedup = onnxruntime_ms / artifact_ms.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepress.backends.targets import get_backend
from edgepress.backends.runtime.threads import use_threads
from edgepress.compiler import report as reports
from edgepress.compiler.errors import UsageError
from edgepress.compiler.input_values import fixed_from_json
from edgepress.compiler.inputs import complete_feeds, random_inputs
from edgepress.compiler.manifest import read_manifest
from edgepress.compiler.model_io import sha256_file
from edgepress.compiler.shapes import TensorSpec

log = logging.getLogger(__name__)

ROUNDS = 5


@dataclass
class BenchResult:
    artifact_ms: float
    artifact_p90_ms: float
    onnxruntime_ms: float
    onnxruntime_p90_ms: float
    speedup: float
    threads: int
    repeat: int
    warmup: int
    runner: str
    onnxruntime_model: str
    # int8 artifacts: onnxruntime on the int8 model.onnx too (its own integer kernels), timed in
    # the same rounds; speedup_vs_onnxruntime_int8 = onnxruntime_int8_ms / artifact_ms.
    onnxruntime_int8_ms: float | None = None
    speedup_vs_onnxruntime_int8: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _p90(samples: list[float]) -> float:
    return float(np.percentile(samples, 90))


def _reference_model(artifact: Path, manifest: dict) -> Path:
    source = Path(manifest["source"]["path"])
    upgrade = manifest["source"].get("opset_upgrade")
    if upgrade and upgrade["reference"] == "converted":  # onnxruntime cannot run the file itself
        return artifact / "model.onnx"
    if source.is_file() and sha256_file(source) == manifest["source"]["sha256"]:
        return source
    log.warning(
        "source model %s is gone or changed; timing onnxruntime on %s/model.onnx", source, artifact
    )
    return artifact / "model.onnx"


def _ort_session(model: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def bench(
    artifact: Path, *, threads: int, repeat: int, warmup: int = 3, seed: int = 0
) -> BenchResult:
    if threads < 1 or repeat < 1 or warmup < 0:
        raise UsageError("--threads and --repeat must be at least 1, --warmup at least 0")
    manifest = read_manifest(artifact)
    backend = get_backend(manifest["target"]["name"])
    runner = backend.runner(artifact)
    if isinstance(runner, str):
        raise UsageError(f"{artifact}: cannot time a {backend.name} artifact here: {runner}")
    if runner.emulated:
        raise UsageError(
            f"{artifact}: a {backend.name} artifact runs under an emulator here, whose times mean "
            "nothing; time it on the device with runtime/edgepress-run ... --repeat N"
        )
    specs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
    feeds = random_inputs(specs, seed)
    ordered = [feeds[s.name] for s in specs]
    reference = _reference_model(artifact, manifest)
    session = _ort_session(reference, threads)
    feeds = complete_feeds(session, {**feeds, **fixed_from_json(manifest.get("fixed_inputs"))})
    int8 = _ort_session(artifact / "model.onnx", threads) if _is_int8(artifact) else None
    use_threads(threads)

    def time_ort(s, samples: list[float], n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            s.run(None, feeds if s is session else {k: feeds[k] for k in _names(s)})
            samples.append((time.perf_counter() - start) * 1e3)

    for _ in range(warmup):
        time_ort(session, [], 1)
        if int8 is not None:
            time_ort(int8, [], 1)
        runner.run(ordered)
    ort_samples: list[float] = []
    int8_samples: list[float] = []
    art_samples: list[float] = []
    per_round = max(1, -(-repeat // ROUNDS))
    while len(art_samples) < repeat:
        n = min(per_round, repeat - len(art_samples))
        time_ort(session, ort_samples, n)
        if int8 is not None:
            time_ort(int8, int8_samples, n)
        art_samples += [s * 1e3 for s in runner.time(ordered, n)]
    art_ms, ort_ms = statistics.median(art_samples), statistics.median(ort_samples)
    int8_ms = statistics.median(int8_samples) if int8_samples else None
    return BenchResult(
        art_ms,
        _p90(art_samples),
        ort_ms,
        _p90(ort_samples),
        ort_ms / art_ms,
        threads,
        repeat,
        warmup,
        runner.description,
        str(reference),
        int8_ms,
        int8_ms / art_ms if int8_ms else None,
    )


def _is_int8(artifact: Path) -> bool:
    import json

    report = json.loads((artifact / "report.json").read_text())
    return bool(report.get("quantization"))


def _names(session) -> list[str]:
    return [i.name for i in session.get_inputs()]


def profile_kernels(artifact: Path, *, threads: int, repeat: int, seed: int = 0) -> dict:
    """Each kernel's time per run (VM instrument hook), FLOP rate and share, against the peak
    of `threads` cores; a JSON-ready dict with "rows", "peak" and "markdown"."""
    import json

    from edgepress.backends.runtime.cpu_peak import cpu_peak
    from edgepress.compiler.kernel_profile import DOT_PEAK_FACTOR, kernel_rows, render

    manifest = read_manifest(artifact)
    runner = get_backend(manifest["target"]["name"]).runner(artifact)
    if isinstance(runner, str) or not hasattr(runner, "profile") or runner.emulated:
        raise UsageError(f"{artifact}: --profile needs an artifact that runs in this process")
    report = json.loads((artifact / "report.json").read_text())
    kernels = report.get("kernels") or []
    if not kernels:
        raise UsageError(f"{artifact}: its report lists no kernels (built by an older edgepress)")
    specs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
    feeds = random_inputs(specs, seed)
    use_threads(threads)
    timings = runner.profile([feeds[s.name] for s in specs], repeat)
    peak = cpu_peak(measure=True)
    intrinsic = (report.get("int8_compute") or {}).get("intrinsic")
    dot_factor = peak.dot_factor(intrinsic) or DOT_PEAK_FACTOR.get(intrinsic, 1.0)
    peak_gflops = peak.gflops * min(threads, peak.cores) / peak.cores
    rows = kernel_rows(timings, kernels, peak_gflops, dot_factor)
    return {
        "threads": threads,
        "repeat": repeat,
        "peak": peak.to_json(),
        "dot_peak_factor": dot_factor,
        "rows": [r.to_json() for r in rows],
        "markdown": render(rows, peak, threads, dot_factor),
    }


BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
PROFILE_PNG = "profile.png"


def machine() -> str:
    """The CPU a figure was measured on, and its core count (figures differ between CPUs)."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def write_bench(artifact: Path, result: BenchResult, profile: dict | None = None) -> Path:
    """The figures as bench.json and bench.md (and the profile as profile.png) in the artifact
    folder, files of their own: the build's files (report, manifest, library) stay as they
    were, and their hashes true."""
    import json

    from edgepress.compiler.profile_plot import write_profile_plot

    data = {
        "artifact": str(artifact),
        "machine": machine(),
        "bench": result.to_json(),
        "kernel_profile": profile,
    }
    if profile is not None:
        title = (
            f"edgepress kernel profile: {artifact.name}, {profile['threads']} thread(s), "
            f"on {data['machine']}"
        )
        write_profile_plot(profile, artifact / PROFILE_PNG, title)
        profile["picture"] = PROFILE_PNG
    path = artifact / BENCH_JSON
    path.write_text(json.dumps(data, indent=2) + "\n")
    (artifact / BENCH_MD).write_text(reports.bench_markdown(data))
    return path
