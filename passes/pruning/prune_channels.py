"""prune_channels: structured (channel) pruning of an ONNX graph, recovered without retraining.

analysis (channel_groups) -> scores (importance) -> policy (select_channels) -> mechanics
(slice_channels) -> recovery (reconstruct). The result has the same inputs and outputs, names
and shapes; every Conv, Gemm and MatMul whose channels are tied to a removed one is narrower.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.passes.analysis.macs import node_macs
from edgepress.passes.graph_stats import parameter_bytes
from edgepress.passes.pruning import PruningError
from edgepress.passes.pruning import importance as scores
from edgepress.passes.pruning.channel_groups import ChannelGraph, analyze, consumers
from edgepress.passes.pruning.reconstruct import (
    METHODS as RECOVERY,
    compensate_biases,
    reconstruct,
    why_not_reconstructable,
)
from edgepress.passes.pruning.select_channels import (
    GRID,
    Group,
    allocate,
    build_groups,
    choose_removed,
    macs_kept,
    removed_fraction,
)
from edgepress.passes.pruning.slice_channels import slice_channels
from edgepress.passes.quantization.sensitivity import run_samples
from edgepress.passes.registry import PassResult, register_pass

log = logging.getLogger(__name__)

SENSITIVITY_SAMPLES = 16
STATS_SAMPLES = 64


def _first(data: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in data.items()}


def output_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Relative squared error over all outputs: sum ||y - y0||^2 / sum ||y0||^2."""
    num = sum(float(np.sum(np.square(got[k] - want[k], dtype=np.float64))) for k in want)
    den = sum(float(np.sum(np.square(want[k], dtype=np.float64))) for k in want)
    return num / max(den, 1e-30)


def _fixed_ratios(
    groups: list[Group], overrides: dict[str, float], exclude: list[str], sources: list[ir.Node]
) -> list[float | None]:
    known = {n.name for n in sources}
    unknown = [name for name in [*overrides, *exclude] if name not in known]
    if unknown:
        raise PruningError(
            f"no prunable layer named {', '.join(map(repr, unknown))}; layers: "
            f"{', '.join(sorted(known))}"
        )
    fixed: list[float | None] = []
    for group in groups:
        names = {n.name for n in group.layers}
        if names & set(exclude):
            fixed.append(0.0)
        elif names & set(overrides):
            fixed.append(min(overrides[n] for n in names & set(overrides)))
        else:
            fixed.append(None)
    return fixed


def _prune_copy(proto: onnx.ModelProto, removed: set[int]) -> onnx.ModelProto:
    """A pruned copy (class ids are stable: the same graph analyzes to the same roots)."""
    clone = ir.from_proto(proto)
    slice_channels(clone.graph, analyze(clone.graph), removed)
    return ir.to_proto(clone)


def _sensitivity(
    proto: onnx.ModelProto,
    groups: list[Group],
    fixed: list[float | None],
    importance: dict[int, float],
    data: dict[str, np.ndarray],
    min_keep: float,
    multiple: int,
) -> list[list[float] | None]:
    """Each free group's output error when pruned alone at each GRID ratio."""
    reference = run_samples(proto, data)
    curves: list[list[float] | None] = []
    for group, fix in zip(groups, fixed):
        if fix is not None:
            curves.append(None)
            continue
        curve = []
        for ratio in GRID:
            removed = choose_removed([group], importance, [ratio], min_keep, multiple)
            curve.append(output_error(run_samples(_prune_copy(proto, removed), data), reference))
        curves.append(curve)
        log.debug("sensitivity of %s: %s", group.name, curve)
    return curves


def _meets(ratio, flops, graph, cg, groups, importance, min_keep, multiple):
    def meets(ratios: list[float]) -> bool:
        removed = choose_removed(groups, importance, ratios, min_keep, multiple)
        if flops is not None:
            after, before = macs_kept(graph, cg, removed)
            return after <= flops * before
        return removed_fraction(groups, removed) >= ratio - 1e-9

    return meets


