"""fuse_conv_bn: BatchNormalization folded into the Conv, ConvTranspose or Gemm before it.

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = s * y + (beta - s * mean), with
s = gamma / sqrt(var + eps) per channel. With y = W x + b: W' = s * W (per output channel: axis 0
of a Conv weight, axis 1 of a ConvTranspose weight, the output axis of a Gemm weight) and
b' = s * (b - mean) + beta. The rules are onnxscript's (rules/common/_fuse_batchnorm.py).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import apply_rules

RULES = [
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
]


@register_pass("fuse_conv_bn")
def fuse_conv_bn(model: ir.Model) -> PassResult:
    """Conv/ConvTranspose/Gemm -> BatchNormalization  =>  one op with rescaled weight and bias.

    Needs constant weights and BN parameters (initializers that are not graph inputs) and a
    producer output used only by the BN; skips anything else.
    """
    return PassResult(model, apply_rules(model, RULES))
