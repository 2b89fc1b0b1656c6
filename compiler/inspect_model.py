"""`compress inspect`: what a model is, without building it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.compiler.model_io import load_model, to_ir
from edgepress.compiler.shapes import model_inputs
from edgepress.passes import get_pass
from edgepress.passes.analysis.macs import count_macs


def _dims(value: ir.Value) -> list:
    if value.shape is None:
        return ["?"]
    return [d if isinstance(d, int) else (d.value or "?") for d in value.shape]


def summarize(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    proto = load_model(Path(path))
    model = to_ir(proto, path)
    inputs = model_inputs(model)
    for value in inputs:
        if input_shapes and value.name in input_shapes:
            value.shape = ir.Shape(input_shapes[value.name])
    try:
        common_passes.ShapeInferencePass(strict_mode=False)(model)
    except Exception:  # inspection works on models shape inference cannot handle
        pass
    static = all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in inputs)
    histogram = Counter(
        (f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    params = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
    return {
        "path": str(path),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "ir_version": proto.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "inputs": [{"name": v.name, "shape": _dims(v), "dtype": str(v.dtype)} for v in inputs],
        "outputs": [
            {"name": v.name, "shape": _dims(v), "dtype": str(v.dtype)} for v in model.graph.outputs
        ],
        "nodes": sum(histogram.values()),
        "op_histogram": dict(histogram.most_common()),
        "parameters": int(sum(t.size for t in params)),
        "parameter_bytes": int(sum(t.nbytes for t in params)),
        "macs": _macs(model, static),
    }


def _macs(model: ir.Model, static_inputs: bool) -> int | None:
    """MACs need every counted op's shape; with static inputs, folding shape subgraphs gives them."""
    macs = count_macs(model)
    if macs is None and static_inputs:
        try:
            macs = count_macs(get_pass("fold_constants")(model).model)
        except Exception:  # an unfoldable model still gets the rest of its description
            return None
    return macs


def render(info: dict) -> str:
    lines = [
        f"{info['path']}",
        f"  producer: {info['producer'] or '-'}   IR version "
        f"{info['ir_version']}   opsets: "
        + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()),
    ]
    for kind in ("inputs", "outputs"):
        lines.append(f"  {kind}:")
        for v in info[kind]:
            lines.append(f"    {v['name']}: {v['dtype']} [{', '.join(map(str, v['shape']))}]")
    lines.append(f"  parameters: {info['parameters']:,} ({info['parameter_bytes']:,} bytes)")
    macs = info["macs"]
    lines.append(
        "  MACs: "
        + (
            f"{macs:,} ({macs / 1e9:.3f} G)"
            if macs is not None
            else "unknown (dynamic dims: pass --input-shape)"
        )
    )
    lines.append(f"  nodes: {info['nodes']}")
    for op, n in info["op_histogram"].items():
        lines.append(f"    {op:<28} {n}")
    return "\n".join(lines)
