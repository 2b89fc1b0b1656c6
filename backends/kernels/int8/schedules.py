"""MetaSchedule rule for the packed int8 convolution (int8/compute.py): register tiles
around the dot-product instruction, with the requantizing epilogue computed per tile.

MetaSchedule's generic tiling with the intrinsic (MultiLevelTilingWithIntrin) finds the
tensorizable block but searches tile shapes blindly: on int8 ResNet-18, 500 trials left its
kernels at 17 ms, twice onnxruntime's. The shape of a good kernel is known: for each output row,
a tile of Z output pixels x B blocks of `lanes` channels stays in registers (Z*B accumulators)
while the reduction over input-channel blocks and the kernel window runs outside it; each
weight block is loaded once per tile and each activation word broadcast once per channel block.
The epilogue (requantize, a fused residual add, the next quantize) then reads the
accumulators before they leave the tile. This rule builds exactly that; the tile sizes are
sampled decisions (with a default for untuned builds), so tuning still searches them.

The rule is named by the compute's `schedule_rule` block attribute and found by
MetaSchedule's ApplyCustomRule through the global function registered here.
"""

from __future__ import annotations

from edgepress.backends.kernels.common.tiles import (
    INT8_ACCUMULATORS,
    PREFETCH_MIN_BYTES,
    STACK_ALLOCA_BYTES,
    block_with_body,
    inline_between,
    last_consumer,
    padded_row,
    rebuild,
    split_tile,
    unroll_epilogue,
)
from edgepress.backends.kernels.int8.dot_intrinsics import LOCAL
from edgepress.backends.targets.description import AVX2_8x2x2, SDOT_4x4, USDOT_4x4, VNNI_16x4

RULE = "edgepress.conv2d_int8"
INTRINSIC_ATTR = "edgepress.intrinsic"
MAX_ACCUMULATORS = INT8_ACCUMULATORS[None].accumulators
# The conv's weights are prefetched one ob_o step ahead (inject_weight_prefetch) where they
# are PREFETCH_MIN_BYTES or more. ResNet-18: 6.60 -> 6.38 ms (minimums of 9 rounds).
PREFETCH_ATTR = "edgepress.prefetch_weights"
# The intrinsics whose register tile may live on the stack (tiles.STACK_ALLOCA_BYTES)
STACK_INTRINSICS = (VNNI_16x4, SDOT_4x4, USDOT_4x4, AVX2_8x2x2)
TILE_PIXELS = 12  # pixels per register tile that each loaded weight vector serves, at most


def default_tile(width: int, blocks: int, accumulators: int = MAX_ACCUMULATORS) -> tuple[int, int]:
    """(pixels, channel blocks) of the register tile, exact divisors of the row and of the
    channel blocks: the most pixels up to TILE_PIXELS, then the most accumulators within
    `accumulators`, then more channel blocks.

    Pixels come first because each weight vector is loaded once per tile and reused by every
    pixel in it, while activation words are broadcast from L1 either way. The former rule (the
    most accumulators first) gave ResNet-18's 14x14 and 7x7 layers 1-pixel x 16-block tiles that
    streamed every weight from L2 per pixel: those layers ran at half the rate of the 56x56
    ones, and the whole model 15.6 ms against 10.1 ms with this rule (1 thread, best of 5).

    This is the rule for the targets whose tiles have not been re-swept (AVX2, arm64, x86
    without an intrinsic); VNNI takes vnni_tile. Its measurements predate the epilogue fix
    (unroll_epilogue), which made tiles of several blocks much cheaper on VNNI; arm64's
    cannot be timed here (qemu)."""
    best, best_key = (1, 1), (0, 0, 0)
    for z in (d for d in range(1, width + 1) if width % d == 0):
        for b in (d for d in range(1, blocks + 1) if blocks % d == 0):
            key = (min(z, TILE_PIXELS), z * b, b)
            if z * b <= accumulators and key > best_key:
                best, best_key = (z, b), key
    return best


