"""fold_conv_affine: a per-channel constant Mul, Div, Add or Sub after a Conv, folded into it.

y = Conv(x, W, b) has y[:, c] = W[c] * x + b[c]. Then y * s = Conv(x, s[c] W[c], s[c] b[c]) and
y + t = Conv(x, W, b + t); Div and Sub are Mul by 1/s and Add of -t. s and t must broadcast
along the channel axis only (shape (C,1,1), (1,C,1,1), scalar, ...): a constant that varies
along batch or space, or would broadcast the output to a bigger shape, is not folded.
Exporters leave these where a normalization or a scale was written by hand.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgepress.passes.constants import constant_array, per_channel
from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules


class _ConvThen(pattern.RewriteRuleClassBase):
    """Conv(x, W[, b]) <op> k  =>  Conv(x, W', b')."""

    op_type = ""

    def pattern(self, op, x, w, k):
        conv = op.Conv(
            x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"]
        )
        return getattr(op, self.op_type)(conv, k)

    def check(self, context, x, w, k, conv_out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        conv = conv_out.producer()
        weight = constant_array(w)
        if weight is None:
            return result.fail("the Conv weight is not a constant")
        bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        bias = constant_array(bias_value) if bias_value is not None else np.zeros(weight.shape[0])
        if bias is None:
            return result.fail("the Conv bias is not a constant")
        constant = constant_array(k)
        if constant is None:
            return result.fail(f"the {self.op_type} operand is not a constant")
        # A Conv output has the weight's rank: (N, C, spatial...) against (C, C_in, kernel...).
        vector = per_channel(constant, weight.ndim, weight.shape[0])
        if vector is None:
            return result.fail(f"the {self.op_type} operand {constant.shape} is not per-channel")
        self._graph = context.graph_or_function
        self._weight, self._bias, self._vector = weight, bias, vector.astype(weight.dtype)
        return result

    def rewrite(self, op, x, w, k, conv_out, **_):
        weight, bias = self._folded(
            self._weight, self._bias.astype(self._weight.dtype), self._vector
        )
        new_w = add_initializer(self._graph, f"{w.name}_folded", weight)
        new_b = add_initializer(self._graph, f"{w.name}_bias_folded", bias)
        return op.Conv(x, new_w, new_b, **conv_out.producer().attributes)

    @staticmethod
    def _folded(weight, bias, vector):
        raise NotImplementedError


def _scale(weight, bias, s):
    return weight * s.reshape((-1,) + (1,) * (weight.ndim - 1)), bias * s


class ConvMul(_ConvThen):
    op_type = "Mul"
    _folded = staticmethod(_scale)


class ConvDiv(_ConvThen):
    op_type = "Div"
    _folded = staticmethod(lambda w, b, s: _scale(w, b, 1 / s))


class ConvAdd(_ConvThen):
    op_type = "Add"
    _folded = staticmethod(lambda w, b, t: (w, b + t))


class ConvSub(_ConvThen):
    op_type = "Sub"
    _folded = staticmethod(lambda w, b, t: (w, b - t))


RULES = [ConvMul.rule(), ConvDiv.rule(), ConvAdd.rule(), ConvSub.rule()]


@register_pass("fold_conv_affine")
def fold_conv_affine(model: ir.Model) -> PassResult:
    """Conv -> Mul/Div/Add/Sub by a per-channel constant  =>  Conv with new weight and bias.

    Needs constant Conv weight and bias and a Conv output used only there; Div and Sub need the
    constant on the right. Skips ConvTranspose (its channel axis in the weight differs).
    """
    return PassResult(model, apply_rules(model, RULES))
