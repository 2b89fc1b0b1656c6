"""The table of schedule rules (backends/kernels/rules.py): every rule a compute names is in
it, once, and a rule that does not apply leaves the block as it is instead of failing."""

from __future__ import annotations

import logging


def test_every_named_rule_is_in_the_table_once():
    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common import nhwc_schedules
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
