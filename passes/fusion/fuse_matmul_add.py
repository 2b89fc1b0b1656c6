"""fuse_matmul_add: Add(MatMul(a, b), c) => Gemm(a, b, c) where everything is 2-D.

Gemm computes a @ b + c with c broadcast to (M, N) in one direction only; Add broadcasts both
ways, so the rewrite also needs c of rank <= 2 broadcasting to the MatMul's (M, N). Transposes
of a or b feeding the MatMul become transA/transB. The rules are onnxscript's
(rules/common/_matmul_add_to_gemm.py) with that extra check.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules
from edgepress.passes.upstream import matmul_add_to_gemm_classes


def why_not_gemm_bias(input_c: ir.Value, output: ir.Value) -> str | None:
    """None when c broadcasts to the MatMul's 2-D output in Gemm's one direction."""
    if input_c.shape is None or output.shape is None or len(output.shape) != 2:
        return "bias or output shape unknown, or output not 2-D"
    c, y = list(input_c.shape), list(output.shape)
    if len(c) > 2:
        return f"bias of rank {len(c)}"
    for dc, dy in zip(reversed(c), reversed(y)):
        if dc != 1 and dc != dy:
            return f"bias shape {c} does not broadcast to {y}"
    return None


def _with_bias_check(rule_class):
    class Checked(rule_class):
        def check(self, context, input_a, input_b, input_c, **kwargs):
            result = super().check(context, input_a=input_a, input_b=input_b, **kwargs)
            if not result:
                return result
            add = context.root
            if reason := why_not_gemm_bias(input_c, add.outputs[0]):
                return pattern.MatchResult().fail(reason)
            return result

    Checked.__name__ = rule_class.__name__
    return Checked.rule()


RULES = [_with_bias_check(cls) for cls in matmul_add_to_gemm_classes()]


@register_pass("fuse_matmul_add")
def fuse_matmul_add(model: ir.Model) -> PassResult:
    """MatMul -> Add  =>  Gemm, when a, b and the result are 2-D and the bias broadcasts one way.

    Skips a MatMul whose output has another user, and batched (3-D+) MatMuls.
    """
    return PassResult(model, apply_rules(model, RULES))
