"""Batched float MatMul of two computed operands (attention's Q K^T and its weights times V):
a register-tiled kernel and its schedule rule.

The float lowering's matmul kernel packs a constant weight at build time; attention multiplies
two activations, which TVM's generic batched matmul ran at 3-4% of peak with MetaSchedule's
untimed sample (a 4-layer ViT-Tiny spent three quarters of its time there). Here the output is
[batch, rows, N / lanes, lanes]: per (batch, tile of ROWS rows, tile of COLUMN_BLOCKS vectors),
the accumulators stay in registers while K is reduced, each step one broadcast of A and one
vector load of B per column block. The rows and columns are padded to whole tiles before and
cropped after (kernels/float/lowering).
"""

from __future__ import annotations

RULE = "edgepress.batch_matmul_float"
ROWS = 6  # rows of a register tile
COLUMN_BLOCKS = 2  # vectors of columns of a register tile: ROWS x COLUMN_BLOCKS accumulators


def batch_matmul(a, b, *, lanes: int):
    """a [batch, M, K] x b [batch, K, N] -> [batch, M, N / lanes, lanes] (N a multiple of
    lanes, M of ROWS)."""
    from tvm import te

    batch, rows, depth = (int(d) for d in a.shape)
    columns = int(b.shape[2])
    k = te.reduce_axis((0, depth), name="k")
    return te.compute(
        (batch, rows, columns // lanes, lanes),
        lambda n, i, block, lane: te.sum(a[n, i, k] * b[n, k, block * lanes + lane], axis=k),
        name="batch_matmul_float",
        attrs={"schedule_rule": RULE},
    )


def schedule_batch_matmul(sch, block):
    """Register tiles of ROWS x COLUMN_BLOCKS vectors, K reduced inside, batches and row tiles
    in parallel."""
    n, i, blocks, lane, k = sch.get_loops(block)
    row_tile = ROWS if int(sch.get(i).extent) % ROWS == 0 else 1
    column_tile = COLUMN_BLOCKS if int(sch.get(blocks).extent) % COLUMN_BLOCKS == 0 else 1
    i_o, i_i = sch.split(i, [None, row_tile])
    b_o, b_i = sch.split(blocks, [None, column_tile])
    sch.reorder(n, i_o, b_o, k, i_i, b_i, lane)
    sch.parallel(sch.fuse(n, i_o))
    sch.unroll(i_i)
    sch.unroll(b_i)
    sch.vectorize(lane)
    accumulators = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulators, b_o, preserve_unit_loops=True)
    sch.decompose_reduction(block, k)
    *_, last = sch.get_loops(accumulators)
    sch.vectorize(last)
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    return [sch]