def _weight_count(node: ir.Node) -> int:
    """Elements of the layer's constant weight and bias."""
    return sum(
        v.const_value.size for v in node.inputs[1:] if v is not None and v.const_value is not None
    )


def _dirty_layers(graph: ir.Graph, cg: ChannelGraph, keep: dict) -> list[ir.Node]:
    """Ungrouped compute layers whose input differs after pruning, in graph order."""
    dirty = set(keep)
    layers = []
    for node in graph:
        if any(v in dirty for v in node.inputs if v is not None):
            if node in cg.sources and why_not_reconstructable(node) is None:
                layers.append(node)
            dirty.update(node.outputs)
        elif node in cg.sources and node.outputs[0] in keep:
            dirty.update(node.outputs)
    return layers


def _bias_inputs(cg: ChannelGraph, keep: dict, means: dict[ir.Value, np.ndarray]):
    """Before slicing: (layer -> (original weight [kept outputs, inputs, ...], removed inputs),
    layer -> its input's per-channel mean)."""
    removed_inputs, layer_means = {}, {}
    for value, kept in keep.items():
        for node in consumers(cg, value):
            w0 = scores.output_slices(node)  # [outputs, inputs * kernel]
            weight = w0.reshape(w0.shape[0], cg.spaces[value].size, -1)
            outputs = keep.get(node.outputs[0])
            if outputs is not None:
                weight = weight[outputs]
            removed_inputs[node] = (weight, np.setdiff1d(np.arange(len(means[value])), kept))
            layer_means[node] = means[value]
    return removed_inputs, layer_means


def _activation_stats(original, cg, data) -> tuple[dict, dict]:
    """Per channel space: the mean of each channel over `data` (bias recovery), and the mean
    squares the activation importance ranks by."""
    names = sorted(v.name for v in cg.spaces if consumers(cg, v))
    acts = run_samples(original, data, names)
    means = {}
    for value in cg.spaces:
        if value.name in acts:
            moved = np.moveaxis(acts[value.name], cg.spaces[value].axis + 1, -1)
            means[value] = moved.reshape(-1, cg.spaces[value].size).mean(axis=0)
    return means, scores.channel_mean_squares(cg, acts)


def _cannot(ratio: float | None, flops: float | None, min_keep: float) -> PruningError:
    if flops is None:
        want = f"remove {ratio:.0%} of the channels"
    else:
        want = f"keep {flops:.0%} of the MACs"
    return PruningError(
        f"cannot {want}: with min_keep {min_keep:g}, exclusions and channels frozen by "
        "outputs or unknown ops, the prunable groups do not allow it"
    )


def _layer_details(layers_before: dict, after_cg) -> list[dict]:
    """Each pruned-from layer's channels, MACs and weights before and after."""
    after_sources = {n.name: n for n in after_cg.sources}
    return [
        {
            "name": name,
            "channels": channels,
            "kept": after_cg.spaces[n.outputs[0]].size,
            "macs": macs,
            "macs_after": node_macs(n) or 0,
            "params": params,
            "params_after": _weight_count(n),
        }
        for name, (channels, macs, params) in layers_before.items()
        for n in [after_sources[name]]
    ]


