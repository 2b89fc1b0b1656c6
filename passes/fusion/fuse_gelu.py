"""fuse_gelu: decomposed GELU chains as the Gelu op (opset 20 or later).

Exact:  0.5 * x * (1 + Erf(x / sqrt(2)))                   => Gelu(x)
Tanh:   0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3))) => Gelu(x, approximate="tanh")
The factors come in any order exporters write them (Mul and Add commute; x / sqrt(2) may be
x * (1/sqrt(2))). Constants must match to 1e-5 relative (onnxscript's constant patterns).
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules, onnx_opset

FIRST_OPSET = 20
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


def _erf_arg(op, x):
    # Every choice names a tag variable: onnxscript 0.7 cannot copy an untagged choice of two
    # same-typed alternatives when it makes the commuted variants of a rule.
    return pattern.OrValue([op.Div(x, SQRT2), op.Mul(x, 1.0 / SQRT2)], tag_var="erf_form")


def _tanh_arg(op, x):
    cube = pattern.OrValue(
        [op.Pow(x, 3.0), op.Mul(x, op.Mul(x, x)), op.Mul(op.Mul(x, x), x)], tag_var="cube_form"
    )
    return op.Mul(op.Add(x, op.Mul(cube, CUBIC)), SQRT_2_OVER_PI)


# 0.5 * x * inner, in the groupings exporters use (the root of a pattern cannot be a choice, so
# each grouping is its own rule).
GROUPINGS = {
    "half_x_first": lambda op, x, inner: op.Mul(op.Mul(x, 0.5), inner),
    "half_last": lambda op, x, inner: op.Mul(op.Mul(x, inner), 0.5),
    "half_inner": lambda op, x, inner: op.Mul(x, op.Mul(inner, 0.5)),
}


def _erf_inner(op, x):
    return op.Add(op.Erf(_erf_arg(op, x)), 1.0)


def _tanh_inner(op, x):
    return op.Add(op.Tanh(_tanh_arg(op, x)), 1.0)


def _rule(name: str, inner, grouping, approximate: str | None):
    def pattern_fn(op, x):
        return grouping(op, x, inner(op, x))

    def rewrite_fn(op, x, **_):
        return op.Gelu(x, approximate=approximate) if approximate else op.Gelu(x)

    return pattern.RewriteRule(pattern_fn, rewrite_fn, name=name)


RULES = [
    _rule(f"{form}_gelu_{key}", inner, grouping, approximate)
    for form, inner, approximate in (("erf", _erf_inner, None), ("tanh", _tanh_inner, "tanh"))
    for key, grouping in GROUPINGS.items()
]


@register_pass("fuse_gelu")
def fuse_gelu(model: ir.Model) -> PassResult:
    """Decomposed GELU (Erf or Tanh form) => Gelu.

    Needs opset 20 or later (where Gelu is an ONNX op) and no other user of any intermediate.
    """
    if onnx_opset(model) < FIRST_OPSET:
        return PassResult(model, 0)
    return PassResult(model, apply_rules(model, RULES))
