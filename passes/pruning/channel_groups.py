"""Which channels of an ONNX graph are tied together (the analysis half of channel pruning).

Every channel of every float activation is an element `(value, c)`; ops tie elements that must
be removed together, in a union-find:
- a source (Conv, ConvTranspose, Gemm, MatMul with a constant weight) starts new channels: its
  output channels are tied to nothing upstream, and it consumes its input channels (removing one
  deletes a slice of its weight);
- channel-wise ops (activations, BatchNormalization, pools, Resize, Pad, reductions over other
  axes) tie input channel c to output channel c;
- elementwise binary ops (a residual Add, an SE Mul) tie channel c of every full-width input to
  channel c of the output: residual channels are removed together or not at all;
- Concat and Split on the channel axis tie by offset; Flatten/Reshape into a 2-D tensor tie
  input channel c to the block of features c*HW .. c*HW+HW-1;
- a grouped Conv ties all input and output channels of one group (depthwise: channel c in to
  channel c out): only whole groups can go.
An equivalence class is one removable channel. It is frozen (never removed) when any member
lies on a graph input or output, or meets an op this analysis does not know. A group is a
connected set of values: the layers whose channel counts change together.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgepress.passes.constants import constant_array
from edgepress.passes.decompose.lrn_as_conv import is_window_sum

SOURCES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CHANNEL_WISE = {
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "Identity", "Dropout",
    "Cast", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round",
    "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Resize", "Upsample", "Pad",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Softmax", "LogSoftmax",
}  # fmt: skip
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"}
FLATTENING = {"Flatten", "Reshape", "Squeeze"}
PER_CHANNEL_PARAMS = {"BatchNormalization", "InstanceNormalization"}  # 1-D params indexed by c


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def _is_float(value: ir.Value) -> bool:
    return value.type is not None and value.dtype in (
        ir.DataType.FLOAT,
        ir.DataType.FLOAT16,
        ir.DataType.BFLOAT16,
        ir.DataType.DOUBLE,
    )


@dataclass
class Space:
    """The channel axis of one tracked value and where its elements start in the union-find."""

    value: ir.Value
    axis: int
    size: int
    base: int


@dataclass
class ChannelGraph:
    """The union-find over channels, plus what the policy and mechanics need to know."""

    spaces: dict[ir.Value, Space] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)  # element -> why (before find)
    sources: list[ir.Node] = field(default_factory=list)  # nodes whose output channels start

    # -- union-find -------------------------------------------------------------------------
    def _new(self, value: ir.Value, axis: int, size: int) -> Space:
        space = Space(value, axis, size, len(self.parent))
        self.parent.extend(range(space.base, space.base + size))
        self.spaces[value] = space
        return space

    def find(self, element: int) -> int:
        root = element
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[element] != root:
            self.parent[element], element = root, self.parent[element]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def element(self, value: ir.Value, channel: int) -> int:
        return self.spaces[value].base + channel

    def freeze(self, value: ir.Value | None, why: str) -> None:
        space = self.spaces.get(value) if value is not None else None
        if space is not None:
            for c in range(space.size):
                self.frozen.setdefault(space.base + c, why)

    # -- results ----------------------------------------------------------------------------
    def classes(self) -> dict[int, list[tuple[ir.Value, int]]]:
        """Root -> its members (value, channel)."""
        members: dict[int, list[tuple[ir.Value, int]]] = defaultdict(list)
        for space in self.spaces.values():
            for c in range(space.size):
                members[self.find(space.base + c)].append((space.value, c))
        return dict(members)

    def frozen_roots(self) -> dict[int, str]:
        roots: dict[int, str] = {}
        for element, why in self.frozen.items():
            roots.setdefault(self.find(element), why)
        return roots

    def removable(self) -> dict[int, list[tuple[ir.Value, int]]]:
        """Classes that may be removed: not frozen, and started by a source."""
        frozen = self.frozen_roots()
        started = {n.outputs[0] for n in self.sources}
        return {
            root: members
            for root, members in self.classes().items()
            if root not in frozen and any(v in started for v, _ in members)
        }

    def groups(self) -> list[list[int]]:
        """Removable classes grouped by connected values (classes sharing any value), each
        group's classes in order of first channel."""
        removable = self.removable()
        owner: dict[ir.Value, int] = {}
        parent = {root: root for root in removable}

        def top(r: int) -> int:
            while parent[r] != r:
                r = parent[r]
            return r

        for root, members in removable.items():
            for value, _ in members:
                if value in owner:
                    a, b = top(owner[value]), top(root)
                    parent[max(a, b)] = min(a, b)
                else:
                    owner[value] = root
        grouped: dict[int, list[int]] = defaultdict(list)
        for root in sorted(removable):
            grouped[top(root)].append(root)
        return list(grouped.values())

    def keep(self, removed: set[int]) -> dict[ir.Value, np.ndarray]:
        """For each value losing channels, the sorted indices it keeps."""
        kept = {}
        for value, space in self.spaces.items():
            gone = [c for c in range(space.size) if self.find(space.base + c) in removed]
            if gone:
                kept[value] = np.setdiff1d(np.arange(space.size), gone)
        return kept