@register_pass("prune_channels")
def prune_channels(
    model: ir.Model,
    *,
    ratio: float | None = None,
    flops: float | None = None,
    importance: str = "l1",
    data: dict[str, np.ndarray] | None = None,
    recover: str | None = None,
    sensitivity: bool | None = None,
    min_keep: float = 0.1,
    multiple: int = 1,
    overrides: dict[str, float] | None = None,
    exclude: list[str] | None = None,
) -> PassResult:
    """Remove the least important fraction `ratio` of each dependency group's channels (or
    keep `flops` of the MACs), with consumers narrowed to match; then recover from `data`.

    `recover`: none, bias or lstsq (default lstsq with data, none without). `sensitivity`
    (default: with data) sets the group ratios from measured output error. Channels reaching a
    graph output or an op the analysis does not know are never removed.
    """
    if (ratio is None) == (flops is None):
        raise PruningError("give exactly one of ratio (channels to remove) or flops (MACs to keep)")
    recover = recover or ("lstsq" if data is not None else "none")
    sensitivity = data is not None if sensitivity is None else sensitivity
    if recover not in RECOVERY:
        raise PruningError(f"unknown recovery {recover!r}; expected one of {', '.join(RECOVERY)}")
    needs_data = recover != "none" or sensitivity or importance == "activation"
    if needs_data and data is None:
        raise PruningError("activation importance, sensitivity and recovery need calibration data")
    common_passes.NameFixPass()(model)
    common_passes.ShapeInferencePass()(model)  # channel counts come from value shapes
    original = ir.to_proto(model)
    cg = analyze(model.graph)
    groups = build_groups(cg)
    fixed = _fixed_ratios(groups, overrides or {}, exclude or [], cg.sources)
    macs_before = macs_kept(model.graph, cg, set())[1]
    details: dict = {"importance": importance, "recovery": recover, "groups": []}

    stats_data = _first(data, STATS_SAMPLES) if data is not None else None
    means, mean_squares = {}, None
    if importance == "activation" or recover == "bias":
        means, mean_squares = _activation_stats(original, cg, stats_data)
    ranks = scores.class_importance(cg, importance, mean_squares)

    nothing = ratio == 0.0 if flops is None else flops >= 1.0
    curves: list[list[float] | None] = [None] * len(groups)
    threshold = None
    if nothing:
        ratios = [0.0] * len(groups)
    else:
        if sensitivity:
            sens_data = _first(data, SENSITIVITY_SAMPLES)
            curves = _sensitivity(original, groups, fixed, ranks, sens_data, min_keep, multiple)
        else:
            curves = [[g for g in GRID] if f is None else None for f in fixed]  # uniform
        meets = _meets(ratio, flops, model.graph, cg, groups, ranks, min_keep, multiple)
        ratios, threshold = allocate(curves, fixed, meets, cap=1.0 - min_keep)
        if threshold == float("inf"):
            raise _cannot(ratio, flops, min_keep)
    removed = choose_removed(groups, ranks, ratios, min_keep, multiple)
    keep = cg.keep(removed)

    layers_before = {
        n.name: (cg.spaces[n.outputs[0]].size, node_macs(n) or 0, _weight_count(n))
        for n in cg.sources
    }
    params_before = parameter_bytes(model)
    bias_inputs = _bias_inputs(cg, keep, means) if recover == "bias" else None
    for group, group_ratio, curve in zip(groups, ratios, curves):
        kept = len([r for r in group.classes if r not in removed])
        details["groups"].append(
            {
                "name": group.name,
                "layers": [n.name for n in group.layers],
                "channels": len(group.classes),
                "kept": kept,
                "ratio": group_ratio,
                "sensitivity": dict(zip(GRID, curve)) if sensitivity and curve else None,
            }
        )
    layers_to_fit = _dirty_layers(model.graph, cg, keep)
    slice_channels(model.graph, cg, removed)
    fits = []
    if removed and recover == "lstsq":
        fits = reconstruct(model, original, layers_to_fit, stats_data, keep)
    elif removed and recover == "bias":
        fits = compensate_biases(model, *bias_inputs)
    common_passes.RemoveUnusedNodesPass()(model)
    after_cg = analyze(model.graph)
    details.update(
        layers=_layer_details(layers_before, after_cg),
        macs_before=macs_before,
        macs_after=macs_kept(model.graph, after_cg, set())[1],
        param_bytes_before=params_before,
        param_bytes_after=parameter_bytes(model),
        removed_channels=len(removed),
        prunable_channels=sum(len(g.classes) for g in groups),
        threshold=threshold,
        reconstruction=[fit.__dict__ for fit in fits],
        removed={
            v.name: np.setdiff1d(np.arange(cg.spaces[v].size), k).tolist() for v, k in keep.items()
        },
    )
    return PassResult(model, len(removed), details)