def vnni_tile(width: int, blocks: int, depth: int) -> tuple[int, int]:
    """(pixels, channel blocks) of the register tile for AVX-512 VNNI, from sweeps of the tiles
    of int8 ResNet-18's and MobileNetV2's conv shapes (1 thread, interleaved runs). `depth` is
    the vpdpbusd count per output vector (input channels / 4 x window).

    Convs with 16 instructions or more per output (3x3, and 1x1 over 64 channels or more) run
    best on 7-8 pixels x 2 blocks: fewer broadcasts per instruction than 14 x 1 (4-6% on the
    3x3 layers, up to 30% on MobileNetV2's projections: 56x56x144 -> 24 0.054 against 0.079
    ms); 7 x 2, because its 14 accumulators stay on the stack (STACK_ALLOCA_BYTES) and 8 x 2's
    16 do not. The shallow expansions of 16-32 channels are bound by their epilogue; they ran
    best on few pixels and more blocks: 2 x 3 over 16-24 channels (112x112x16 -> 96: 0.147 ms
    against 0.168 for 2 x 6), 1 x 12 over 32 (28x28x32 -> 192: 0.027 against 0.033 for 2 x 3).
    A single pixel (a matmul) takes up to 12 blocks, independent accumulations to hide the
    instruction's latency; where there are too few blocks for that (16 output channels),
    pixels make up the tile instead (112x112x32 -> 16: 14 x 1)."""
    if width == 1:
        most = (1, 12)
    elif depth >= 16:
        most = (7, 2)  # 14 accumulators: under STACK_ALLOCA_BYTES
    elif depth <= 6:
        most = (2, 3)
    else:
        most = (1, 12)
    tiles = [
        (z, b)
        for z in range(1, min(width, most[0]) + 1)
        if width % z == 0
        for b in range(1, min(blocks, most[1]) + 1)
        if blocks % b == 0
    ]
    z, b = max(tiles, key=lambda t: (t[0] * t[1], t[1]))
    if z * b < 6:  # few blocks (a 16-channel output): more pixels instead
        z = max(d for d in range(1, width + 1) if width % d == 0 and d * b <= 15)
    return z, b


def conv_tile(width: int, blocks: int, depth: int, intrinsic: str | None) -> tuple[int, int]:
    """(pixels, channel blocks) of the untuned register tile for the target's intrinsic;
    `depth`: instructions per output vector (input channels / 4 x window)."""
    if intrinsic == VNNI_16x4:
        return vnni_tile(width, blocks, depth)
    return default_tile(width, blocks, _accumulators(intrinsic))


def padded_width(width: int, blocks: int, depth: int, intrinsic: str | None) -> int:
    """The row length an int8 conv computes for an output row of `width` (tiles.padded_row)
    where its own tile holds under half the accumulators a longer row's would: SqueezeNet's
    13-pixel rows took 1-pixel x 2-block tiles on VNNI and ran at half its rate. A row with a
    fair tile keeps its length: the tile rules above chose pixels over accumulators from
    measurements, which more accumulators alone would overrule."""

    def accumulators(w: int) -> int:
        z, b = conv_tile(w, blocks, depth, intrinsic)
        return z * b

    computed = padded_row(width, accumulators)
    return computed if 2 * accumulators(width) < accumulators(computed) else width


def _accumulators(intrinsic: str | None) -> int:
    return INT8_ACCUMULATORS.get(intrinsic, INT8_ACCUMULATORS[None]).accumulators


def _weight_bytes(sch, block) -> int:
    """Bytes of the conv's packed int8 weight (the 6-d buffer it reads)."""
    for region in sch.get(block).reads:
        buffer = region.source
        if len(buffer.shape) == 6 and str(buffer.dtype) == "int8":
            size = 1
            for extent in buffer.shape:
                size *= int(extent)
            return size
    return 0


def inject_weight_prefetch(func):
    """The conv's weight prefetch (PREFETCH_ATTR on its innermost reduction loop: [bytes of
    one ob_o step of weights, blocks per step]), put into the tensorized update block. The
    weights of step ob_o + 1 are prefetched (`prefetcht1`, one 64-byte line per reduction
    step) while the first rows of step ob_o run, spread over as many rows as the step has
    blocks, so that the fetch from L3 or memory runs at a rate the core's bandwidth allows
    and is done before those weights are read. Only the tile's first pixel and first block
    prefetch (the tests fold away after unrolling). Every weight layout here (pack_weight's,
    MetaSchedule's rewritten one) stores each ob_o step's weights contiguously, so the line
    is the weight buffer's start plus (ob_o + 1) steps plus row x reduction step lines. TVM
    0.27 has no schedule primitive for a prefetch, nor a Python IR mutator; this rebuilds the
    loop nest's path down to the annotated loop. Functions without the annotation come back
    as they are."""
    from tvm import s_tir, tirx

    def update_block(block, ahead: int, tile_blocks: int, pixels: int):
        weights = [m for m in block.match_buffers if len(m.buffer.shape) >= 2]
        axes = {iv.var.name: iv for iv in block.iter_vars}
        names = ("v_ob_o", "v_y_o", "v_z_o", "v_rc_o", "v_ry_o", "v_rx_o")
        if (
            not weights
            or str(weights[0].buffer.dtype) != "int8"
            or any(n not in axes for n in names)
        ):
            return block
        source = weights[0].source.source

        def var(name):
            return tirx.Cast("int64", axes[name].var)

        def extent(name):
            return int(axes[name].dom.extent)

        steps = extent("v_rc_o") * extent("v_ry_o") * extent("v_rx_o")
        step = (var("v_rc_o") * extent("v_ry_o") + var("v_ry_o")) * extent("v_rx_o") + var("v_rx_o")
        line = var("v_y_o") * steps + step
        offset = (tirx.floordiv(var("v_ob_o"), tile_blocks) + 1) * ahead + line * 64
        address = tirx.call_intrin(
            "handle",
            "tirx.handle_add_byte_offset",
            tirx.address_of(tirx.BufferLoad(source, [0] * len(source.shape))),
            offset,
        )
        prefetch = tirx.Evaluate(
            tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, 2, 1)
        )
        first = tirx.all(
            tirx.floormod(axes["v_z_o"].var, pixels) == 0,
            tirx.floormod(axes["v_ob_o"].var, tile_blocks) == 0,
        )
        body = tirx.SeqStmt(
            [
                tirx.IfThenElse(
                    first, tirx.IfThenElse(axes["v_y_o"].var < tile_blocks, prefetch, None), None
                ),
                block.body,
            ]
        )
        return block_with_body(block, body)

    def on_loop(loop, state):
        ahead, pixels = state
        if PREFETCH_ATTR in loop.annotations:
            ahead = [int(v) for v in loop.annotations[PREFETCH_ATTR]]
        inner = loop.extent if isinstance(loop.body, s_tir.SBlockRealize) else pixels
        return (ahead, int(inner) if ahead else pixels), None

    def on_block(block, state):
        ahead, pixels = state
        if ahead is not None and block.match_buffers:
            return update_block(block, ahead[0], ahead[1], pixels)
        return None

    body = rebuild(func.body, (None, 1), on_loop, on_block)
    return func if body.same_as(func.body) else func.with_body(body)


