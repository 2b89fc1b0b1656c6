"""Removing chosen channels from the graph (the mechanics half of channel pruning).

Given the channels each value keeps, every node touching such a value gets its constants cut:
a source's output rows and input columns, per-channel parameters of channel-wise ops, the
sizes of Split, Reshape and Resize, and the group count of grouped Convs. Value shapes follow.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.naming import add_initializer
from edgepress.passes.pruning.channel_groups import PER_CHANNEL_PARAMS, ChannelGraph


def _replace(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray) -> None:
    base = f"{node.name or node.op_type}_pruned"
    node.replace_input_with(index, add_initializer(graph, base, np.ascontiguousarray(array)))


def _kept(keep: dict[ir.Value, np.ndarray], value: ir.Value | None) -> np.ndarray | None:
    return keep.get(value) if value is not None else None


def _slice_source(graph: ir.Graph, node: ir.Node, keep: dict) -> None:
    w = constant_array(node.inputs[1])
    out_keep, in_keep = _kept(keep, node.outputs[0]), _kept(keep, node.inputs[0])
    op = node.op_type
    bias_index = None
    if op == "Conv":
        group = node.attributes.get_int("group", 1)
        if out_keep is not None:
            if group > 1:
                node.attributes["group"] = ir.AttrInt64(
                    "group", group * len(out_keep) // w.shape[0]
                )
            w = w[out_keep]
        if in_keep is not None and group == 1:
            w = w[:, in_keep]
        bias_index = 2
    elif op == "ConvTranspose":
        w = w if in_keep is None else w[in_keep]
        w = w if out_keep is None else w[:, out_keep]
        bias_index = 2
    elif op == "Gemm":
        rows, cols = (
            (out_keep, in_keep)
            if node.attributes.get_int("transB", 0)
            else (
                in_keep,
                out_keep,
            )
        )
        w = w if rows is None else w[rows]
        w = w if cols is None else w[:, cols]
        bias_index = 2
    else:  # MatMul: [K, N]
        w = w if in_keep is None else w[in_keep]
        w = w if out_keep is None else w[:, out_keep]
    _replace(graph, node, 1, w)
    if out_keep is not None and bias_index is not None and len(node.inputs) > bias_index:
        bias = constant_array(node.inputs[bias_index])
        if bias is not None and bias.ndim >= 1 and bias.shape[-1] > 1:
            _replace(graph, node, bias_index, bias[..., out_keep])


def _slice_params(graph: ir.Graph, node: ir.Node, keep: dict, cg: ChannelGraph) -> None:
    """Constant operands of a channel-wise or elementwise node, cut to its output's channels."""
    y = node.outputs[0]
    out_keep = _kept(keep, y)
    if out_keep is None:
        return
    space = cg.spaces[y]
    old, rank = space.size, len(y.shape)
    for index, value in enumerate(node.inputs):
        if value is None or value in cg.spaces:
            continue
        array = constant_array(value)
        if array is None:
            continue
        if node.op_type in PER_CHANNEL_PARAMS:
            if array.ndim == 1 and array.shape[0] == old:
                _replace(graph, node, index, array[out_keep])
            continue
        axis = space.axis - (rank - array.ndim)
        if axis >= 0 and array.shape[axis] == old and old > 1:
            _replace(graph, node, index, np.take(array, out_keep, axis=axis))


def _fix_sizes(graph: ir.Graph, node: ir.Node, keep: dict, cg: ChannelGraph) -> None:
    """Split sizes, a Reshape target and Resize sizes name channel counts: recount them."""
    op = node.op_type
    if op == "Split" and _kept(keep, node.inputs[0]) is not None:
        sizes = [len(keep[y]) if y in keep else cg.spaces[y].size for y in node.outputs]
        if node.attributes.get("split") is not None:
            node.attributes["split"] = ir.AttrInt64s("split", sizes)
        elif len(node.inputs) > 1 and node.inputs[1] is not None:
            _replace(graph, node, 1, np.array(sizes, np.int64))
        elif len(set(sizes)) > 1:
            node.resize_inputs(2)
            _replace(graph, node, 1, np.array(sizes, np.int64))
            if node.attributes.get("num_outputs") is not None:
                del node.attributes["num_outputs"]
    elif op == "Reshape" and node.outputs[0] in keep:
        shape = constant_array(node.inputs[1]).copy()
        if shape[1] > 0:
            shape[1] = len(keep[node.outputs[0]])
            _replace(graph, node, 1, shape)
    elif op == "Resize" and node.outputs[0] in keep and len(node.inputs) > 3:
        sizes = constant_array(node.inputs[3])
        if sizes is not None and sizes.size:
            sizes = sizes.copy()
            sizes[cg.spaces[node.outputs[0]].axis] = len(keep[node.outputs[0]])
            _replace(graph, node, 3, sizes)


def slice_channels(graph: ir.Graph, cg: ChannelGraph, removed: set[int]) -> int:
    """Remove the classes `removed` (union-find roots of `cg`) from `graph`; returns the number
    of nodes changed. Value shapes are updated along their channel axis."""
    keep = cg.keep(removed)
    if not keep:
        return 0
    changed = 0
    for node in list(graph):
        touched = any(v in keep for v in (*node.inputs, *node.outputs) if v is not None)
        if not touched:
            continue
        changed += 1
        if node in cg.sources:
            _slice_source(graph, node, keep)
        else:
            _slice_params(graph, node, keep, cg)
            _fix_sizes(graph, node, keep, cg)
    for value, kept in keep.items():
        dims = list(value.shape)
        dims[cg.spaces[value].axis] = len(kept)
        value.shape = ir.Shape(dims)
    return changed
