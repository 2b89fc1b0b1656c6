"""The TVM internals edgepress uses, in one place: each has no public equivalent in TVM 0.27
(the comment says why it is needed). tests/test_upstream.py calls every one, so an upgrade
that moves or changes one fails there, not in a user's build.

The other one: kernels/common/tensor_intrinsics.py enters TVM's tensor_intrin package without
running its __init__ (18 s of CUDA intrinsics per CPU build); test_bench checks it.
"""

from __future__ import annotations


def onnx_importer_ops() -> set[str]:
    """The ONNX ops TVM's importer converts: its converter table (no public list), so that
    every unsupported node of a model is named at once rather than the first one failing."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


def evaluator_config(**settings):
    """MetaSchedule's EvaluatorConfig with its defaults filled in, as its LocalRunner makes it
    (the in-process runner of tuning/search.py measures with the same settings)."""
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

    return EvaluatorConfig._normalized(EvaluatorConfig(**settings))


def runner_worker():
    """MetaSchedule's function that times one built candidate (its LocalRunner's worker),
    called in-process by tuning/search.py instead of in a worker pool."""
    from tvm.s_tir.meta_schedule.runner.local_runner import _worker_func

    return _worker_func


def winograd_matrices(tile: int, kernel: int):
    """TOPI's Cook-Toom transform matrices (A, B, G) for Winograd F(tile, kernel), so that the
    weights are transformed at build time exactly as TOPI's pre-computed Winograd reads them."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    return _cook_toom_convolution(_interpolation_points(tile + kernel - 1), tile, kernel)
