"""`compress bench --device` and `compress verify --device`: the artifact timed and checked on
the device it was built for (compiler/devices.py moves it there).

The figures go to files of their own next to the build's (device-bench.json,
device-verify.json), one entry per device and settings, replaced when measured again; the
files the manifest hashes are never touched.
"""

from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path

import numpy as np

from edgepress.compiler.devices import DeviceRun, connect, folder_digest
from edgepress.compiler.errors import UsageError
from edgepress.compiler.inputs import load_npz, random_inputs
from edgepress.compiler.manifest import read_manifest
from edgepress.compiler.shapes import TensorSpec
from edgepress.compiler.verify import (
    FP32_NOISE,
    INT8_NOISE,
    Tolerance,
    Verification,
    compare_within_noise,
    reference_noise,
    run_onnxruntime,
)

DEVICE_BENCH = "device-bench.json"
DEVICE_VERIFY = "device-verify.json"


def _specs(manifest: dict) -> list[TensorSpec]:
    return [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]


def _record(path: Path, entry: dict, same: tuple[str, ...]) -> None:
    """Add `entry` to the JSON list at `path`, replacing one that matches it on `same`."""
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries = [e for e in entries if any(e.get(k) != entry.get(k) for k in same)]
    path.write_text(json.dumps([*entries, entry], indent=2) + "\n")


def passed_on_devices(artifact: Path) -> list[str]:
    """The devices device-verify.json says this folder (same manifest digest) passed on."""
    path = artifact / DEVICE_VERIFY
    if not path.is_file() or not (artifact / "manifest.json").is_file():
        return []
    digest = folder_digest(artifact)
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    return [
        e["device"]
        for e in entries
        if e.get("artifact_sha256") == digest and (e.get("verification") or {}).get("status") == "ok"
    ]


def describe(identity: dict) -> str:
    """The device's identity in one phrase."""
    if identity.get("transport") == "ssh":
        parts = [identity.get("cpu"), f"{identity['cores']} cores" if identity.get("cores") else None,
                 identity.get("uname")]  # fmt: skip
        return ", ".join(p for p in parts if p)
    return identity.get("note") or identity.get("cpu") or ""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def bench_on_device(
    artifact: Path, url: str, *, threads: int, repeat: int, ssh_config: Path | None = None
) -> dict:
    """Median, p90 and standard deviation of `repeat` runs on the device, with init time,
    first-run time, peak memory and the device's identity; recorded in device-bench.json."""
    if threads < 1 or repeat < 1:
        raise UsageError("--threads and --repeat must be at least 1")
    manifest = read_manifest(artifact)
    specs = _specs(manifest)
    feeds = random_inputs(specs, 0)
    device = connect(url, ssh_config)
    identity = device.identity()
    run = device.run(artifact, [feeds[s.name] for s in specs], repeat, threads)
    times = run.times_ms
    entry = {
        "device": url,
        "identity": identity,
        "artifact_sha256": folder_digest(artifact),
        "target": manifest["target"]["name"],
        "threads": threads,
        "repeat": repeat,
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "std_ms": statistics.pstdev(times),
        "min_ms": min(times),
        "init_ms": run.init_ms,
        "first_run_ms": run.first_run_ms,
        "peak_rss_kib": run.peak_rss_kib,
        "pushed": run.pushed,
        "notes": run.notes,
        "measured_at": _now(),
    }
    _record(artifact / DEVICE_BENCH, entry, ("device", "threads"))
    return entry


def _reference(artifact: Path, feeds: dict, run: DeviceRun, manifest: dict, tol: Tolerance):
    """The device's outputs against onnxruntime on the artifact's model.onnx (itself verified
    against the source at build time), within one step on int8 grids, and within the
    reference's own noise where outside the float tolerance (as the build checks)."""
    import onnx

    from edgepress.compiler.quant_noise import quantization_noise
    from edgepress.compiler.quantize_step import output_steps

    model = artifact / "model.onnx"
    reference = run_onnxruntime(model, feeds)
    names = [o["name"] for o in manifest["outputs"]]
    got = dict(zip(names, run.outputs))
    proto = onnx.load(str(model))
    steps = output_steps(proto) or None
    if any(node.op_type == "QuantizeLinear" for node in proto.graph.node):
        noise, source = (lambda: quantization_noise(proto, feeds)), INT8_NOISE
    else:
        noise, source = (lambda: reference_noise(model, feeds)), FP32_NOISE
    return compare_within_noise(got, reference, tol, "onnxruntime on model.onnx", steps, noise, source)


def _run_here(artifact: Path, manifest: dict, arrays: list[np.ndarray]) -> tuple[DeviceRun, str]:
    from edgepress.backends.targets import get_backend

    runner = get_backend(manifest["target"]["name"]).runner(artifact)
    if isinstance(runner, str):
        raise UsageError(f"{artifact}: cannot run it here ({runner}); verify it with --device")
    return DeviceRun(runner.run(arrays), [], None, None, None, False), runner.description


def verify_on_device(
    artifact: Path,
    url: str | None,
    *,
    inputs: Path | None = None,
    ssh_config: Path | None = None,
) -> Verification:
    """Run the artifact on the device (here when `url` is None) and compare with onnxruntime
    here; the result goes to device-verify.json (a cuda artifact built without a GPU is
    verified this way)."""
    manifest = read_manifest(artifact)
    specs = _specs(manifest)
    feeds = load_npz(inputs, specs, "--inputs") if inputs else random_inputs(specs, 0)
    report_path = artifact / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    tol = Tolerance(**((report.get("verification") or {}).get("artifact") or {}).get("tolerance") or {})
    arrays = [feeds[s.name] for s in specs]
    if url is None:
        from edgepress.compiler.bench import machine

        run, where = _run_here(artifact, manifest, arrays)
        identity = {"transport": "local", "cpu": machine()}
    else:
        device = connect(url, ssh_config)
        identity = device.identity()
        run, where = device.run(artifact, arrays, 0, 1), f"on {url}"
    verification = _reference(artifact, feeds, run, manifest, tol)
    verification.reference += f"; artifact run {where}"
    entry = {
        "device": url or "local",
        "identity": identity,
        "artifact_sha256": folder_digest(artifact),
        "inputs": str(inputs) if inputs else "random, seed 0",
        "verification": verification.to_json(),
        "measured_at": _now(),
    }
    _record(artifact / DEVICE_VERIFY, entry, ("device",))
    return verification
