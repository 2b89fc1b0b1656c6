"""fuse_layer_norm: the decomposed layer normalization exporters emit, as LayerNormalization.

mean = ReduceMean(x, [-1]); d = x - mean; var = ReduceMean(d * d or d ^ 2, [-1]);
y = d / Sqrt(var + eps) (or d * Reciprocal(...)); then * scale and + bias.
=> LayerNormalization(x, scale, bias, axis=-1, epsilon=eps) (opset 17 or later).

ReduceMean takes its axes as an attribute up to opset 17 and as an input from opset 18; both
forms match. onnxscript's own rule (rules/fusion/_layer_norm.py) knows only the input form and
does not check the scale's shape, hence this one.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules, onnx_opset

FIRST_OPSET = 17
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _mean(op, x, axes_as_input: bool, output: str):
    # keepdims is checked in `check`: it defaults to 1, and exporters may leave it out.
    if axes_as_input:
        return op.ReduceMean(x, [-1], _allow_other_attributes=True, _outputs=[output])
    return op.ReduceMean(x, axes=[-1], _allow_other_attributes=True, _outputs=[output])


class _LayerNorm(pattern.RewriteRuleClassBase):
    axes_as_input = True
    with_bias = True

    def pattern(self, op, x, epsilon, scale, bias):
        deviation = op.Sub(x, _mean(op, x, self.axes_as_input, "mean"))
        squared = pattern.OrValue([op.Mul(deviation, deviation), op.Pow(deviation, 2)])
        std = op.Sqrt(op.Add(_mean(op, squared, self.axes_as_input, "variance"), epsilon))
        normalized = pattern.OrValue(
            [op.Div(deviation, std), op.Mul(deviation, op.Reciprocal(std))]
        )
        scaled = op.Mul(normalized, scale)
        return op.Add(scaled, bias) if self.with_bias else scaled

    def check(
        self, context, x, epsilon, scale, mean, variance, bias=None, **_
    ) -> pattern.MatchResult:
        result = pattern.MatchResult()
        for reduced in (mean, variance):
            reduce = reduced.producer()
            if reduce.attributes.get_int("keepdims", 1) != 1:
                return result.fail("a ReduceMean drops the reduced axis (keepdims=0)")
            if reduce.attributes.get_int("noop_with_empty_axes", 0) != 0:
                return result.fail("a ReduceMean has noop_with_empty_axes set")
        if x.dtype not in FLOAT_TYPES:
            return result.fail("input is not a float type")
        if x.shape is None or not isinstance(x.shape[-1], int):
            return result.fail("the normalized (last) dim is not static")
        width = x.shape[-1]
        eps = constant_array(epsilon)
        if eps is None or eps.size != 1:
            return result.fail("epsilon is not a constant scalar")
        arrays = []
        for name, value in (("scale", scale), ("bias", bias)):
            if value is None:
                continue
            array = constant_array(value)
            if array is None:
                return result.fail(f"{name} is not a constant")
            if array.size not in (1, width) or any(d != 1 for d in array.shape[:-1]):
                return result.fail(f"{name} of shape {array.shape} is not per feature")
            arrays.append(np.broadcast_to(array.reshape(-1), (width,)).astype(array.dtype))
        self._graph = context.graph_or_function
        self._eps = float(eps.reshape(-1)[0])
        self._arrays = arrays
        return result

    def rewrite(self, op, x, scale, bias=None, **_):
        values = [add_initializer(self._graph, "layer_norm_scale", self._arrays[0])]
        if self.with_bias:
            values.append(add_initializer(self._graph, "layer_norm_bias", self._arrays[1]))
        return op.LayerNormalization(x, *values, axis=-1, epsilon=self._eps)


def _rule(axes_as_input: bool, with_bias: bool):
    cls = type(
        f"LayerNorm{'AxesInput' if axes_as_input else 'AxesAttr'}{'Bias' if with_bias else ''}",
        (_LayerNorm,),
        {"axes_as_input": axes_as_input, "with_bias": with_bias},
    )
    if not with_bias:
        cls.pattern = lambda self, op, x, epsilon, scale: _LayerNorm.pattern(
            self, op, x, epsilon, scale, None
        )
    return cls.rule()


# Applied in two steps, with bias first: the bias-less pattern is a prefix of the other and
# would otherwise match at the Mul and leave the Add behind.
RULES_WITH_BIAS = [_rule(a, True) for a in (True, False)]
RULES_WITHOUT_BIAS = [_rule(a, False) for a in (True, False)]


@register_pass("fuse_layer_norm")
def fuse_layer_norm(model: ir.Model) -> PassResult:
    """Decomposed layer norm over the last axis (ReduceMean, Sub, Pow/Mul, Sqrt, Div, Mul, Add)
    => LayerNormalization.

    Needs opset 17 or later, constant epsilon, scale and bias of one value per feature, and no
    other user of any intermediate; skips anything else.
    """
    if onnx_opset(model) < FIRST_OPSET:
        return PassResult(model, 0)
    changes = apply_rules(model, RULES_WITH_BIAS)
    return PassResult(model, changes + apply_rules(model, RULES_WITHOUT_BIAS))
