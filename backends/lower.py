"""ONNX -> Relax: TVM's importer behind a scan that lists every op it cannot take, at once."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx

from edgepress.compiler.errors import BackendError, UnsupportedOpError, first_line, node_label

log = logging.getLogger(__name__)


def all_nodes(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, int, onnx.NodeProto]]:
    """(where, index, node) for every node of the graph and its subgraphs."""
    for index, node in enumerate(graph.node):
        yield path, index, node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g, f"{path}{node.name or node.op_type}.{attr.name}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_nodes(g, f"{path}{node.name or node.op_type}.{attr.name}/")


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 1


def unsupported_nodes(model: onnx.ModelProto) -> list[str]:
    """Labels of every node TVM's ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"If", "Constant"}
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    found = []
    for path, index, node in all_nodes(model.graph):
        domain = node.domain or "ai.onnx"
        if domain != "ai.onnx" or node.op_type not in supported:
            opset = opsets.get(domain, "?")
            found.append(f"{path}{node_label(node, index)} in opset {domain} {opset}")
    return found


def import_onnx(model: onnx.ModelProto, source: str):
    """A Relax IRModule for a model whose input shapes are static; weights stay constants."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_nodes(model)
    if missing:
        raise UnsupportedOpError(
            f"{source}: TVM cannot lower {len(missing)} node(s): "
            + "; ".join(missing)
            + ". Remove or replace these operators before compiling (the model.onnx written by "
            "the passes still runs in onnxruntime)."
        )
    try:
        mod = from_onnx(model, opset=default_opset(model), keep_params_in_input=False)
    except Exception as err:  # the importer raises bare Python and TVM errors
        raise BackendError(
            f"{source}: TVM's ONNX importer failed: {first_line(err)}. If a shape computation "
            "is named, check that every input shape is fixed (--input-shape) and that the "
            "'fold_constants' pass ran."
        ) from err
    # Conv -> BatchNorm left in the graph become one conv before BN is decomposed into
    # elementwise ops (the order matters).
    mod = relax.transform.FoldBatchnormToConv2D()(mod)
    return mod
