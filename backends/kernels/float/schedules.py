"""MetaSchedule rule for the float32 NHWC convolution (float/compute.conv2d_nhwc): a register
tile of pixels x channel blocks around broadcast fused multiply-adds, with the epilogue (bias,
relu or clip, a residual add) computed per tile. The same shape as the int8 rule
(int8/schedules), without a tensor intrinsic: LLVM vectorizes the `lanes` loop.

The tile sizes are sampled decisions (float_tile gives the untuned default), so tuning still
searches them.
"""

from __future__ import annotations

from edgepress.backends.kernels.common.tiles import (
    FLOAT_ACCUMULATORS,
    PREFETCH_MIN_BYTES,
    STACK_ALLOCA_BYTES,
    inline_between,
    last_consumer,
    padded_row,
    rebuild,
    split_tile,
    unroll_epilogue,
)
from edgepress.backends.kernels.common.tir_walk import sblocks

RULE = "edgepress.conv2d_float"
# [bytes of weights per ob_o step, output rows, reduction steps, ob_o steps in the weights] on
# the tile's innermost reduction loop, for inject_weight_prefetch.
PREFETCH_ATTR = "edgepress.prefetch_float_weights"
LINE = 64  # bytes per cache line
# Accumulators per tile, by float32 lanes per vector (tiles.FLOAT_ACCUMULATORS says why).
ACCUMULATORS = {lanes: budget.accumulators for lanes, budget in FLOAT_ACCUMULATORS.items()}
# Below this many multiply-adds per output (input channels x window), a tile of few pixels
# and many channel blocks ran fastest: the layer is bound by its epilogue and its stores.
SHALLOW_DEPTH = 64
SHALLOW_BLOCKS = 6
DEEP_BLOCKS = 2
ROWS_OUTER_BYTES = 64 * 1024  # weights of at most this go rows-outside (rows_outer)
# Weights of a tile's channel blocks up to this stay in L1 (48 KB on the Intel Xeons seen,
# 32 KB on Zen): there a tile may take more than DEEP_BLOCKS blocks (_fewest_loads).
L1_STEP_BYTES = 32 * 1024


def _divisors(n: int, most: int) -> list[int]:
    return [d for d in range(1, min(n, most) + 1) if n % d == 0]


