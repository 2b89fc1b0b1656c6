"""ONNX-to-ONNX graph passes over onnx_ir models, each registered once in `registry`."""

from edgepress.passes.registry import PASSES, DEFAULT_PIPELINE, PassResult, get_pass, register_pass

# Importing the pass modules registers them.
from edgepress.passes.cleanup import fold_constants as _fold_constants  # noqa: F401

__all__ = ["PASSES", "DEFAULT_PIPELINE", "PassResult", "get_pass", "register_pass"]