def _channel_axis(node: ir.Node, out_rank: int) -> int:
    return out_rank - 1 if node.op_type == "MatMul" else 1


def _weight(node: ir.Node) -> np.ndarray | None:
    return constant_array(node.inputs[1]) if len(node.inputs) > 1 else None


def why_not_source(node: ir.Node, graph: ChannelGraph) -> str | None:
    """None when `node` is a source this analysis can slice, else why not."""
    weight = _weight(node)
    x = node.inputs[0]
    if node.op_type == "Conv" and is_window_sum(node.name or ""):
        return "an LRN's window sum (lrn_as_conv): slicing it would change the LRN's windows"
    if weight is None:
        return "its weight is not a constant"
    if any(inp is not None and constant_array(inp) is None for inp in node.inputs[2:]):
        return "its bias is not a constant"
    space = graph.spaces.get(x)
    if node.op_type in ("Conv", "ConvTranspose"):
        group = node.attributes.get_int("group", 1)
        if node.op_type == "ConvTranspose" and group != 1:
            return "grouped ConvTranspose"
        if space is not None and space.axis != 1:
            return "its input's channel axis is not 1"
        if group != 1 and space is None:
            return "grouped, on an input whose channels are not tracked"
        return None
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return "Gemm with transA"
        return None
    if weight.ndim != 2:
        return "MatMul with a weight of rank other than 2"
    if space is not None and space.axis != len(space.value.shape) - 1:
        return "MatMul over an input whose channel axis is not the last"
    return None


def _tie_source(node: ir.Node, graph: ChannelGraph) -> None:
    y = node.outputs[0]
    dims = _dims(y)
    if dims is None or not _is_float(y):
        graph.freeze(node.inputs[0], f"{node.op_type} '{node.name}' output shape unknown")
        return
    out = graph._new(y, _channel_axis(node, len(dims)), dims[_channel_axis(node, len(dims))])
    graph.sources.append(node)
    group = node.attributes.get_int("group", 1) if node.op_type == "Conv" else 1
    x_space = graph.spaces.get(node.inputs[0])
    if group > 1 and x_space is not None:
        in_per, out_per = x_space.size // group, out.size // group
        for g in range(group):
            first = out.base + g * out_per
            for c in range(g * in_per, (g + 1) * in_per):
                graph.union(first, x_space.base + c)
            for c in range(g * out_per, (g + 1) * out_per):
                graph.union(first, out.base + c)


def _tie_same(node: ir.Node, graph: ChannelGraph, x: ir.Value) -> None:
    """Output channel c is input channel c (same axis)."""
    space = graph.spaces[x]
    y = node.outputs[0]
    dims = _dims(y)
    if dims is None or len(dims) <= space.axis or dims[space.axis] != space.size:
        graph.freeze(x, f"{node.op_type} '{node.name}' changes the channel axis")
        return
    out = graph._new(y, space.axis, space.size)
    for c in range(space.size):
        graph.union(space.base + c, out.base + c)