def float_tile(width: int, blocks: int, depth: int, lanes: int) -> tuple[int, int]:
    """(pixels, channel blocks) of the register tile: exact divisors of the row and of the
    channel blocks, within the target's accumulators.

    Deep layers take the most accumulators with at most 2 blocks (then the most blocks): each
    weight vector serves the tile's pixels. Sweeps on AVX-512 (1 thread, the kernel alone):
    ResNet-18's 3x3 convs ran at 150-170 GFLOP/s on 7 x 2 (56x56x64 1.34 ms, 14 x 1 1.36,
    4 x 2 1.54, 2 x 4 1.98); 1x1 convs over 144-960 channels best on 7 x 2 too (7x7x960 ->
    320 0.178 ms against 0.222 for 7 x 4, whose 28 accumulators leave the stack). On AVX2,
    7x7x512 ran 3.27 ms on 7 x 1 against 4.93 on 1 x 8. Shallow layers take the most blocks
    (up to 6) first: 112x112x16 -> 96 2 x 6 0.26 ms against 0.46 for 7 x 2; 56x56x32 -> 144
    4 x 3 0.178 against 0.205 for 1 x 9. A matmul (one pixel) takes up to all accumulators
    in blocks, independent sums that hide the FMA latency. Between the two, a layer whose
    weights of more than 2 blocks fit L1_STEP_BYTES takes the tile with the fewest loads per
    multiply-add (_fewest_loads)."""
    accumulators = ACCUMULATORS.get(lanes, 8)
    if depth < SHALLOW_DEPTH and width > 1:
        b = max(_divisors(blocks, SHALLOW_BLOCKS))
        return max(_divisors(width, accumulators // b)), b
    if width > 1:
        resident = min(SHALLOW_BLOCKS, L1_STEP_BYTES // (depth * lanes * 4))
        if resident > DEEP_BLOCKS and max(_divisors(blocks, resident)) > DEEP_BLOCKS:
            tile = _fewest_loads(width, blocks, resident, accumulators)
            if tile is not None:
                return tile
    most_blocks = accumulators if width == 1 else DEEP_BLOCKS
    tiles = [
        (z, b) for b in _divisors(blocks, most_blocks) for z in _divisors(width, accumulators // b)
    ]
    return max(tiles, key=lambda t: (t[0] * t[1], t[1]))


def _fewest_loads(
    width: int, blocks: int, most_blocks: int, accumulators: int
) -> tuple[int, int] | None:
    """The tile of at least half the accumulators with the fewest loads per multiply-add
    ((pixels + blocks) / (pixels x blocks): a broadcast per pixel, a weight vector per block),
    then the most accumulators: for a layer whose weights of up to `most_blocks` blocks stay
    in L1 (float_tile). Winograd's products of ddddocr-det's 52x52x96 -> 96 layer (676 tiles)
    took 7.2-7.6 ms over 4 calls on 13 x 1 (14 loads per 13 multiply-adds: bound by the load
    ports), 6.0-6.6 on 4 x 2, 5.5-5.7 on 4 x 3 and 5.4 on 2 x 6 (AMX Xeon, 1 thread)."""
    tiles = [
        (z, b)
        for b in _divisors(blocks, most_blocks)
        for z in _divisors(width, accumulators // b)
        if z * b >= accumulators // 2
    ]
    if not tiles:  # none fills half the accumulators: float_tile's deep rule decides
        return None
    return min(tiles, key=lambda t: ((t[0] + t[1]) / (t[0] * t[1]), -t[0] * t[1]))


def rows_outer(depth: int, out_channels: int) -> bool:
    """Whether the conv's rows go outside its steps of output channels: where its weights are
    small (ROWS_OUTER_BYTES, read again per row from L1 or L2) and each pixel writes more
    channels than it reads (an expanding 1x1 conv). There the input row stays in L1 across
    the steps and the output is written a row at a time, where the channel steps outside
    read the whole input again per step and write the output in strided slabs. ResNet-50's
    56x56x64 -> 256 conv (with its residual add) took 0.85 ms this way against 1.01 on the
    AMX Xeon (1 thread); its 256 -> 64 and 128 -> 512 convs were slower this way."""
    return depth < out_channels and depth * out_channels * 4 <= ROWS_OUTER_BYTES


def padded_width(width: int, blocks: int, depth: int, lanes: int) -> int:
    """The row length a float conv computes for an output row of `width` (tiles.padded_row)."""
    if width == 1:  # a matmul: its tiles are channel blocks
        return 1
    most = ACCUMULATORS.get(lanes, 8)

    def accumulators(w: int) -> int:
        z, b = float_tile(w, blocks, depth, lanes)
        return min(z * b, most)

    return padded_row(width, accumulators)


def loads_per_multiply_add(width: int, blocks: int, depth: int, lanes: int) -> float:
    """Vector loads per multiply-add of float_tile's tile for a row of `width`: a broadcast per
    pixel and a weight vector per block, (pixels + blocks) / (pixels x blocks)."""
    z, b = float_tile(width, blocks, depth, lanes)
    return (z + b) / (z * b)


def tile_is_full(width: int, blocks: int, depth: int, lanes: int) -> bool:
    """Whether float_tile finds a tile of at least half the target's accumulators."""
    z, b = float_tile(width, blocks, depth, lanes)
    return z * b >= ACCUMULATORS.get(lanes, 8) // 2


def schedule_conv2d_float(sch, block):
    """Tile the conv_float block and fuse its epilogue into the tile."""
    b, ob, y, z, oi, rc, ry, rx = sch.get_loops(block)
    width, blocks, lanes = (int(sch.get(loop).extent) for loop in (z, ob, oi))
    depth = int(sch.get(rc).extent) * int(sch.get(ry).extent) * int(sch.get(rx).extent)
    tile_z, tile_b = float_tile(width, blocks, depth, lanes)
    most = ACCUMULATORS.get(lanes, 8)
    z_o, z_i = split_tile(sch, z, tile_z, most)
    ob_o, ob_i = split_tile(sch, ob, tile_b, most)
    sch.reorder(b, ob_o, y, z_o, rc, ry, rx, ob_i, z_i, oi)
    tile_blocks = int(sch.get(ob_i).extent)  # the sampled decision: tuning may change it
    on_stack = int(sch.get(z_i).extent) * tile_blocks * lanes * 4 < STACK_ALLOCA_BYTES
    weight_bytes = depth * blocks * lanes * 4
    if on_stack and weight_bytes >= PREFETCH_MIN_BYTES:
        rows = int(sch.get(y).extent)
        # ob_o steps before the weights start over: per image where each image has its own
        # (Winograd's products, rank 6), else the next image reads the same ones again.
        steps = blocks // tile_blocks
        if any(len(region.source.shape) == 6 for region in sch.get(block).reads):
            steps *= int(sch.get(b).extent)
        ahead = weight_bytes * tile_blocks // blocks
        sch.annotate(rx, PREFETCH_ATTR, [ahead, rows, depth, steps])
    sch.set_scope(block, 0, "global" if on_stack else "local")
    final = last_consumer(sch, block)
    pad = None
    if final is not None and _pads(sch, block, final):
        pad, final = final, sch.get_producers(final)[0]
    if final is not None:
        inline_between(sch, block, final, keep=() if pad is None else (pad,))
        sch.reverse_compute_at(final, z_o, preserve_unit_loops=True)
        unroll_epilogue(sch, final, lanes)
    if pad is not None:
        _schedule_copy(sch, pad)
    if rows_outer(depth, blocks * lanes):
        sch.reorder(y, ob_o)
        sch.parallel(sch.fuse(b, y, ob_o))
    else:
        sch.parallel(sch.fuse(b, ob_o, y))
    # The root is kept out of MetaSchedule's other rules (whose vectorizing would take the
    # unrolled tile loops); this rule does the function's parallel loop itself.
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    sch.vectorize(oi)
    sch.unroll(z_i)
    sch.unroll(ob_i)
    return [sch]


def _pads(sch, conv, final) -> bool:
    """Whether the last block FuseOps put behind the conv writes more pixels than the conv
    makes (the next layer's padding): it cannot be computed per register tile (run there, its
    every border pixel was unrolled into each tile: a PP-OCR classifier's codegen ran out of
    memory), so it stays a loop nest of its own behind the epilogue."""
    out = sch.get_consumers(conv)
    return bool(out) and _copies_behind(sch, out[0], final)


def _copies_behind(sch, kernel_output, final) -> bool:
    """Whether `final`, the last block behind a kernel's output block, writes another shape
    (the next layer's padding, an NCHW transpose) from that one block: a copy
    (_schedule_copy), not part of the kernel's epilogue."""
    if sch.get(final).same_as(sch.get(kernel_output)):
        return False

    def shape(block) -> list[int]:
        return [int(d) for d in sch.get(block).writes[0].source.shape]

    return shape(final) != shape(kernel_output) and len(sch.get_producers(final)) == 1


def _schedule_copy(sch, copy) -> None:
    """A copy behind a kernel (_copies_behind): its two outer loops (the rows; an NCHW copy's
    channels) in parallel, the innermost vectorized where it fills a vector."""
    b, y, *_, c = sch.get_loops(copy)
    sch.parallel(sch.fuse(b, y))
    extent = int(sch.get(c).extent)
    lanes = next((v for v in (16, 8, 4) if extent % v == 0), None)
    if lanes is not None:
        sch.vectorize(sch.split(c, [None, lanes])[1])


def _weight_buffer(func):
    """The buffer of packed weights the conv's update block reads: the last of its reads the
    function does not allocate (conv2d_nhwc's sum is accumulators + data x weights). Its rank
    says nothing: MetaSchedule's rewritten layout of a 1x1 conv's weights has rank 3, and
    looking for rank 5 or more left every 1x1 conv (ResNet-50's 4-8 MB ones) unprefetched."""
    blocks = sblocks(func)
    allocated = [b for block in blocks for b in block.alloc_buffers]
    for block in blocks:
        if block.name_hint.startswith("conv_float"):
            read = [r.source for r in block.reads]
            outside = [b for b in read if not any(b.same_as(a) for a in allocated)]
            if len(outside) >= 2:  # the update block: data and weights
                return outside[-1]
    return None


def inject_weight_prefetch(func):
    """The conv's weight prefetch (PREFETCH_ATTR), put at the top of the annotated reduction
    loop: while the first rows of step ob_o run, the weights of step ob_o + 1 are prefetched
    (`prefetcht1`), one 64-byte line (a 16-lane weight vector, two 8-lane ones) per reduction
    step, so they come from L2 when their step starts, not from memory. Each ob_o step's
    weights are contiguous in every layout the kernel reads (pack_conv_weight's, and
    MetaSchedule's rewritten one), so the line is the buffer's start + (ob_o + 1) steps + the
    line's place in this one. ResNet-18's 7x7x512 layers read 9.4 MB of weights per call.
    Functions without the annotation come back as they are (int8/schedules has the int8
    kernels' version, for their tensorized blocks)."""
    from tvm import tirx

    weight = _weight_buffer(func)
    if weight is None:
        return func

    def prefetch(loops, annotation):
        ahead, rows, steps, period = (int(v) for v in annotation)
        fused, z_outer, rc, ry, rx = (tirx.Cast("int64", loop.loop_var) for loop in loops[-5:])
        kh, kw = (int(loop.extent) for loop in loops[-2:])
        step_ob = tirx.floormod(tirx.floordiv(fused, rows), period)  # (image, ob_o) -> step
        row = tirx.floormod(fused, rows)
        line = row * steps + (rc * kh + ry) * kw + rx
        address = tirx.call_intrin(
            "handle",
            "tirx.handle_add_byte_offset",
            tirx.address_of(tirx.BufferLoad(weight, [0] * len(weight.shape))),
            tirx.floormod(step_ob + 1, period) * ahead + line * LINE,
        )
        call = tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, 2, 1)
        first = tirx.all(z_outer == 0, line < ahead // LINE)
        return tirx.IfThenElse(first, tirx.Evaluate(call), None)

    def on_loop(loop, loops):
        path = [*loops, loop]
        if PREFETCH_ATTR in loop.annotations and len(path) >= 5:
            call = prefetch(path, loop.annotations[PREFETCH_ATTR])
            return path, lambda body: tirx.SeqStmt([call, body])
        return path, None

    body = rebuild(func.body, [], on_loop)
    return func if body.same_as(func.body) else func.with_body(body)


INLINED_COPIES = 1.5  # estimated FLOPs, inlined over as written: the sums computed again


def _inlining_copies(sch, block, final, keep=()) -> bool:
    """Whether inlining `block` and the blocks up to `final` copies `block`'s expression
    (FLOPs estimated at over INLINED_COPIES x those of the function as it is)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    trial = sch.copy()
    inline_between(trial, block, final, keep)
    try:
        trial.compute_inline(block)
        return float(estimate_tir_flops(trial.mod)) > INLINED_COPIES * float(
            estimate_tir_flops(sch.mod)
        )
    except Exception:  # noqa: BLE001 - not inlinable, or no estimate: compute the sums once
        return True


def schedule_winograd_transform(sch, block):
    """A Winograd transform (float/compute.winograd_input or winograd_output, with the
    elementwise ops FuseOps put behind the output one inlined into it): per tile (in
    parallel) and vector of channels, the tile positions unrolled, so that every select of a
    position's coefficient or offset folds to a constant and each input vector is loaded
    once per tile.

    A SiLU behind the output transform (x * sigmoid(x)) reads its sums twice: inlined, they
    would be computed twice (the sampler refused that, and the kernel ran as one thread of
    plain loops at 11% of peak). There the sums of each tile and vector of channels are
    computed once, into registers, under the epilogue's loops instead. So they are too where
    the sums reach the rereading block through others (a dynamically quantized conv's scale
    and bias before the SiLU: _inlining_copies)."""
    final = last_consumer(sch, block)
    sums = tail = None
    if final is not None and _copies_behind(sch, block, final):
        tail, final = final, sch.get_producers(final)[0]  # an NCHW transpose, a pad
    keep = () if tail is None else (tail,)
    if final is not None and not sch.get(final).same_as(sch.get(block)):
        # the output transform, and a residual add, relu or SiLU behind it
        reread = len(sch.get_consumers(block)) > 1 or _inlining_copies(sch, block, final, keep)
        inline_between(sch, block, final, keep)
        if reread:
            sums = block
        else:
            sch.compute_inline(block)
        block = final
    loops = sch.get_loops(block)
    *outer, channels = loops
    extent = int(sch.get(channels).extent)
    lanes = next(v for v in (16, 8, 4, 1) if extent % v == 0)
    c_o, c_i = sch.split(channels, [extent // lanes, lanes])
    if final is None:  # winograd_input: [position, 1, tile, channel]
        position, unit, tile = outer
        sch.reorder(tile, c_o, position, unit, c_i)
        sch.unroll(position)
        sch.parallel(tile)
    else:  # the output: [1, row, column, channel], rows and columns split into tiles
        b, y, x = outer
        ty, r = sch.split(y, [None, 2])
        tx, s = sch.split(x, [None, 2])
        sch.reorder(b, ty, tx, c_o, r, s, c_i)
        if sums is not None:
            sch.compute_at(sums, c_o)
            *tile, vector = sch.get_loops(sums)[-4:]
            sch.vectorize(vector)
            for loop in tile:
                sch.unroll(loop)
        sch.unroll(r)
        sch.unroll(s)
        sch.parallel(sch.fuse(b, ty))
    sch.vectorize(c_i)
    if tail is not None:
        _schedule_copy(sch, tail)
        # MetaSchedule's AutoInline, which visits the blocks after this rule, would inline
        # the epilogue (no longer the function's output) into the copy
        sch.annotate(block, "meta_schedule.inline_rule", "disable")
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    return [sch]


def schedule_narrow_pointwise(sch, block):
    """float/compute.narrow_pointwise: per pixel (rows in parallel), each output's dot product
    as `lanes` partial sums over vectors of input channels (rfactor), then added up; the
    epilogue FuseOps put behind it (a sigmoid) inlined into the bias add."""
    final = last_consumer(sch, block)
    inline_between(sch, block, final)
    b, y, z, _ = sch.get_loops(final)
    sch.parallel(sch.fuse(b, y))
    *_, rc = sch.get_loops(block)
    extent = int(sch.get(rc).extent)
    lanes = next(v for v in (16, 8, 4, 1) if extent % v == 0)
    _, rci = sch.split(rc, [None, lanes])
    partial = sch.rfactor(rci, factor_axis=4)
    sch.compute_at(block, z)
    sch.compute_at(partial, z)
    *_, vector = sch.get_loops(partial)
    if extent > lanes:  # a loop of unit extent is dropped: one vector of channels has none
        *_, vector, steps = sch.get_loops(partial)
        sch.reorder(steps, vector)
    sch.vectorize(vector)
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    return [sch]
