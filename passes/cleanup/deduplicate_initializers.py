"""deduplicate_initializers: identical constant tensors stored once.

Exporters repeat small constants (shape vectors, epsilons, scales) per use; after folding, equal
weights can appear twice. onnx-ir's hashed pass compares dtype, shape and a hash of the bytes
(of any size), so the whole tensors are never held twice. It hashes the array's buffer, which
numpy refuses for a non-contiguous view ("ndarray is not C-contiguous"): a folded Transpose of a
weight leaves one (seen on a PyTorch 2.3 export at opset 17), so such tensors are made contiguous
first.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.registry import PassResult, register_pass


@register_pass("deduplicate_initializers")
def deduplicate_initializers(model: ir.Model) -> PassResult:
    """Keep one initializer per distinct tensor and point every use at it.

    Skips initializers that are graph inputs (a caller may override them) or graph outputs.
    """
    before = len(model.graph.initializers)
    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(raw, np.ndarray) and not raw.flags.c_contiguous:
            value.const_value = ir.Tensor(np.ascontiguousarray(raw), name=tensor.name)
    common_passes.DeduplicateHashedInitializersPass()(model)
    return PassResult(model, before - len(model.graph.initializers))
