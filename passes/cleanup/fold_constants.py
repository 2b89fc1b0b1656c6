"""fold_constants: shape inference, constant folding (shape subgraphs included) and dead-code removal.

Exporters leave run-time shape arithmetic (Shape -> Gather -> Concat -> Reshape), Constant nodes
and `If` nodes on shape conditions in the graph. Once the input shapes are fixed all of that is
constant; TVM's importer needs it gone ("Reshape requires the input new shape to be Shape").
The folding itself is onnxscript's constant folder, which evaluates nodes with onnx's reference
implementation and knows how to fold `Shape` of static tensors and `If` on constant conditions.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer

from edgepress.passes.graph_stats import count_nodes
from edgepress.passes.registry import PassResult, register_pass

log = logging.getLogger(__name__)

# Tensors up to this many elements are folded; bigger ones (weights) stay where they are.
INPUT_SIZE_LIMIT = 1 << 20
OUTPUT_SIZE_LIMIT = 1 << 22
MAX_ROUNDS = 4
# onnxscript keeps every ConstantOfShape (folding a big one would grow the file); a small one is
# shape arithmetic (Paddle and PyTorch build Pad's pads with it) and must fold for the shapes
# after it to become static.
SMALL_CONSTANT_OF_SHAPE = 4096


def _should_fold(node: ir.Node) -> bool | None:
    """True for a ConstantOfShape of a small constant shape; None leaves onnxscript's rules."""
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    shape = node.inputs[0].const_value if node.inputs[0] is not None else None
    if shape is None:
        return None
    dims = np.asarray(shape.numpy()).ravel()
    return True if (dims >= 0).all() and int(np.prod(dims)) <= SMALL_CONSTANT_OF_SHAPE else None


@register_pass("fold_constants")
def fold_constants(model: ir.Model, *, max_rounds: int = MAX_ROUNDS) -> PassResult:
    """Fold constant subgraphs (shape arithmetic, If on constant conditions) and drop dead nodes.

    Before: Shape(x) -> Gather -> Concat -> Reshape(y, shape);  after: Reshape(y, <constant>).
    Needs static input shapes to fold shape subgraphs; anything depending on a dynamic dim stays.
    """
    before = count_nodes(model)
    common_passes.InlinePass()(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model)
    for round_ in range(max_rounds):
        folded = onnxscript.optimizer.fold_constants(
            model,
            onnx_shape_inference=True,
            input_size_limit=INPUT_SIZE_LIMIT,
            output_size_limit=OUTPUT_SIZE_LIMIT,
            should_fold=_should_fold,
        )
        removed = common_passes.RemoveUnusedNodesPass()(model)
        log.debug(
            "fold_constants round %d: folded=%s removed=%s",
            round_,
            folded.modified,
            removed.modified,
        )
        if not (folded.modified or removed.modified):
            break
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.ShapeInferencePass()(model)
    return PassResult(model, max(0, before - count_nodes(model)))
