"""The CPU schedule of a fused function that is elementwise with broadcasting: whole vectors
of the innermost axis, the other axes fused and run in parallel.

Between edgepress's kernels, a model leaves chains of elementwise ops that fuse into no kernel
(DenseNet's batch norm and ReLU after each concatenation, an int8 concatenation's
requantize). MetaSchedule's one untimed sample of such a function fuses every axis and
vectorizes that by 64: where the channels are not a multiple of 64, each vector's channel
indices wrap and every per-channel operand is gathered, lane by lane (DenseNet-121's 58
batch norms in int8: 11 ms of its 28, at 5% of the CPU's peak). Here the channels are the
vector axis, so a per-channel operand is one vector load.

A function qualifies when every block is spatial, writes its buffer at its own iteration
variables and reads every buffer at those variables in order, or at constants (a broadcast
operand of shape [1, 1, 1, C] or a scalar): no transposes, reshapes, slices or reductions,
which keep TVM's sample. A function where a block names a schedule rule of edgepress's (the
next conv's padding, which FuseOps puts behind the chain) is that rule's: the pack rule
inlines the chain into the pad and copies the interior without tests.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SPATIAL = 0  # tirx.IterVar's DataPar


def _broadcast_index(indices, names: list[str]) -> bool:
    """Whether `indices` (a region's mins, extents 1) read an operand as broadcasting does:
    each index a constant or the next of the block's variables, in order."""
    from tvm import tirx

    at = 0
    for index in indices:
        if isinstance(index, tirx.IntImm):
            continue
        if not isinstance(index, tirx.Var) or index.name not in names[at:]:
            return False
        at = names.index(index.name, at) + 1
    return True


def why_not_elementwise(func) -> str | None:
    """None where `func` qualifies (module docstring), else why not."""
    from tvm import tirx

    from edgepress.backends.kernels.common.tir_walk import sblocks

    blocks = [b for b in sblocks(func) if b.name_hint != "root"]
    if not blocks:
        return "no blocks"
    outputs = {p.name for p in func.params}
    written_out = [b for b in blocks if any(w.source.name in outputs for w in b.writes)]
    if len(written_out) != 1 or written_out[0] is not blocks[-1]:
        return "not one output, written last"
    for block in blocks:
        if "schedule_rule" in block.annotations:
            return f"{block.name_hint} has its own rule"
        if block.init is not None or any(v.iter_type != SPATIAL for v in block.iter_vars):
            return f"{block.name_hint} reduces"
        if len(block.writes) != 1:
            return f"{block.name_hint} writes {len(block.writes)} buffers"
        names = [v.var.name for v in block.iter_vars]
        write = block.writes[0]
        if [getattr(r.min, "name", None) for r in write.region] != names:
            return f"{block.name_hint} writes at other indices than its own"
        for read in block.reads:
            if any(not isinstance(r.extent, tirx.IntImm) or int(r.extent) != 1
                   for r in read.region):  # fmt: skip
                return f"{block.name_hint} reads a region"
            if not _broadcast_index([r.min for r in read.region], names):
                return f"{block.name_hint} reads {read.source.name} out of order"
    return None


def vector_width(extent: int, lanes: int) -> int | None:
    """The widest vector of `lanes`, half or a quarter of it (at least 4 floats) that divides
    `extent`: 24 channels (PP-OCR's) as three vectors of 8 on AVX-512; else None."""
    return next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and extent % w == 0), None)


def schedule_elementwise(func, lanes: int):
    """`func` scheduled as the module docstring says, or None where it does not qualify or
    its innermost axis is not whole vectors of at least 4 (vector_width)."""
    import tvm
    from tvm import s_tir

    why = why_not_elementwise(func)
    if why is not None:
        log.debug("not elementwise: %s", why)
        return None
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    *producers, out = blocks
    for block in producers:
        sch.compute_inline(block)
    *outer, last = sch.get_loops(out)
    extent = int(sch.get(last).extent)
    width = vector_width(extent, lanes)
    if width is None:
        log.debug("innermost axis of %d is not whole vectors of %d", extent, lanes)
        return None
    vectors, lane = sch.split(last, [None, width])
    sch.vectorize(lane)
    # one parallel loop over every vector: TVM hands each thread a contiguous range of it,
    # and a shape with one row ([1, 1000] logits, a flattened image) still runs on all
    sch.parallel(sch.fuse(*outer, vectors) if outer else vectors)
    return sch.mod["main"]
