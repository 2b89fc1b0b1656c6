"""The library internals edgepress relies on (backends/upstream.py, passes/upstream.py) still
exist and behave as used: an upgrade of TVM or onnxscript that moves one fails here."""

from __future__ import annotations

import numpy as np


def test_tvm_internals_are_where_edgepress_uses_them():
    from edgepress.backends import upstream

    ops = upstream.onnx_importer_ops()
    assert {"Conv", "MatMul", "Resize", "Gemm"} <= ops
    config = upstream.evaluator_config(number=3, repeat=1, min_repeat_ms=100)
    assert (config.number, config.repeat, config.min_repeat_ms) == (3, 1, 100)
    assert config.enable_cpu_cache_flush is not None  # filled in by _normalized
    assert callable(upstream.runner_worker())
    a, b, g = (np.asarray(m, np.float64) for m in upstream.winograd_matrices(4, 3))
    # Winograd's identity: A^T [(G w) * (B^T d)] = the correlation of d by w
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal(6), rng.standard_normal(3)
    want = np.array([d[i : i + 3] @ w for i in range(4)])
    np.testing.assert_allclose(a.T @ ((g @ w) * (b.T @ d)), want, atol=1e-9)


def test_onnxscript_rule_classes_take_a_subclassed_check():
    from edgepress.passes.fusion.fuse_matmul_add import RULES
    from edgepress.passes.upstream import matmul_add_to_gemm_classes

    classes = matmul_add_to_gemm_classes()
    assert len(classes) == 4 and all(hasattr(c, "check") and hasattr(c, "rule") for c in classes)
    assert len(RULES) == 4
