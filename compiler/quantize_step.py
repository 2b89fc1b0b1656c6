"""The build's quantization step: calibration data -> statistics -> quantize_int8.

It runs after the float passes (BN folded, shapes fixed), on the model they leave, so the
calibrated tensors are the ones the quantizer sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgepress.compiler.calibration_data import Preprocess, load_calibration
from edgepress.compiler.errors import UsageError
from edgepress.compiler.pipeline import PassRecord, run_pipeline
from edgepress.compiler.shapes import model_inputs, tensor_specs
from edgepress.passes.quantization.calibration import METHODS, calibrate


@dataclass(frozen=True)
class QuantizeOptions:
    calibration: Path
    method: str = "minmax"
    activations: str = "uint8"
    percentile: float = 99.999
    samples: int | None = None  # use at most this many calibration samples
    preprocess: Preprocess = field(default_factory=Preprocess)

    def check(self) -> None:
        if self.method not in METHODS:
            raise UsageError(
                f"--calibration-method {self.method!r}: expected one of {', '.join(METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError("--percentile must lie in (50, 100]")
        if self.samples is not None and self.samples < 1:
            raise UsageError("--calibration-samples must be at least 1")
        self.preprocess.check()


# A fifth of the samples (at least one, when there are 5 or more) is held out of calibration to
# measure the int8 model against the float one on data it was not calibrated on.
HELD_OUT_FRACTION = 5


def split_held_out(
    data: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """(calibration part, held-out part, whether the two are disjoint)."""
    count = min(a.shape[0] for a in data.values())
    if count < HELD_OUT_FRACTION:
        return data, data, False
    held = max(1, count // HELD_OUT_FRACTION)
    return (
        {k: v[: count - held] for k, v in data.items()},
        {k: v[count - held : count] for k, v in data.items()},
        True,
    )


def quantize(
    model: ir.Model, opts: QuantizeOptions, done: list[str]
) -> tuple[ir.Model, list[PassRecord], dict, dict[str, np.ndarray]]:
    """Calibrate on `opts.calibration` and quantize; returns the model, the pass record, facts
    for the report and the held-out samples to measure fidelity on."""
    opts.check()
    start = time.perf_counter()
    specs = tensor_specs(model_inputs(model))
    data = load_calibration(opts.calibration, specs, opts.preprocess)
    if opts.samples is not None:
        data = {name: array[: opts.samples] for name, array in data.items()}
    data, held_out, disjoint = split_held_out(data)
    stats = calibrate(ir.to_proto(model), data, method=opts.method, percentile=opts.percentile)
    seconds = time.perf_counter() - start
    model, records = run_pipeline(
        model,
        ["quantize_int8"],
        {"quantize_int8": {"stats": stats, "activations": opts.activations}},
        done=done,
    )
    facts = {
        "calibration": str(opts.calibration),
        "method": opts.method,
        "samples": stats.samples,
        "activations": opts.activations,
        "weights": "int8, symmetric, per channel",
        "calibrated_tensors": len(stats.ranges),
        "calibration_seconds": seconds,
        "fidelity_samples": min(a.shape[0] for a in held_out.values()),
        "fidelity_data": "held out of calibration" if disjoint
        else "the calibration samples themselves (fewer than 5 given)",
    }
    return model, records, facts, held_out


def outputs_over(model_path, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs for each sample, stacked on a leading axis."""
    from edgepress.compiler.verify import run_onnxruntime

    count = min(a.shape[0] for a in samples.values())
    runs = [run_onnxruntime(model_path, {k: v[i] for k, v in samples.items()}) for i in range(count)]
    return {name: np.stack([r[name] for r in runs]) for name in runs[0]}


def fidelity(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[dict]:
    """How far the int8 model's outputs are from the float source's, per output: cosine,
    max and mean absolute error, and top-1 agreement (argmax over the last axis) for outputs
    with a class axis."""
    from edgepress.compiler.verify import cosine_similarity

    rows = []
    for name, want in ref.items():
        have = np.asarray(got[name], np.float64)
        want = np.asarray(want, np.float64)
        diff = np.abs(have - want)
        row = {
            "name": name,
            "cosine": cosine_similarity(have, want),
            "max_abs_err": float(diff.max(initial=0.0)),
            "mean_abs_err": float(diff.mean()) if diff.size else 0.0,
            "top1_agreement": None,
        }
        if want.ndim >= 2 and want.shape[-1] > 1:
            row["top1_agreement"] = float(np.mean(have.argmax(-1) == want.argmax(-1)))
        rows.append(row)
    return rows
