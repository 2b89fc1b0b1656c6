"""fuse_hard_swish: HardSigmoid and HardSwish from their decomposed forms.

Clip(x + 3, 0, 6) / 6            => HardSigmoid(x, alpha=1/6, beta=0.5)   (opset 6 or later)
x * Clip(x + 3, 0, 6) / 6        => HardSwish(x)                          (opset 14 or later)
x * HardSigmoid(x, 1/6, 0.5)     => HardSwish(x)
Clip may be written as Relu6 is exported (Clip with min 0, max 6). The rules are onnxscript's
(rules/common/_fuse_hardswish.py); only the HardSigmoid rule runs below opset 14.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules.common import fuse_hardswish_rules

from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules, onnx_opset

HARD_SWISH_OPSET = 14


@register_pass("fuse_hard_swish")
def fuse_hard_swish(model: ir.Model) -> PassResult:
    """Decomposed HardSwish and HardSigmoid chains => HardSwish / HardSigmoid.

    Needs constants 3, 0, 6, 6 and no other user of any intermediate.
    """
    rules = list(fuse_hardswish_rules().rules)
    if onnx_opset(model) < HARD_SWISH_OPSET:  # HardSwish is an op from opset 14 on
        rules = [r for r in rules if r.name == "HardSigmoidFusion"]
    return PassResult(model, apply_rules(model, rules))