def schedule_conv2d_int8(sch, block):
    """Tile, tensorize-annotate and fuse the epilogue of one conv_int8 block."""
    annotations = sch.get(block).annotations
    intrinsic = annotations.get(INTRINSIC_ATTR)
    b, ob, y, z, *lane_loops = sch.get_loops(block)
    oi, *pair, rc, ry, rx, r4 = lane_loops  # pair: the pair-sum loop (packed_conv2d pair_sums)
    width = int(sch.get(z).extent)
    blocks = int(sch.get(ob).extent)
    accumulators = _accumulators(intrinsic)
    depth = int(sch.get(rc).extent) * int(sch.get(ry).extent) * int(sch.get(rx).extent)
    tile_z, tile_b = conv_tile(width, blocks, depth, intrinsic)
    z_o, z_i = split_tile(sch, z, tile_z, accumulators)
    ob_o, ob_i = split_tile(sch, ob, tile_b, accumulators)
    sch.reorder(b, ob_o, y, z_o, rc, ry, rx, ob_i, z_i, oi, *pair, r4)
    vector_bytes = int(sch.get(oi).extent) * 4 * (1 + len(pair))  # int32 (pair) sums
    tile_bytes = int(sch.get(z_i).extent) * int(sch.get(ob_i).extent) * vector_bytes
    on_stack = intrinsic in STACK_INTRINSICS and tile_bytes < STACK_ALLOCA_BYTES
    weight_bytes = _weight_bytes(sch, block)
    if on_stack and weight_bytes >= PREFETCH_MIN_BYTES:
        tile_blocks = int(sch.get(ob_i).extent)
        sch.annotate(rx, PREFETCH_ATTR, [weight_bytes * tile_blocks // blocks, tile_blocks])
    sch.set_scope(block, 0, "global" if on_stack else "local")
    start = block
    if pair:  # the pair sums' own reduction, per tile, over vectors of output channels
        start = sch.get_consumers(block)[0]
        sch.reverse_compute_at(start, z_o, preserve_unit_loops=True)
        sch.set_scope(start, 0, "global" if on_stack else "local")
        *_, lanes, pairs = sch.get_loops(start)
        sch.reorder(pairs, lanes)
        sch.vectorize(lanes)
    final = last_consumer(sch, start)
    if final is not None:
        inline_between(sch, start, final)
        sch.reverse_compute_at(final, z_o, preserve_unit_loops=True)
        unroll_epilogue(sch, final, int(sch.get(oi).extent))
    sch.parallel(sch.fuse(b, ob_o, y))
    # MetaSchedule's parallelize/vectorize pass over the root would vectorize the unrolled
    # tile loops around the intrinsic call, which LLVM's vectorizer then rejects: the root is
    # kept out of the other rules, and this rule does the function's parallel loop itself.
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    if intrinsic:
        inner = sch.blockize(oi)
        # Accumulators in a local buffer take the intrinsic's variant for local buffers.
        suffix = "" if on_stack else LOCAL
        sch.annotate(inner, "meta_schedule.auto_tensorize", f"{intrinsic}{suffix}")
    else:
        sch.reorder(r4, oi)
        sch.vectorize(oi)
    sch.unroll(z_i)
    sch.unroll(ob_i)
    return [sch]
