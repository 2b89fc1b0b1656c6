"""MetaSchedule rule for the float32 NHWC convolution (float_kernels.conv2d_nhwc): a register
tile of pixels x channel blocks around broadcast fused multiply-adds, with the epilogue (bias,
relu or clip, a residual add) computed per tile. The same shape as the int8 rule
(int8_schedules), without a tensor intrinsic: LLVM vectorizes the `lanes` loop.

The tile sizes are sampled decisions (float_tile gives the untuned default), so tuning still
searches them.
"""

from __future__ import annotations

from edgepress.backends.int8_schedules import (
    STACK_ALLOCA_BYTES,
    _inline_between,
    _last_consumer,
    _unroll_epilogue,
)

RULE = "edgepress.conv2d_float"
# Accumulators per tile, by float32 lanes per vector. AVX-512 (16): 15 vectors of 64 bytes is
# the most under STACK_ALLOCA_BYTES, which keeps them in registers (a larger tile is a
# workspace per tile); 32 registers leave room for the weight vectors, and the broadcasts
# fold into the FMAs. AVX2 (8): of 16 registers, tile + weight vectors + one broadcast.
# NEON (4): of 32 registers.
ACCUMULATORS = {16: 15, 8: 12, 4: 24}
# Below this many multiply-adds per output (input channels x window), a tile of few pixels
# and many channel blocks ran fastest: the layer is bound by its epilogue and its stores.
SHALLOW_DEPTH = 64
SHALLOW_BLOCKS = 6
DEEP_BLOCKS = 2


def _divisors(n: int, most: int) -> list[int]:
    return [d for d in range(1, min(n, most) + 1) if n % d == 0]


def float_tile(width: int, blocks: int, depth: int, lanes: int) -> tuple[int, int]:
    """(pixels, channel blocks) of the register tile: exact divisors of the row and of the
    channel blocks. From sweeps on AVX-512 (1 thread, GFLOP/s of the kernel alone): 3x3 convs
    of ResNet-18 ran at 170 GFLOP/s on 7 x 2 (56x56x64 1.34 ms, 14 x 1 1.36, 4 x 2 1.54,
    2 x 4 1.98); 1x1 convs over 144-960 channels best on 7 x 2 too (7x7x960 -> 320 0.178 ms
    against 0.222 for 7 x 4, whose 28 accumulators leave the stack); shallow ones on more
    blocks (112x112x16 -> 96: 2 x 6 0.26 ms against 0.46 for 7 x 2; 56x56x32 -> 144: 4 x 3
    0.178 against 0.205 for 1 x 9)."""
    accumulators = ACCUMULATORS.get(lanes, 12)
    most_blocks = SHALLOW_BLOCKS if depth < SHALLOW_DEPTH else DEEP_BLOCKS
    if width == 1:  # a matmul: independent accumulators to hide the FMA latency
        most_blocks = accumulators
    b = max(_divisors(blocks, most_blocks))
    z = max(_divisors(width, accumulators // b))
    return z, b


def schedule_conv2d_float(sch, block):
    """Tile the conv_float block and fuse its epilogue into the tile."""
    b, ob, y, z, oi, rc, ry, rx = sch.get_loops(block)
    width, blocks, lanes = (int(sch.get(loop).extent) for loop in (z, ob, oi))
    depth = int(sch.get(rc).extent) * int(sch.get(ry).extent) * int(sch.get(rx).extent)
    tile_z, tile_b = float_tile(width, blocks, depth, lanes)
    most = ACCUMULATORS.get(lanes, 12)
    z_o, z_i = sch.split(
        z,
        sch.sample_perfect_tile(
            z, n=2, max_innermost_factor=most, decision=[width // tile_z, tile_z]
        ),
    )
    ob_o, ob_i = sch.split(
        ob,
        sch.sample_perfect_tile(
            ob, n=2, max_innermost_factor=most, decision=[blocks // tile_b, tile_b]
        ),
    )
    sch.reorder(b, ob_o, y, z_o, rc, ry, rx, ob_i, z_i, oi)
    tile_bytes = int(sch.get(z_i).extent) * int(sch.get(ob_i).extent) * lanes * 4
    on_stack = tile_bytes < STACK_ALLOCA_BYTES
    sch.set_scope(block, 0, "global" if on_stack else "local")
    final = _last_consumer(sch, block)
    if final is not None:
        _inline_between(sch, block, final)
        sch.reverse_compute_at(final, z_o, preserve_unit_loops=True)
        _unroll_epilogue(sch, final, lanes)
    sch.parallel(sch.fuse(b, ob_o, y))
    # The root is kept out of MetaSchedule's other rules (whose vectorizing would take the
    # unrolled tile loops); this rule does the function's parallel loop itself.
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    sch.vectorize(oi)
    sch.unroll(z_i)
    sch.unroll(ob_i)
    return [sch]


def register() -> None:
    """Make the rule known to MetaSchedule (idempotent)."""
    import tvm

    name = f"s_tir.meta_schedule.cpu.{RULE}"
    if tvm.get_global_func(name, allow_missing=True) is None:
        tvm.register_global_func(name, schedule_conv2d_float)
