"""The one registry of passes: name -> function from an onnx_ir model to a PassResult."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir


@dataclass
class PassResult:
    """What a pass returns: the model (possibly the same object, changed in place) and an
    honest count of the rewrites it made."""

    model: ir.Model
    changes: int
    details: dict | None = None  # what the report shows beyond the count (pruning's plan)


PassFn = Callable[..., PassResult]
PASSES: dict[str, PassFn] = {}

# The order `compress` runs when --passes is not given: fold shapes and constants first (the
# fusions need static shapes and constant operands), resolve sequences of known length into
# their tensors, unroll recurrent layers (their step count is a static shape), compute integer
# ops in float (TVM imports neither) and take nearest Resizes TVM maps wrongly as Gathers, drop
# what does nothing, read one-hot products as lookups, then fuse (BN before the per-channel
# affine fold, which would otherwise take BN's decomposed form), turn 1-D convs along the width
# and stride-sized ConvTransposes into 1x1 Convs (after the fusions that match a Conv's
# consumers), compute LRNs as 1x1 Convs over their channel windows, then simplify Pow (after
# the fusions, whose patterns match it) and clean up what the fusions left.
DEFAULT_PIPELINE: list[str] = [
    "fold_constants",
    "resolve_sequences",
    "unroll_recurrent",
    "lower_integer_ops",
    "gather_nearest_resize",
    "sum_as_add",
    "remove_no_ops",
    "one_hot_matmul_as_gather",
    "fuse_conv_bn",
    "fold_conv_affine",
    "conv_along_width",
    "conv_transpose_as_depth_to_space",
    "lrn_as_conv",
    "fuse_matmul_add",
    "fuse_layer_norm",
    "fuse_gelu",
    "fuse_hard_swish",
    "simplify_pow",
    "eliminate_dead_code",
    "deduplicate_initializers",
    "remove_unused_inputs",
]


def register_pass(name: str) -> Callable[[PassFn], PassFn]:
    """Register `fn` under `name`; a name can be registered once."""

    def wrap(fn: PassFn) -> PassFn:
        if name in PASSES:
            raise ValueError(f"pass '{name}' is registered twice")
        PASSES[name] = fn
        return fn

    return wrap


def get_pass(name: str) -> PassFn:
    """The pass called `name`; an unknown name raises listing the known ones."""
    try:
        return PASSES[name]
    except KeyError:
        known = ", ".join(sorted(PASSES))
        raise KeyError(f"unknown pass '{name}'; known passes: {known}") from None
