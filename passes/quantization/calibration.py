"""Calibration: the range of every tensor the quantizer will quantize, from real data.

A phase of its own: it runs the float model in onnxruntime on the calibration samples and
returns a plain `CalibrationStats` (tensor -> (low, high)); quantization only reads it.

Methods (onnxruntime.quantization's calibrators do the collecting):
- minmax: the lowest and highest value seen;
- percentile: |x| clipped at the given percentile of its histogram (99.999 by default);
- entropy: the threshold minimizing the KL divergence between the float histogram (2048 bins)
  and its 128-bin quantized form (TensorRT's method, onnxruntime's implementation);
- mse: the threshold T minimizing the expected squared error of quantizing x to the grid over
  [-T, T] (or [0, T] for a tensor that is never negative): values inside lose step^2 / 12 on
  average (step = range / 255), values beyond T lose (|x| - T)^2. Computed here from
  onnxruntime's histogram of |x| (2048 bins); onnxruntime has no such method.
A tensor never seen below zero gets a low of 0 whatever the method, so uint8 activations
after a ReLU use all 256 levels.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

METHODS = ("minmax", "percentile", "entropy", "mse")
HISTOGRAM_BINS = 2048
LEVELS = 255  # steps of an 8-bit grid


@dataclass
class CalibrationStats:
    method: str
    samples: int
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    observed: dict[str, tuple[float, float]] = field(default_factory=dict)  # min, max seen


class _Reader:
    """onnxruntime's CalibrationDataReader over (N, *shape) arrays: one sample per call."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.data = data
        self.count = min(a.shape[0] for a in data.values())
        self.index = 0

    def get_next(self):
        if self.index >= self.count:
            return None
        sample = {name: array[self.index] for name, array in self.data.items()}
        self.index += 1
        return sample

    def rewind(self) -> None:
        self.index = 0


def mse_threshold(hist: np.ndarray, edges: np.ndarray, nonnegative: bool) -> float:
    """The clip value T minimizing the expected 8-bit quantization error of a histogram of |x|."""
    centers = (edges[:-1] + edges[1:]) / 2
    counts = hist.astype(np.float64)
    candidates = edges[1:]
    span = candidates if nonnegative else 2 * candidates
    step = span / LEVELS
    # error[j] = sum_i counts_i * (step_j^2 / 12 if c_i <= T_j else (c_i - T_j)^2)
    inside = np.cumsum(counts)  # counts with center below each candidate, approximately
    beyond = np.clip(centers[None, :] - candidates[:, None], 0, None)
    error = inside * step**2 / 12 + (beyond**2 * counts[None, :]).sum(axis=1)
    return float(candidates[int(np.argmin(error))])


def calibrate(
    model: onnx.ModelProto,
    data: dict[str, np.ndarray],
    *,
    method: str = "minmax",
    percentile: float = 99.999,
) -> CalibrationStats:
    """Ranges of every float tensor feeding or leaving a node, from `data` ((N, *shape) arrays
    per input name)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    ort_method, options = {
        "minmax": (CalibrationMethod.MinMax, {}),
        "percentile": (
            CalibrationMethod.Percentile,
            {"percentile": percentile, "symmetric": True, "num_bins": HISTOGRAM_BINS},
        ),
        # onnxruntime's default of 128 bins for 128 quantized bins leaves nothing to clip.
        "entropy": (
            CalibrationMethod.Entropy,
            {"symmetric": True, "num_bins": HISTOGRAM_BINS, "num_quantized_bins": 128},
        ),
        "mse": (CalibrationMethod.Percentile, {"symmetric": True, "num_bins": HISTOGRAM_BINS}),
    }[method]
    reader = _Reader(data)
    with tempfile.TemporaryDirectory(prefix="edgepress-calib-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, path)
        # onnxruntime's calibrators print progress on stdout; a build's output is its report.
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(
                path,
                None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=ort_method,
                extra_options=options,
            )
            calibrator.collect_data(reader)
            computed = calibrator.compute_data()
        histograms = getattr(getattr(calibrator, "collector", None), "histogram_dict", None) or {}
    stats = CalibrationStats(method, reader.count)
    for name, tensor_data in computed.data.items():
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in tensor_data.range_value)
        if name in histograms:
            hist, edges, seen_min, seen_max = histograms[name][:4]
            seen = (float(seen_min), float(seen_max))
            if method == "mse":
                threshold = mse_threshold(np.asarray(hist), np.asarray(edges), seen[0] >= 0)
                low, high = -threshold, threshold
        else:
            seen = (low, high)
        if seen[0] >= 0:
            low = 0.0
        stats.ranges[name] = (low, max(high, low))
        stats.observed[name] = seen
    return stats


def channel_ranges(
    model: onnx.ModelProto, data: dict[str, np.ndarray], names: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The lowest and highest value of each channel (axis 1) of the named tensors over `data`'s
    samples (equalize_depthwise_inputs' input)."""
    from edgepress.passes.quantization.sensitivity import run_samples

    if not names:
        return {}

    def extremes(a: np.ndarray) -> np.ndarray:
        axes = tuple(i for i in range(a.ndim) if i != 1)
        return np.stack([a.min(axis=axes), a.max(axis=axes)])

    seen = run_samples(model, data, names, reduce=extremes)
    return {name: (v[:, 0].min(axis=0), v[:, 1].max(axis=0)) for name, v in seen.items()}
