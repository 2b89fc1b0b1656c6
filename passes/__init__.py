"""ONNX-to-ONNX graph passes over onnx_ir models, each registered once in `registry`."""

from edgepress.passes.registry import PASSES, DEFAULT_PIPELINE, PassResult, get_pass, register_pass

# Importing the pass modules registers them.
from edgepress.passes.cleanup import (  # noqa: F401
    deduplicate_initializers,
    eliminate_dead_code,
    fold_constants,
    remove_no_ops,
    remove_unused_inputs,
    simplify_pow,
    sum_as_add,
)
from edgepress.passes.decompose import (  # noqa: F401
    conv_along_width,
    conv_transpose_as_depth_to_space,
    gather_nearest_resize,
    lower_integer_ops,
    lrn_as_conv,
    one_hot_matmul_as_gather,
    resolve_sequences,
    unroll_recurrent,
)
from edgepress.passes.fusion import (  # noqa: F401
    fold_conv_affine,
    fuse_conv_bn,
    fuse_gelu,
    fuse_hard_swish,
    fuse_layer_norm,
    fuse_matmul_add,
)
from edgepress.passes.quantization import (  # noqa: F401
    equalize_cross_layer,
    equalize_depthwise_inputs,
    quantize_int8,
)
from edgepress.passes.pruning import prune_channels  # noqa: F401

__all__ = ["PASSES", "DEFAULT_PIPELINE", "PassResult", "get_pass", "register_pass"]
