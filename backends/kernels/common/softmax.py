"""Softmax over the last axis on CPUs: one row at a time, its max and sum in vector registers.

TOPI's softmax is five loop nests over the whole tensor (max, x - max, exp, sum, divide) whose
reductions run one element at a time; MetaSchedule's untimed sample vectorizes none of it and
splits the row axis with a tail test. A PP-OCR recognizer's CTC softmax over 40 x 18385
classes took 1.61 ms of its 17.6 (1 thread), against 0.52 ms written as here:

- each row is one iteration of a loop (parallel from PARALLEL_MIN elements), and all of its
  work happens in it while the row is in L2: max, exp, sum, scale;
- the max and the sum over a row are taken as PARTIAL partial results, one per vector lane
  (contiguous loads, vectorized here), then reduced across the lanes; the row's last n mod
  PARTIAL elements are reduced on their own, so no loop needs a tail test;
- the exp (TOPI's fast_exp, as kernels/common/fast_math) and the scaling by the reciprocal of
  the sum are plain loops over the row, which LLVM vectorizes with its own remainder loop.

The results differ from a division per element by float32 rounding (the sum is added in
another order, and multiplied by its reciprocal).
"""

from __future__ import annotations

RULE = "edgepress.softmax"
PARTIAL = 16  # partial maxima and sums per row: one AVX-512 vector, two of AVX2, four of NEON
# Elements from which the rows run in parallel: 8 rows of 32 took 6 us in parallel, under 1
# serially; 3 x 197 rows of 197 took 0.067 ms in parallel (1 thread)
PARALLEL_MIN = 16384
# the blocks of softmax_last_axis, consumers first: the order they are computed at the row
_BLOCKS = (
    "softmax",
    "inverse",
    "sum_tail",
    "sum_main",
    "partial_sum",
    "T_fast_exp",
    "maxelem",
    "max_tail",
    "max_main",
    "partial_max",
)
_PARTIALS = ("partial_max", "partial_sum")


def applies(shape: tuple[int, ...], axis: int) -> bool:
    """Whether softmax_last_axis computes a softmax of `shape` along `axis`: the last axis of
    a tensor of rank 2 or more, at least PARTIAL long."""
    rank = len(shape)
    return rank >= 2 and axis in (-1, rank - 1) and shape[-1] >= PARTIAL


def softmax_last_axis(x):
    """softmax(x) along the last axis of float32 `x` (module docstring); the output block
    names RULE."""
    from tvm import te, tirx, topi

    *lead, n = (int(d) for d in x.shape)
    lead = tuple(lead)
    full = n // PARTIAL
    one = tirx.const(1.0, x.dtype)

    def reduced(values, reducer, name: str):
        """values' reduction over the last axis: PARTIAL lanes over whole vectors, then the
        lanes and the tail."""
        ko = te.reduce_axis((0, full), f"{name}_ko")
        partial = te.compute(
            (*lead, PARTIAL),
            lambda *i: reducer(values[(*i[:-1], ko * PARTIAL + i[-1])], axis=ko),
            name=f"partial_{name}",
        )
        lane = te.reduce_axis((0, PARTIAL), f"{name}_lane")
        main = te.compute(
            lead, lambda *i: reducer(partial[(*i, lane)], axis=lane), name=f"{name}_main"
        )
        if full * PARTIAL == n:
            return main, None
        # from 0, offset in the index: an axis over [full * PARTIAL, n) came out of the
        # Relax build with a negative extent (tests/test_fast_math caught it)
        k = te.reduce_axis((0, n - full * PARTIAL), f"{name}_k")
        tail = te.compute(
            lead, lambda *i: reducer(values[(*i, full * PARTIAL + k)], axis=k), name=f"{name}_tail"
        )
        return main, tail

    max_main, max_tail = reduced(x, te.max, "max")
    top = max_main if max_tail is None else te.compute(
        lead, lambda *i: tirx.max(max_main(*i), max_tail(*i)), name="maxelem"
    )
    delta = te.compute(x.shape, lambda *i: x(*i) - top(*i[:-1]), name="delta")
    exp = topi.fast_exp(delta)
    sum_main, sum_tail = reduced(exp, te.sum, "sum")
    inverse = te.compute(
        lead,
        lambda *i: one / (sum_main(*i) if sum_tail is None else sum_main(*i) + sum_tail(*i)),
        name="inverse",
    )
    return te.compute(
        x.shape,
        lambda *i: exp(*i) * inverse(*i[:-1]),
        name="softmax",
        attrs={"schedule_rule": RULE},
    )


def _named(sch, name: str):
    from edgepress.backends.kernels.common.tir_walk import sblocks

    own = [b for b in sblocks(sch.mod["main"]) if b.name_hint == name]
    return sch.get_sblock(name) if len(own) == 1 else None


def schedule_softmax(sch, block):
    """The row loop of softmax_last_axis's output `block` (parallel from PARALLEL_MIN
    elements) with every block of the compute at it (module docstring); elementwise ops fused
    before or after are inlined."""
    from edgepress.backends.kernels.common.tiles import inline_between, last_consumer

    ours = [b for b in (_named(sch, name) for name in _BLOCKS[1:]) if b is not None]
    inline_between(sch, block, block, keep=ours)
    final = last_consumer(sch, block)
    *lead, _ = sch.get_loops(block)
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if final is not None:  # a consumer that could not be inlined: computed per row as well
        sch.reverse_compute_at(final, row, preserve_unit_loops=True)
    for name in _BLOCKS[1:]:
        found = _named(sch, name)
        if found is not None:
            sch.compute_at(found, row, preserve_unit_loops=True)
            # MetaSchedule applies its rules to the other blocks after this one: its
            # AutoInline would compute the exp again in the sum and in the output
            sch.annotate(found, "schedule_rule", "None")
    rows, length = int(sch.get(row).extent), int(sch.get(sch.get_loops(block)[-1]).extent)
    if rows > 1 and rows * length >= PARALLEL_MIN:
        sch.parallel(row)  # before the reductions are decomposed: TIR's check wants their inits
    for name in _PARTIALS:
        partial = _named(sch, name)
        *_, lane, ko = sch.get_loops(partial)
        sch.reorder(ko, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(partial, ko)
    # kept out of MetaSchedule's other rules, whose vectorizing of the row's loops would add
    # the tail tests this schedule avoids
    sch.annotate(sch.get_sblock("root"), "schedule_rule", "None")
    return [sch]


def declines(sch, block) -> str | None:
    """Why the rule does not apply to `block`: not softmax_last_axis's output of rank 2+."""
    if len(sch.get_loops(block)) < 2:
        return "a softmax of rank 1"
    missing = [name for name in _PARTIALS if _named(sch, name) is None]
    return f"no block {', '.join(missing)} (another softmax's compute)" if missing else None
