"""Accuracy-aware mixed precision: keep the most sensitive layers in float until a budget holds.

Policy only: the caller gives a function that quantizes with some layers excluded and one that
measures the accuracy drop of a model (in the budget's units). Sensitivity of a layer is the
drop measured with only that layer in int8 and every other in float (by `rank`, which may look
at fewer samples than `drop`: it runs once per layer): the error that layer alone brings. (The
drop with only that layer kept in float ranks nothing where the error is spread over many
layers, as in a MobileNetV3: every such model is as far off as all-int8.) A prefix of that
order that meets the budget is then found by doubling its length and bisecting back (the drop
is not monotone in it, so not always the shortest), so a model of a few hundred layers is
re-measured a dozen times, not hundreds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx


@dataclass
class FallbackResult:
    budget: float
    all_int8_drop: float
    sensitivity: list[tuple[str, float]] = field(default_factory=list)  # layer, drop if alone int8
    steps: list[tuple[int, float]] = field(default_factory=list)  # layers in float, drop
    float_layers: list[str] = field(default_factory=list)
    final_drop: float = 0.0
    model: onnx.ModelProto | None = None

    @property
    def met(self) -> bool:
        return self.final_drop <= self.budget


def keep_sensitive_layers_float(
    layers: list[str],
    quantize: Callable[[list[str]], onnx.ModelProto],
    drop: Callable[[onnx.ModelProto], float],
    budget: float,
    rank: Callable[[onnx.ModelProto], float] | None = None,
) -> FallbackResult:
    """`quantize(excluded)` returns the int8 model with `excluded` in float. The result keeps
    the layers of the prefix found in float (all of them when nothing meets the budget)."""
    model = quantize([])
    all_int8 = drop(model)
    result = FallbackResult(budget, all_int8, final_drop=all_int8, model=model)
    if result.met or not layers:
        return result
    rank = rank or drop

    def alone(layer: str) -> float:
        return rank(quantize([other for other in layers if other != layer]))

    result.sensitivity = sorted(
        ((layer, alone(layer)) for layer in layers), key=lambda item: item[1], reverse=True
    )
    order = [layer for layer, _ in result.sensitivity]

    def trial(count: int) -> tuple[float, onnx.ModelProto]:
        candidate = quantize(order[:count])
        measured = drop(candidate)
        result.steps.append((count, measured))
        return measured, candidate

    low, count = 0, 1  # `low` layers in float miss the budget
    while True:
        measured, candidate = trial(count)
        if measured <= budget or count == len(order):
            break
        low, count = count, min(2 * count, len(order))
    best = (count, measured, candidate)
    while measured <= budget and count - low > 1:
        middle = (low + count) // 2
        measured_middle, candidate_middle = trial(middle)
        if measured_middle <= budget:
            count, best = middle, (middle, measured_middle, candidate_middle)
        else:
            low = middle
    result.float_layers = order[: best[0]]
    result.final_drop, result.model = best[1], best[2]
    return result
