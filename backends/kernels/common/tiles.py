"""Register-tile helpers the conv rules of both families share, and the tile budgets as data:
each with the sweep that chose it.

A register tile's accumulators must stay in vector registers: in a "global" buffer under
TVM's stack-allocation limit (runtime::kMaxStackAlloca) they become an LLVM alloca, which LLVM
turns into registers; "local" buffers, whatever their size, are TVMBackendAllocWorkspace calls
per tile, whose memory LLVM must keep up to date around any call that may read memory (the
weight prefetch is one).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.backends.targets.description import AVX2_8x2x2

STACK_ALLOCA_BYTES = 1024
# Weights of 128 KB or more are prefetched one step ahead (each family's prefetch injector):
# ResNet-18's 7x7x512 conv took 0.44 ms with its 2.4 MB of weights out of the caches and
# 0.33 ms with them in L2; with the prefetch and the weights out of the caches, 0.41 ms.
PREFETCH_MIN_BYTES = 128 * 1024


@dataclass(frozen=True)
class Budget:
    """Accumulator vectors a register tile may hold, and the measurement that chose it."""

    accumulators: int
    measured: str


# int8 dot-product convs, by tensor intrinsic (None: the others)
INT8_ACCUMULATORS = {
    None: Budget(24, "of 32 vector registers (AVX-512, NEON); the rest hold weights"),
    AVX2_8x2x2: Budget(
        7,
        "AVX2's exact dot product keeps two accumulators per pixel and block in 16 "
        "registers; 7 x 1 spills a little and still ran fastest (ResNet-18's 56x56x64 and "
        "14x14x256 convs, AVX2 code on an AVX-512 CPU: 2.47 ms against 2.64 for 4 x 1)",
    ),
}
# float32 NHWC convs, by float32 lanes per vector
FLOAT_ACCUMULATORS = {
    16: Budget(
        15,
        "AVX-512: 15 vectors of 64 bytes is the most under STACK_ALLOCA_BYTES; 32 registers "
        "leave room for the weight vectors and the broadcasts fold into the FMAs",
    ),
    8: Budget(
        8,
        "AVX2, 16 registers: AVX2 code on an AVX-512 CPU, 1 thread, 56x56x64 3x3: 4 x 2 "
        "2.85 ms, 8 x 1 2.90, 7 x 2 4.12 (spills)",
    ),
    4: Budget(24, "NEON, 32 registers (not timed: qemu)"),
}
# depthwise (both families): float32 sums; 15 vectors of 16 lanes (960 bytes) stay under
# STACK_ALLOCA_BYTES
DEPTHWISE_ACCUMULATORS = 15
EXTRA_COLUMNS = 7  # computed and dropped, at most, to give a row a tile of enough pixels


def padded_row(width: int, accumulators_of) -> int:
    """The row length a conv kernel computes for an output row of `width`: more where its
    divisors allow only small register tiles (a prime width of 13 or more gets 1 pixel per
    tile, a fraction of the instruction's rate). Each candidate up to EXTRA_COLUMNS longer is
    scored by its tile's accumulators (`accumulators_of(length)`) times the share of useful
    columns; the extra columns read padding and their outputs are dropped."""
    return max(
        range(width, width + EXTRA_COLUMNS + 1),
        key=lambda w: (accumulators_of(w) * width / w, -w),
    )


def split_tile(sch, loop, inner: int, most: int):
    """`loop` split into (outer, inner) by a sampled perfect tile whose untuned decision has
    `inner` iterations inside: tuning searches inner factors up to `most`."""
    extent = int(sch.get(loop).extent)
    factors = sch.sample_perfect_tile(
        loop, n=2, max_innermost_factor=most, decision=[extent // inner, inner]
    )
    return sch.split(loop, factors)



def inline_between(sch, conv, output, keep=()) -> None:
    """Inline every other elementwise block of the function so the output block reads the
    accumulators directly (the conv, the output block and those in `keep` stay)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        # compared afresh: inlining into a block replaces its statement
        if any(sch.get(block).same_as(sch.get(other)) for other in (conv, output, *keep)):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined stays where it is
            try:
                sch.reverse_compute_inline(block)
            except Exception:  # noqa: BLE001
                pass



def last_consumer(sch, block):
    """The end of the chain of blocks reading `block` (the function's output), if any."""
    outputs = sch.get_consumers(block)
    final = outputs[0] if outputs else None
    while final is not None and sch.get_consumers(final):
        final = sch.get_consumers(final)[0]
    return final



def unroll_epilogue(sch, block, lanes: int) -> None:
    """The tile's epilogue as straight-line code: one vector of `lanes` output channels per
    pixel and channel block. Vectorized across blocks, each vector read the accumulators
    at c // lanes, c % lanes, which LLVM gathered lane by lane (ResNet-18's and MobileNetV2's
    7x7 layers, whose tiles hold 2-3 blocks). With every index constant, accumulators on the
    stack (STACK_ALLOCA_BYTES) become registers: the tile neither zeroes (memset) nor stores
    them."""
    *_, pixels, channels = sch.get_loops(block)
    blocks, vector = sch.split(channels, [None, lanes])
    sch.vectorize(vector)
    sch.unroll(blocks)
    sch.unroll(pixels)



def loop_with_body(loop, body, kind=None):
    """`loop` with another body, and another kind if given (TVM 0.27 has no Python IR mutator:
    passes that insert statements rebuild the path down to them)."""
    from tvm import tirx

    return tirx.For(
        loop.loop_var,
        loop.min,
        loop.extent,
        loop.kind if kind is None else kind,
        body,
        loop.thread_binding,
        loop.annotations,
    )



def block_with_body(block, body):
    """`block` with another body (see loop_with_body)."""
    from tvm import s_tir

    return s_tir.SBlock(
        block.iter_vars,
        block.reads,
        block.writes,
        block.name_hint,
        body,
        block.init,
        block.alloc_buffers,
        block.match_buffers,
        block.annotations,
    )


def rebuild(stmt, state, on_loop, on_block=None, kind_of=None):
    """`stmt` with the path down to what the callbacks change rebuilt (TVM 0.27 has no Python
    TIR mutator), everything else shared. `on_loop(loop, state)` gives the state for the
    loop's body and an optional function that wraps the rebuilt body (None: as it is);
    `on_block(block, state)` gives a replacement block, or None to descend into its body;
    `kind_of(loop)`, the kind each loop gets (None: its own). The weight-prefetch injectors of
    both kernel families and relax/small_kernels are written with it."""
    from tvm import s_tir, tirx

    if isinstance(stmt, tirx.For):
        inner, wrap = on_loop(stmt, state)
        body = rebuild(stmt.body, inner, on_loop, on_block, kind_of)
        if wrap is not None:
            body = wrap(body)
        kind = stmt.kind if kind_of is None else kind_of(stmt)
        if body.same_as(stmt.body) and kind == stmt.kind:
            return stmt
        return loop_with_body(stmt, body, kind)
    if isinstance(stmt, tirx.SeqStmt):
        parts = [rebuild(s, state, on_loop, on_block, kind_of) for s in stmt.seq]
        if all(a.same_as(b) for a, b in zip(parts, stmt.seq)):
            return stmt
        return tirx.SeqStmt(parts)
    if isinstance(stmt, s_tir.SBlockRealize):
        block = stmt.block
        new = on_block(block, state) if on_block is not None else None
        if new is None:
            body = rebuild(block.body, state, on_loop, on_block, kind_of)
            new = block if body.same_as(block.body) else block_with_body(block, body)
        if new.same_as(block):
            return stmt
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, new)
    return stmt
