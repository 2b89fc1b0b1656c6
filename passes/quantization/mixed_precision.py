"""Accuracy-aware mixed precision: keep the most sensitive layers in float until a budget holds.

Policy only: the caller gives a function that quantizes with some layers excluded and one that
measures the accuracy drop of a model (in the budget's units). Sensitivity of a layer is the
drop measured with only that layer kept in float: the lower, the more that layer costs in int8.
Layers are then kept in float in that order, re-measuring the whole model each time, until the
drop is within the budget or every layer is float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx


@dataclass
class FallbackResult:
    budget: float
    all_int8_drop: float
    sensitivity: list[tuple[str, float]] = field(default_factory=list)  # layer, drop if float
    steps: list[tuple[str, float]] = field(default_factory=list)  # layer made float, drop after
    float_layers: list[str] = field(default_factory=list)
    model: onnx.ModelProto | None = None

    @property
    def met(self) -> bool:
        final = self.steps[-1][1] if self.steps else self.all_int8_drop
        return final <= self.budget

    @property
    def final_drop(self) -> float:
        return self.steps[-1][1] if self.steps else self.all_int8_drop


def keep_sensitive_layers_float(
    layers: list[str],
    quantize: Callable[[list[str]], onnx.ModelProto],
    drop: Callable[[onnx.ModelProto], float],
    budget: float,
) -> FallbackResult:
    """Greedy fallback; `quantize(excluded)` returns the int8 model with `excluded` in float."""
    model = quantize([])
    result = FallbackResult(budget, drop(model), model=model)
    if result.all_int8_drop <= budget:
        return result
    result.sensitivity = sorted(
        ((layer, drop(quantize([layer]))) for layer in layers), key=lambda item: item[1]
    )
    for layer, _ in result.sensitivity:
        result.float_layers.append(layer)
        model = quantize(list(result.float_layers))
        result.steps.append((layer, drop(model)))
        result.model = model
        if result.steps[-1][1] <= budget:
            break
    return result
