"""MetaSchedule rules for the NHWC kernels both families use (common/nhwc_compute): padding
and packing copies, window kernels, depthwise convolutions and the spatial mean.

A rule is named by its compute's `schedule_rule` block attribute (kernels/rules.py registers
them); the names are part of each kernel's workload key, so tuning records stay valid only
while they stay the same.
"""

from __future__ import annotations

from edgepress.backends.kernels.common.tir_walk import sblocks
from edgepress.backends.kernels.common.tiles import (
    DEPTHWISE_ACCUMULATORS,
    STACK_ALLOCA_BYTES,
    inline_between,
    last_consumer,
    split_tile,
)

PACK_RULE = "edgepress.pack_int8"  # pads and packs (int8 and float)
INTERIOR_ATTR = "edgepress.interior"  # [first row, last row, first column, last column]
# Depthwise convolutions (NHWC, channels vectorized): a register tile of output pixels x
# channel vectors in float32 fused multiply-adds (int8 and float)
DEPTHWISE_RULE = "edgepress.depthwise_int8"
LANES_ATTR = "edgepress.lanes"  # the target's int32 (= float32) vector width
# Window kernels (max pooling): plain loops with the border cut off, which LLVM vectorizes
# over the channels.
WINDOW_RULE = "edgepress.window"
MEAN_RULE = "edgepress.spatial_mean"  # nhwc_compute.spatial_mean


PACK_UNROLL = 16  # channels per pixel up to which the pack's channel loop is unrolled



def schedule_pack(sch, block):
    """Rows in parallel; the padding rows and columns cut off, so that the interior is a
    copy without tests (or the quantization of a float input) that LLVM vectorizes. A few
    channels (an image's 3, padded to 4) are unrolled: the copy then vectorizes along the
    row. ResNet-18's input (quantized, transposed and packed in one function): 0.20 ms
    without the cut. The elementwise blocks before the pack (a dynamic quantization's
    rounding, an NCHW -> NHWC transpose) are inlined into it first: the cut copies the pack's
    block, after which they could no longer be, and would run as plain loops on one thread."""
    _inline_producers(sch, block)
    c = sch.get_loops(block)[-1]
    if int(sch.get(c).extent) <= PACK_UNROLL:
        sch.unroll(c)
    _cut_interior(sch, block)
    return [sch]



def _inline_producers(sch, block) -> None:
    """Inline every block `block` reads, transitively, where TIR allows it, but for those
    reading layout-free buffers (weights): MetaSchedule's layout rewrite of a weight read
    inside the pack broke TVM's SplitLayoutRewritePreproc (a Winograd weight transform).
    Nothing is inlined where another block names a rule: the pack then pads a kernel's
    output (a conv's, with its epilogue), which that kernel's rule schedules."""
    func = sch.mod["main"]
    own = sch.get(block)
    if any(
        "schedule_rule" in b.annotations and not b.same_as(own) for b in sblocks(func)
    ):
        return
    marked = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    free = {func.params[int(i)].name for i in (marked or ())}
    pending = list(sch.get_producers(block))
    while pending:
        producer = pending.pop()
        if free & {r.source.name for r in sch.get(producer).reads}:
            continue
        upstream = list(sch.get_producers(producer))
        try:
            sch.compute_inline(producer)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined stays where it is
            continue
        pending.extend(upstream)



