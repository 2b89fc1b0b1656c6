"""The table of schedule rules (backends/kernels/rules.py): every rule a compute names is in
it, once, and a rule that does not apply leaves the block as it is instead of failing."""

from __future__ import annotations

import logging


def test_every_named_rule_is_in_the_table_once():
    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common import nhwc_schedules, softmax
    from edgepress.backends.kernels.float import batch_matmul
    from edgepress.backends.kernels.float import compute as float_compute
    from edgepress.backends.kernels.float import schedules as float_schedules
    from edgepress.backends.kernels.int8 import schedules as int8_schedules

    names = [rule.name for rule in rules.RULES]
    assert len(names) == len(set(names))
    named = {
        int8_schedules.RULE,
        float_schedules.RULE,
        float_compute.WINOGRAD_RULE,
        float_compute.NARROW_RULE,
        nhwc_schedules.PACK_RULE,
        nhwc_schedules.DEPTHWISE_RULE,
        nhwc_schedules.WINDOW_RULE,
        nhwc_schedules.MEAN_RULE,
        batch_matmul.RULE,
        softmax.RULE,
    }
    assert set(names) == named
    assert all(rule.marker for rule in rules.RULES if rule.injector)


def test_a_rule_that_does_not_apply_leaves_the_block_as_it_is(caplog):
    """A pad block without its interior annotation: the pack rule declines (plain loops, a
    debug line saying why), where its schedule would have failed on the missing attribute."""
    import tvm
    from tvm import te

    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common.nhwc_schedules import PACK_RULE

    x = te.placeholder((1, 4, 4, 8), "float32", name="x")
    y = te.compute(x.shape, lambda *i: x(*i) + 1.0, name="pad", attrs={"schedule_rule": PACK_RULE})
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([x, y])}))
    rule = next(r for r in rules.RULES if r.name == PACK_RULE)
    before = sch.mod
    with caplog.at_level(logging.DEBUG, logger="edgepress.backends.kernels.rules"):
        result = rule.apply(sch, sch.get_sblock("pad"))
    assert len(result) == 1 and result[0].mod.script() == before.script()
    assert "does not apply" in caplog.text and "interior" in caplog.text


def _elementwise_funcs():
    """TE functions over an NHWC value x [1, 4, 5, 48]: a batch-norm-like chain with
    per-channel operands, a transpose, a reduction, and a chain whose last block names a
    schedule rule."""
    from tvm import te, topi

    x = te.placeholder((1, 4, 5, 48), "float32", name="x")
    scale = te.placeholder((1, 1, 1, 48), "float32", name="scale")
    shift = te.placeholder((48,), "float32", name="shift")
    y = te.compute(x.shape, lambda n, h, w, c: x[n, h, w, c] * scale[0, 0, 0, c], name="y")
    z = te.compute(x.shape, lambda n, h, w, c: te.max(y[n, h, w, c] + shift[c], 0.0), name="z")
    chain = te.create_prim_func([x, scale, shift, z])
    transposed = te.create_prim_func([x, topi.transpose(x, (0, 3, 1, 2))])
    reduced = te.create_prim_func([x, topi.sum(x, axis=(1, 2))])
    ruled = te.compute(x.shape, lambda *i: y(*i) + 1.0, name="pad",
                       attrs={"schedule_rule": "edgepress.pack_int8"})  # fmt: skip
    return chain, transposed, reduced, te.create_prim_func([x, scale, ruled])


def test_elementwise_schedule_takes_broadcast_chains_and_matches_numpy():
    """common/elementwise_schedule: a chain with per-channel operands is inlined into one
    block, its channels split into whole vectors (vectorized) under one parallel loop, and
    computes what numpy does; a transpose, a reduction and channels that are not whole
    vectors of 4 keep TVM's sample (None)."""
    import numpy as np
    import tvm

    from edgepress.backends.kernels.common.elementwise_schedule import (
        schedule_elementwise,
        vector_width,
        why_not_elementwise,
    )
    from edgepress.backends.kernels.common.tir_walk import loops, sblocks

    chain, transposed, reduced, ruled = _elementwise_funcs()
    assert why_not_elementwise(chain) is None
    assert "out of order" in why_not_elementwise(transposed)
    assert "reduces" in why_not_elementwise(reduced)
    assert "own rule" in why_not_elementwise(ruled)  # a pad behind the chain: the pack rule's
    assert schedule_elementwise(transposed, 16) is None
    # channels in the widest whole vectors: of the target's lanes, half or a quarter of them
    assert [vector_width(c, 16) for c in (48, 24, 20, 6)] == [16, 8, 4, None]

    parallel, vectorized = int(tvm.tirx.ForKind.PARALLEL), int(tvm.tirx.ForKind.VECTORIZED)
    halves = schedule_elementwise(chain, 32)  # 48 channels: three vectors of 16
    kinds = [(int(loop.kind), int(loop.extent)) for loop in loops(halves)]
    assert kinds == [(parallel, 4 * 5 * 3), (vectorized, 16)], kinds
    scheduled = schedule_elementwise(chain, 16)
    assert len([b for b in sblocks(scheduled) if b.name_hint != "root"]) == 1
    kinds = [(int(loop.kind), int(loop.extent)) for loop in loops(scheduled)]
    assert kinds == [(parallel, 4 * 5 * 3), (vectorized, 16)], kinds

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 5, 48)).astype(np.float32)
    scale = rng.standard_normal((1, 1, 1, 48)).astype(np.float32)
    shift = rng.standard_normal(48).astype(np.float32)
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target="llvm")
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, scale, shift)), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(x * scale + shift, 0), rtol=1e-6)


def test_per_channel_vectors_are_not_layout_free_when_sampled():
    """relax/pipeline._vectors_not_layout_free: a function left to sampling keeps the
    layout-free mark on its weights but not on a per-channel vector (whose mark kept the pad
    rule from inlining the batch norm that reads it); a function not named keeps both."""
    import tvm
    from tvm import te

    from edgepress.backends.relax.pipeline import _vectors_not_layout_free

    x = te.placeholder((1, 8, 6, 6), "float32", name="x")
    w = te.placeholder((8, 8, 3, 3), "float32", name="w")
    v = te.placeholder((1, 8, 1, 1), "float32", name="v")
    y = te.compute(x.shape, lambda n, c, h, i: x[n, c, h, i] * w[c, c, 0, 0] + v[0, c, 0, 0])
    func = te.create_prim_func([x, w, v, y]).with_attr("layout_free_buffers", [1, 2])
    mod = tvm.IRModule({"sampled": func, "tuned": func})
    mod = _vectors_not_layout_free(mod, {"sampled"})
    assert [int(i) for i in mod["sampled"].attrs["layout_free_buffers"]] == [1]
    assert [int(i) for i in mod["tuned"].attrs["layout_free_buffers"]] == [1, 2]
