"""ONNX -> Relax: TVM's importer behind a scan that lists every op it cannot take, at once."""

from __future__ import annotations

import logging
import warnings
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
    from edgepress.backends.upstream import onnx_importer_ops

    supported = onnx_importer_ops() | {"If", "Constant"}
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    found = []
    for path, index, node in all_nodes(model.graph):
        domain = node.domain or "ai.onnx"
        if domain != "ai.onnx" or node.op_type not in supported:
            opset = opsets.get(domain, "?")
            found.append(f"{path}{node_label(node, index)} in opset {domain} {opset}")
    return found


# The ONNX ops whose nodes the lowerings list as layers, and the Relax calls TVM makes of them.
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
LAYER_CALLS = ("relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul")


def import_onnx(model: onnx.ModelProto, source: str):
    """A Relax IRModule for a model whose input shapes are static (weights stay constants), and
    {name of the Relax var bound to each Conv/ConvTranspose/Gemm/MatMul call: its ONNX node's
    name}, so the lowerings' reports name layers as the user's model does.

    TVM's importer keeps no node names: every layer node's output is imported as an extra
    output of `main`, which says which Relax value each node became; the extra outputs are
    dropped again before anything else runs.
    """
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
    marked = _with_layer_outputs(model)
    try:
        with warnings.catch_warnings():  # the marks have no type, which the importer notes
            warnings.simplefilter("ignore")
            mod = from_onnx(marked, opset=default_opset(model), keep_params_in_input=False)
    except Exception as err:  # the importer raises bare Python and TVM errors
        raise BackendError(
            f"{source}: TVM's ONNX importer failed: {first_line(err)}. If a shape computation "
            "is named, check that every input shape is fixed (--input-shape) and that the "
            "'fold_constants' pass ran."
        ) from err
    mod, names = _names_and_unmarked(mod, model, marked)
    # Conv -> BatchNorm left in the graph become one conv before BN is decomposed into
    # elementwise ops (the order matters).
    mod = relax.transform.FoldBatchnormToConv2D()(mod)
    return mod, names


def _layer_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in LAYER_OPS and n.output]


def layer_label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type} -> {node.output[0]}"


def _with_layer_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    for node in _layer_nodes(model):
        marked.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], 0, None))
    return marked


def _names_and_unmarked(mod, model: onnx.ModelProto, marked: onnx.ModelProto):
    """The module with `main` returning the model's own outputs again, and the layer names."""
    from tvm import relax

    func = mod["main"]
    blocks = list(func.body.blocks)
    last = blocks[-1]
    binding = last.bindings[-1]
    count = len(model.graph.output)
    extra = len(marked.graph.output) - count
    if extra == 0:
        return mod, {}
    value = binding.value
    if not isinstance(value, relax.Tuple) or not func.body.body.same_as(binding.var):
        log.debug("the importer's output is not a tuple binding: layers stay unnamed")
        return mod, {}
    fields = list(value.fields)
    bound = {b.var: b.value for block in blocks for b in block.bindings}
    names: dict[str, str] = {}
    for node, var in zip(_layer_nodes(model), fields[count:]):
        call = _layer_call(var, bound)
        if call is not None and call.name not in names:
            names[call.name] = layer_label(node)
    kept = fields[:count]
    out = kept[0] if count == 1 else relax.Tuple(kept)
    if count == 1:
        info = kept[0].ty
    else:
        info = relax.TupleType([f.ty for f in kept])
    result = relax.Var(binding.var.name, info)
    bindings = [*last.bindings[:-1], relax.VarBinding(result, out)]
    dataflow = isinstance(last, relax.DataflowBlock)
    blocks[-1] = relax.DataflowBlock(bindings) if dataflow else relax.BindingBlock(bindings)
    mod["main"] = relax.Function(
        func.params, relax.SeqExpr(blocks, result), info, is_pure=func.is_pure, attrs=func.attrs
    )
    mod = relax.transform.Normalize()(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, names


def _layer_call(var, bound: dict, depth: int = 3):
    """The var bound to the conv/matmul call `var`'s value comes from (its bias add, a
    reshape or transpose after it), within `depth` bindings."""
    from tvm import relax

    if not isinstance(var, relax.Var) or var not in bound:
        return None
    value = bound[var]
    op = getattr(getattr(value, "op", None), "name", None)
    if op in LAYER_CALLS:
        return var
    if depth == 0 or not isinstance(value, relax.Call):
        return None
    for arg in value.args:
        found = _layer_call(arg, bound, depth - 1)
        if found is not None:
            return found
    return None