def depthwise_tile(width: int, channels: int, lanes: int) -> tuple[int, int]:
    """(pixels, channels) of a depthwise register tile: exact divisors of the row and of the
    channels, the channels whole vectors where they can be; the most pixels (each weight
    vector, converted once per tile, serves them all; each converted input vector serves up to
    KW pixels of the row), then the most channels, within DEPTHWISE_ACCUMULATORS."""
    best, best_key = (1, channels), (0, 0)
    for tc in (d for d in range(1, channels + 1) if channels % d == 0):
        if channels % lanes == 0 and tc % lanes != 0:
            continue
        vectors = -(-tc // lanes)
        for tz in (d for d in range(1, width + 1) if width % d == 0):
            if tz * vectors <= DEPTHWISE_ACCUMULATORS and (tz, tc) > best_key:
                best, best_key = (tz, tc), (tz, tc)
    return best



def schedule_depthwise(sch, block):
    """Per output row (in parallel): tiles of pixels x channel vectors accumulate in registers
    over the window, which is unrolled; the requantizing epilogue runs per tile. The border
    rows and column tiles are cut off (depthwise_conv2d reads its padding in the kernel)."""
    lanes = int(sch.get(block).annotations[LANES_ATTR])
    b, y, z, c, ry, rx = sch.get_loops(block)
    width, channels = int(sch.get(z).extent), int(sch.get(c).extent)
    tile_z, tile_c = depthwise_tile(width, channels, lanes)
    z_o, z_i = split_tile(sch, z, tile_z, 16)
    c_o, c_i = split_tile(sch, c, tile_c, 64)
    sch.reorder(b, y, z_o, c_o, ry, rx, z_i, c_i)
    tile_bytes = int(sch.get(z_i).extent) * int(sch.get(c_i).extent) * 4  # float32 sums
    sch.set_scope(block, 0, "global" if tile_bytes < STACK_ALLOCA_BYTES else "local")
    final = last_consumer(sch, block)
    inline_between(sch, block, final)
    sch.reverse_compute_at(final, c_o, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(final)[-1])
    sch.vectorize(c_i)
    for loop in (z_i, ry, rx):
        sch.unroll(loop)
    # The border rows and column tiles: TIR's LoopPartition pass splits the loops the hint
    # names at the padding tests (marked likely), which then fold in every part. (The
    # schedule's own loop_partition crashes on a loop holding a reverse_compute_at block.)
    y = sch.fuse(b, y)
    for loop in (y, z_o):
        sch.annotate(loop, "pragma_loop_partition_hint", 1)
    sch.parallel(y)
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    return [sch]



def _cut_border(sch, loop, first: int, last: int) -> list:
    """Split `loop` into [0, first), [first, last], (last, end) and return the parts. The
    window's padding tests stay in every part; in the middle one the simplifier proves them
    true and drops them, and LLVM vectorizes the unconditional loads. (A wrong cut costs
    speed, not correctness.)"""
    extent = int(sch.get(loop).extent)
    if first > last:
        return [loop]  # no interior (a window wider than the input)
    factors = [f for f in (first, last - first + 1) if f > 0]
    if sum(factors) < extent:
        return list(sch.loop_partition(loop, factors))
    if first > 0:
        return list(sch.loop_partition(loop, [first]))
    return [loop]



def _cut_interior(sch, block) -> None:
    """An NHWC block's rows (in parallel, per part) and columns cut into border and interior
    (INTERIOR_ATTR); the channels left to LLVM's vectorizer. Columns are cut first: cutting
    the rows copies the loops below them. The function gets no other schedule."""
    first_row, last_row, first_col, last_col = (
        int(v) for v in sch.get(block).annotations[INTERIOR_ATTR]
    )
    b, y, z, _ = sch.get_loops(block)
    y = sch.fuse(b, y)
    _cut_border(sch, z, first_col, last_col)
    for part in _cut_border(sch, y, first_row, last_row):
        sch.parallel(part)
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")



def schedule_window(sch, block):
    """A window kernel (int8 max pooling): _cut_interior."""
    _cut_interior(sch, block)
    return [sch]



MEAN_VECTOR = 16  # channels per vector of the spatial mean (one AVX-512 register of floats)


def _mean_vector(channels: int) -> int:
    """The channels per vector: 16, else the largest of 8, 4, 2 that divides them (a
    1000-class head's pool: as one 1000-lane vector it ran at 1.2 GFLOP/s)."""
    return next((v for v in (MEAN_VECTOR, 8, 4, 2) if channels % v == 0), 1)



def schedule_spatial_mean(sch, block):
    """Per vector of channels, the sum over the pixels in one register; the epilogue (the
    division, a quantize fused behind it) vectorized the same way. What is fused before it
    (a LayerNorm's square, the reshape of a column reduction) is inlined into the sum."""
    _inline_producers(sch, block)
    b, c, *reductions = sch.get_loops(block)  # spatial_mean's rows and columns, or one axis
    channels = int(sch.get(c).extent)
    vector = _mean_vector(channels)
    c_o, c_i = sch.split(c, [channels // vector, vector])
    sch.reorder(b, c_o, *reductions, c_i)
    sch.vectorize(c_i)
    final = last_consumer(sch, block)
    if final is not None:
        inline_between(sch, block, final)
        loops = sch.get_loops(final)
        reduces = any(v.iter_type == 2 for v in sch.get(final).iter_vars)  # full_reduce's lanes
        lanes = _mean_vector(int(sch.get(loops[-1]).extent)) if loops else 1
        if not reduces and lanes > 1:
            sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    return [sch]