def why_not_channel_wise(node: ir.Node, space: Space) -> str | None:
    op = node.op_type
    rank = len(space.value.shape)
    if op == "Pad":
        pads = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None and node.attributes.get("pads") is not None:
            pads = np.array(node.attributes.get_ints("pads"))
        if pads is None or pads.reshape(-1)[space.axis] != 0 or pads.reshape(-1)[space.axis + rank]:
            return "Pad whose pads are not constant or pad the channel axis"
    if op.startswith("Reduce"):
        if not node.attributes.get_int("keepdims", 1):
            return f"{op} without keepdims"
        axes = node.attributes.get("axes")
        axes = (
            axes.as_ints()
            if axes is not None
            else (constant_array(node.inputs[1]) if len(node.inputs) > 1 else None)
        )
        if axes is None or space.axis in [int(a) % rank for a in np.reshape(axes, -1)]:
            return f"{op} over the channel axis"
    if op in ("Softmax", "LogSoftmax"):
        # The default axis moved from 1 to -1 at opset 13: only an explicit one is trusted.
        if node.attributes.get("axis") is None:
            return f"{op} without an explicit axis"
        if node.attributes.get_int("axis") % rank == space.axis:
            return f"{op} over the channel axis"
    if op in PER_CHANNEL_PARAMS and space.axis != 1:
        return f"{op} on a value whose channel axis is not 1"
    return None


def _tie_elementwise(node: ir.Node, graph: ChannelGraph) -> None:
    y = node.outputs[0]
    dims = _dims(y)
    tracked = [v for v in node.inputs if v in graph.spaces]
    axis = graph.spaces[tracked[0]].axis
    size = dims[axis] if dims is not None and axis < len(dims) else None
    ok = size is not None and _is_float(y)
    for v in node.inputs:
        if v is None or not ok:
            continue
        vd = _dims(v)
        if vd is None:
            ok = False
            continue
        aligned = axis - (len(dims) - len(vd))
        wide = aligned >= 0 and vd[aligned] == size and size > 1
        space = graph.spaces.get(v)
        if space is not None:
            ok = ok and (not wide or (space.axis == aligned and space.size == size))
        elif wide and constant_array(v) is None:
            ok = False  # an untracked full-width operand: its channels cannot follow ours
    if not ok:
        for v in tracked:
            graph.freeze(v, f"{node.op_type} '{node.name}': operands do not line up by channel")
        return
    out = graph._new(y, axis, size)
    for v in tracked:
        space = graph.spaces[v]
        if space.size == size:
            for c in range(size):
                graph.union(space.base + c, out.base + c)


