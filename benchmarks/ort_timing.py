"""onnxruntime sessions and latency medians shared by the benchmark scripts: models compared in
one run are timed in alternating rounds, so drift on a shared machine hits them alike."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def medians_ms(
    paths: list[Path],
    feeds: dict[str, np.ndarray],
    threads: int,
    repeat: int,
    optimize: bool = True,
    warmup: int = 3,
) -> list[float]:
    """Median ms per model, `repeat` runs each, alternating between the models."""
    sessions = [session(p, threads, optimize) for p in paths]
    inputs = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    for s, feed in zip(sessions, inputs):
        for _ in range(warmup):
            s.run(None, feed)
    samples: list[list[float]] = [[] for _ in paths]
    for _ in range(repeat):
        for i, (s, feed) in enumerate(zip(sessions, inputs)):
            start = time.perf_counter()
            s.run(None, feed)
            samples[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(x) for x in samples]
