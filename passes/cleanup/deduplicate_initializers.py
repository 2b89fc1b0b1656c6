"""deduplicate_initializers: identical constant tensors stored once.

Exporters repeat small constants (shape vectors, epsilons, scales) per use; after folding, equal
weights can appear twice. onnx-ir's hashed pass compares dtype, shape and a hash of the bytes
(of any size), so the whole tensors are never held twice.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.registry import PassResult, register_pass


@register_pass("deduplicate_initializers")
def deduplicate_initializers(model: ir.Model) -> PassResult:
    """Keep one initializer per distinct tensor and point every use at it.

    Skips initializers that are graph inputs (a caller may override them) or graph outputs.
    """
    before = len(model.graph.initializers)
    common_passes.DeduplicateHashedInitializersPass()(model)
    return PassResult(model, before - len(model.graph.initializers))