def _split_sizes(node: ir.Node, total: int) -> list[int] | None:
    if node.attributes.get("split") is not None:
        return list(node.attributes.get_ints("split"))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = constant_array(node.inputs[1])
        return None if sizes is None else [int(s) for s in sizes]
    count = len(node.outputs)
    if total % count:
        per = math.ceil(total / count)
        return [per] * (count - 1) + [total - per * (count - 1)]
    return [total // count] * count


def _tie_concat_split(node: ir.Node, graph: ChannelGraph) -> None:
    x_spaces = [graph.spaces.get(v) for v in node.inputs]
    first = next(s for s in x_spaces if s is not None)
    rank = len(first.value.shape)
    axis = node.attributes.get_int("axis", 0) % rank
    why = f"{node.op_type} '{node.name}'"
    if node.op_type == "Concat":
        y, dims = node.outputs[0], _dims(node.outputs[0])
        if dims is None or any(s is None or s.axis != first.axis for s in x_spaces):
            for v in node.inputs:
                graph.freeze(v, f"{why}: an input's channels are not tracked")
            return
        if axis == first.axis:
            out = graph._new(y, axis, dims[axis])
            offset = 0
            for s in x_spaces:
                for c in range(s.size):
                    graph.union(s.base + c, out.base + offset + c)
                offset += s.size
            return
        out = graph._new(y, first.axis, first.size)
        for s in x_spaces:
            for c in range(s.size):
                graph.union(s.base + c, out.base + c)
        return
    sizes = _split_sizes(node, first.size)
    if axis != first.axis or sizes is None:
        graph.freeze(node.inputs[0], f"{why}: not a constant split of the channel axis")
        return
    offset = 0
    for y, size in zip(node.outputs, sizes):
        out = graph._new(y, axis, size)
        for c in range(size):
            graph.union(first.base + offset + c, out.base + c)
        offset += size


def _tie_flatten(node: ir.Node, graph: ChannelGraph) -> None:
    """[N, C, *S] -> [N, C * prod(S)]: channel c becomes a block of prod(S) features."""
    x = node.inputs[0]
    space = graph.spaces[x]
    xd, yd = _dims(x), _dims(node.outputs[0])
    block = math.prod(xd[2:]) if xd is not None else 0
    ok = (
        space.axis == 1
        and yd is not None
        and len(yd) == 2
        and yd[0] == xd[0]
        and yd[1] == space.size * block
        and (node.op_type != "Flatten" or node.attributes.get_int("axis", 1) == 1)
    )
    if node.op_type == "Reshape" and ok:
        ok = constant_array(node.inputs[1]) is not None
    if not ok:
        graph.freeze(x, f"{node.op_type} '{node.name}' is not a flatten of [N, C, ...]")
        return
    out = graph._new(node.outputs[0], 1, yd[1])
    for c in range(space.size):
        for s in range(block):
            graph.union(space.base + c, out.base + c * block + s)


def analyze(graph: ir.Graph) -> ChannelGraph:
    """The channel union-find of `graph` (topologically sorted, static shapes)."""
    cg = ChannelGraph()
    for value in graph.inputs:
        dims = _dims(value)
        if dims is not None and len(dims) >= 2 and _is_float(value):
            cg._new(value, 1, dims[1])
            cg.freeze(value, f"graph input '{value.name}'")
    for node in graph:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        tracked = [v for v in node.inputs if v is not None and v in cg.spaces]
        if op in SOURCES and not (why := why_not_source(node, cg)):
            _tie_source(node, cg)
            continue
        if op in SOURCES and why:
            reason = f"{op} '{node.name}': {why}"
        elif not tracked:
            continue  # nothing tracked flows in (shape arithmetic, constants)
        elif op in CHANNEL_WISE and not (why := why_not_channel_wise(node, cg.spaces[tracked[0]])):
            if len(tracked) == 1 and node.inputs[0] is tracked[0]:
                _tie_same(node, cg, tracked[0])
                continue
            reason = f"{op} '{node.name}': a tracked value is not its data input"
        elif op in ELEMENTWISE:
            _tie_elementwise(node, cg)
            continue
        elif op in ("Concat", "Split"):
            _tie_concat_split(node, cg)
            continue
        elif op in FLATTENING and node.inputs[0] is tracked[0]:
            _tie_flatten(node, cg)
            continue
        else:
            reason = f"{op} '{node.name}': {why}" if op in CHANNEL_WISE else f"unknown op {op}"
        for v in tracked:
            cg.freeze(v, reason)
    for value in graph.outputs:
        cg.freeze(value, f"graph output '{value.name}'")
    return cg


def consumers(cg: ChannelGraph, value: ir.Value) -> list[ir.Node]:
    """Sources that read `value`'s channels as their input channels (they lose weight slices)."""
    return [
        node
        for node, index in value.uses()
        if index == 0 and node in cg.sources and _consumes_inputs(node)
    ]


def _consumes_inputs(node: ir.Node) -> bool:
    return node.op_type != "Conv" or node.attributes.get_int("group", 1) == 1
