"""edgepress's Python API (re-exported as `edgepress.build`, `edgepress.load`, ...).

    import edgepress

    artifact = edgepress.build(
        "model.onnx", target="x86_64", output="build/model",
        input_shape={"input": [1, 3, 224, 224]},
        quantize="int8", calibration="photos/",
    )
    print(artifact.summary())
    outputs = artifact.run({"input": x})          # {output name: array}
    result, _ = artifact.bench(threads=1)        # against onnxruntime, into bench.json

Every keyword is a build option under the name of its flag (`--calibration-method` is
`calibration_method=`; compiler/options.py lists them all); `config=` reads a build.toml first,
keywords win. Errors are the exceptions of compiler/errors.py, the ones the CLI turns into its
exit codes (UsageError 2, UnsupportedOpError 3, VerificationError 6, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepress.backends.runtime.threads import size_pool_to_all_cores
from edgepress.compiler.config import build_options, check, resolve
from edgepress.compiler.config import load_config as _load_config
from edgepress.compiler.errors import EdgepressError, UsageError
from edgepress.compiler.manifest import read_manifest
from edgepress.compiler.progress import Progress
from edgepress.compiler.report import human_size
from edgepress.compiler.shapes import TensorSpec

__all__ = ["Artifact", "EdgepressError", "build", "load", "load_config"]

# TVM's thread pool can later run fewer threads than it started with, never more: it starts
# with every core, and bench/run pick their count (as the CLI does at start-up).
size_pool_to_all_cores()

# Keyword spellings of the API that read better as Python than the flags' names.
ALIASES = {"input_shapes": "input_shape", "input_values": "input_value"}


def load_config(path: str | Path) -> dict:
    """The checked settings of a build.toml (or of an artifact's report.json)."""
    return _load_config(Path(path))


def build(
    model: str | Path | None = None,
    *,
    target: str | None = None,
    output: str | Path | None = None,
    config: str | Path | None = None,
    progress: Progress | None = None,
    **options,
) -> Artifact:
    """Compile, verify and package `model` for `target` into the folder `output`; returns the
    artifact (raises VerificationError when it is outside tolerance, after writing it)."""
    given = {"model": model, "target": target, "output": output}
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in options.items():
        given[ALIASES.get(key, key)] = value
    from_file = _load_config(Path(config)) if config is not None else {}
    settings = resolve(from_file, check(given, "edgepress.build()"))
    return build_from_settings(settings, progress=progress)


def build_from_settings(settings: dict, *, progress: Progress | None = None) -> Artifact:
    from edgepress.compiler.build import build as run_build

    result = run_build(build_options(settings), progress)
    return load(result.outdir)


def load(path: str | Path) -> Artifact:
    """An artifact folder written by a build."""
    import json

    folder = Path(path)
    manifest = read_manifest(folder)
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return Artifact(folder, manifest, report)


@dataclass
class Artifact:
    """A built artifact folder: its manifest, its report, and ways to run and time it."""

    path: Path
    manifest: dict
    report: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.manifest["status"]

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in self.manifest["inputs"]
        ]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.manifest["outputs"]]

    def run(self, inputs: dict[str, np.ndarray] | list[np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name, for inputs by name (or in the model's input order)."""
        return self.run_with(inputs)[0]

    def run_with(self, inputs) -> tuple[dict[str, np.ndarray], str]:
        """run(), and how it ran (natively, under qemu, ...)."""
        from edgepress.backends.targets import get_backend

        specs = self.input_specs
        if not isinstance(inputs, dict):
            inputs = dict(zip([s.name for s in specs], inputs))
        missing = [s.name for s in specs if s.name not in inputs]
        if missing:
            raise UsageError(f"{self.path}: inputs missing: {', '.join(missing)}")
        backend = get_backend(self.target)
        runner = backend.runner(self.path)
        if isinstance(runner, str):
            raise UsageError(f"{self.path}: cannot run a {backend.name} artifact here: {runner}")
        arrays = [np.asarray(inputs[s.name], dtype=s.dtype) for s in specs]
        outputs = runner.run(arrays)
        return dict(zip(self.output_names, outputs)), runner.description

    def bench(self, *, threads: int = 1, repeat: int = 50, warmup: int = 3, profile: bool = False):
        """The artifact against onnxruntime (same inputs and threads), written to bench.json;
        returns (BenchResult, the per-kernel profile or None)."""
        from edgepress.compiler.bench import bench, profile_kernels, write_bench

        result = bench(self.path, threads=threads, repeat=repeat, warmup=warmup)
        kernels = (
            profile_kernels(self.path, threads=threads, repeat=max(1, repeat // 5))
            if profile
            else None
        )
        write_bench(self.path, result, kernels)
        return result, kernels

    def summary(self) -> str:
        """One line: status, folder, target, size, verification, time."""
        sizes = self.report.get("sizes", {})
        library = sizes.get("model.so")
        folder = sum(v for k, v in sizes.items() if k != "source model")
        check = (self.report.get("verification") or {}).get("artifact") or {}
        errors = [o.get("max_abs_err") for o in check.get("outputs", [])]
        errors = [e for e in errors if e is not None]
        if check.get("status") == "ok":
            verified = "verified against onnxruntime" + (
                f" (max abs error {max(errors):.2g})" if errors else ""
            )
        else:
            verified = str(check.get("status", "not verified"))
            on_device = _verified_on_device(self.path)
            if on_device:
                verified += f"; verified against onnxruntime on {on_device} (device-verify.json)"
        seconds = (self.report.get("timings_s") or {}).get("total")
        parts = [
            self.target,
            f"library {human_size(library)}, folder {human_size(folder)}" if library else None,
            verified,
            _int8_fidelity(self.report.get("quantization")),
            f"{seconds:.1f} s" if seconds else None,
        ]
        return f"{self.status}: {self.path} ({'; '.join(p for p in parts if p)})"


def _verified_on_device(folder: Path) -> str | None:
    """The devices where `compress verify --device` passed on this very folder (its
    device-verify.json, kept apart from the hashed files), or None."""
    from edgepress.compiler.device_check import passed_on_devices

    devices = passed_on_devices(folder)
    return ", ".join(devices) if devices else None


def _int8_fidelity(quantization: dict | None) -> str | None:
    """int8's fidelity to the float model and the layers kept in float, for the summary."""
    if not quantization or not quantization.get("fidelity"):
        return None
    rows = quantization.get("artifact_fidelity") or quantization["fidelity"]
    least = min(r.get("min_cosine", r["cosine"]) for r in rows)
    text = f"int8 min cosine {least:.4f} against float"
    kept = [f["layer"] for f in quantization.get("float_layers", [])]
    if kept:
        names = ", ".join(kept[:4]) + (f" and {len(kept) - 4} more" if len(kept) > 4 else "")
        text += f", {len(kept)} layer(s) kept in float ({names})"
    return text
