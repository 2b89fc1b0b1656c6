"""The onnxscript internals the passes use, in one place (the comment says why each has no
public form); tests/test_upstream.py checks them, so an upgrade that moves one fails there."""

from __future__ import annotations


def matmul_add_to_gemm_classes() -> tuple:
    """onnxscript's MatMul + Add -> Gemm rule classes (plain, transposed A, B, both). Their
    public forms are finished rule instances; fuse_matmul_add subclasses the classes to add
    the bias-broadcast check that Gemm needs and they lack."""
    from onnxscript.rewriter.rules.common._matmul_add_to_gemm import (
        MatMulAddToGemm,
        TransABMatMulAddToGemm,
        TransAMatMulAddToGemm,
        TransBMatMulAddToGemm,
    )

    return MatMulAddToGemm, TransAMatMulAddToGemm, TransBMatMulAddToGemm, TransABMatMulAddToGemm
