"""Which channels to remove (the policy half of channel pruning).

Within a dependency group every class is ranked together (global ranking across the group's
layers) and the least important go first, down to a per-group minimum. Across groups, the
ratios come either uniformly from --prune, or from measured sensitivity: each group is pruned
alone at a few ratios and the output error measured; a common error threshold t then gives each
group the largest ratio whose error stays under t (interpolated), and t is searched until the
whole model meets the target (fraction of channels removed, or fraction of MACs kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepress.passes.analysis.macs import node_macs
from edgepress.passes.pruning.channel_groups import ChannelGraph

GRID = (0.25, 0.5, 0.75)  # ratios at which each group's sensitivity is measured


@dataclass
class Group:
    """Classes whose layers change width together, and the layers (sources) they span."""

    classes: list[int]
    layers: list[ir.Node]

    @property
    def name(self) -> str:
        return self.layers[0].name if self.layers else "?"


def build_groups(cg: ChannelGraph) -> list[Group]:
    classes = cg.classes()
    groups = []
    for roots in cg.groups():
        members = {value for root in roots for value, _ in classes[root]}
        layers = [n for n in cg.sources if n.outputs[0] in members]
        groups.append(Group(roots, layers))
    return groups


def keep_count(size: int, ratio: float, min_keep: float, multiple: int) -> int:
    """Classes a group of `size` keeps at `ratio`: at least max(1, min_keep*size), rounded up
    to a multiple of `multiple` (vector widths) in groups at least 8 multiples wide."""
    keep = size - math.floor(ratio * size + 1e-9)
    keep = max(keep, math.ceil(min_keep * size), 1)
    if multiple > 1 and size >= 8 * multiple:  # rounding costs at most an eighth of the group
        keep = math.ceil(keep / multiple) * multiple
    return min(keep, size)


def choose_removed(
    groups: list[Group],
    importance: dict[int, float],
    ratios: list[float],
    min_keep: float,
    multiple: int,
) -> set[int]:
    """The least important classes of each group, as many as its ratio asks."""
    removed: set[int] = set()
    for group, ratio in zip(groups, ratios):
        keep = keep_count(len(group.classes), ratio, min_keep, multiple)
        ranked = sorted(group.classes, key=lambda r: (importance[r], r))
        removed.update(ranked[: len(group.classes) - keep])
    return removed


def removed_fraction(groups: list[Group], removed: set[int]) -> float:
    total = sum(len(g.classes) for g in groups)
    return len(removed) / total if total else 0.0


def macs_kept(graph: ir.Graph, cg: ChannelGraph, removed: set[int]) -> tuple[int, int]:
    """(MACs after removing `removed`, MACs before), from each compute node's share of kept
    input and output channels (a grouped Conv only scales with its outputs)."""
    keep = cg.keep(removed)
    before = after = 0
    for node in graph:
        macs = node_macs(node) or 0
        before += macs
        if not macs:
            continue
        factor = 1.0
        y, x = node.outputs[0], node.inputs[0]
        if y in keep:
            factor *= len(keep[y]) / cg.spaces[y].size
        grouped = node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1
        if x in keep and not grouped:
            factor *= len(keep[x]) / cg.spaces[x].size
        after += round(macs * factor)
    return after, before


def ratio_under(curve: list[float], threshold: float, cap: float) -> float:
    """The largest ratio in [0, cap] whose error (interpolated on 0 + GRID, made monotone)
    stays at most `threshold`."""
    xs = [0.0, *GRID]
    ys = np.maximum.accumulate([0.0, *curve])
    best = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 <= threshold:
            best = x1
            continue
        if y0 <= threshold < y1:
            best = x0 + (x1 - x0) * (threshold - y0) / (y1 - y0)
        break
    if best >= GRID[-1] and ys[-1] <= threshold:
        best = cap  # beyond the last measured point: no evidence of harm, go to the cap
    return min(best, cap)


def allocate(
    curves: list[list[float] | None],
    fixed: list[float | None],
    meets: Callable[[list[float]], bool],
    cap: float,
) -> tuple[list[float], float]:
    """Per-group ratios from sensitivity curves under a common error threshold, the smallest
    threshold for which `meets(ratios)` holds; groups with a fixed ratio keep it. Returns the
    ratios and the threshold (inf when even the caps do not meet the target)."""

    def ratios_at(t: float) -> list[float]:
        return [
            f if f is not None else ratio_under(c or [0.0] * len(GRID), t, cap)
            for c, f in zip(curves, fixed)
        ]

    top = max((max(c) for c in curves if c), default=0.0) + 1e-12
    if not meets(ratios_at(top)):
        return ratios_at(math.inf), math.inf
    low, high = 0.0, top
    for _ in range(40):
        mid = (low + high) / 2
        if meets(ratios_at(mid)):
            high = mid
        else:
            low = mid
    return ratios_at(high), high
