"""Every schedule rule of edgepress's kernels, in one table.

A kernel's TE compute names its rule in the `schedule_rule` attribute of its block;
MetaSchedule's ApplyCustomRule then calls the global function `s_tir.meta_schedule.cpu.<name>`
(registered here) instead of its generic rules. Each row says which compute it schedules,
which targets it serves, when it does not apply (the kernel is then left as plain loops, and
the debug log says why) and which post-schedule injector, if any, edits the scheduled
function (the weight prefetches, for which TVM has no schedule primitive).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgepress.backends.kernels.common import nhwc_compute, nhwc_schedules, softmax
from edgepress.backends.kernels.common.tir_walk import loops
from edgepress.backends.kernels.float import batch_matmul
from edgepress.backends.kernels.float import compute as float_compute
from edgepress.backends.kernels.float import schedules as float_schedules
from edgepress.backends.kernels.int8 import compute as int8_compute
from edgepress.backends.kernels.int8 import schedules as int8_schedules
from edgepress.backends.targets.description import TargetDescription
from edgepress.compiler.errors import first_line, strict

log = logging.getLogger(__name__)

CPU_FAMILIES = frozenset({"x86_64", "arm64"})


@dataclass(frozen=True)
class KernelRule:
    name: str  # the block's schedule_rule (part of the workload key: never rename)
    compute: tuple[Callable, ...]  # the TE computes whose blocks name it
    schedule: Callable  # (schedule, block) -> [schedule]
    families: frozenset[str] = CPU_FAMILIES  # TargetDescription.family values it serves
    # (schedule, block) -> why the rule does not apply, or None
    declines: Callable | None = None
    injector: Callable | None = None  # PrimFunc -> PrimFunc, after scheduling
    # the loop annotation the rule's schedule leaves for its injector (blocks lose theirs
    # when they are tensorized, loops keep them)
    marker: str | None = None

    def apply(self, sch, block):
        """The rule's schedules for `block`; where it declines or fails, the block as it is
        (plain loops; EDGEPRESS_STRICT=1 raises instead)."""
        why = self.declines(sch, block) if self.declines else None
        if why is None:
            trial = sch.copy()
            try:
                return self.schedule(trial, block)
            except Exception as err:
                if strict():
                    raise
                why = f"{type(err).__name__}: {first_line(err)}"
        log.debug("rule %s does not apply to %s: %s", self.name, sch.get(block).name_hint, why)
        return [sch]


def _no_interior(sch, block) -> str | None:
    if nhwc_schedules.INTERIOR_ATTR not in sch.get(block).annotations:
        return f"the block has no {nhwc_schedules.INTERIOR_ATTR} annotation"
    return None


def _ranks(*loops: int) -> Callable:
    def declines(sch, block) -> str | None:
        found = len(sch.get_loops(block))
        return None if found in loops else f"{found} loops, not the {loops} the rule tiles"

    return declines


RULES: tuple[KernelRule, ...] = (
    KernelRule(
        int8_schedules.RULE,
        (int8_compute.packed_conv2d,),
        int8_schedules.schedule_conv2d_int8,
        injector=int8_schedules.inject_weight_prefetch,
        marker=int8_schedules.PREFETCH_ATTR,
    ),
    KernelRule(
        nhwc_schedules.PACK_RULE,
        (int8_compute.pack_activations, nhwc_compute.pad_nhwc),
        nhwc_schedules.schedule_pack,
        declines=_no_interior,
    ),
    KernelRule(
        nhwc_schedules.DEPTHWISE_RULE,
        (nhwc_compute.depthwise_sums,),
        nhwc_schedules.schedule_depthwise,
        declines=_ranks(6),
    ),
    KernelRule(
        nhwc_schedules.WINDOW_RULE,
        (nhwc_compute.max_pool2d, nhwc_compute.avg_pool2d),
        nhwc_schedules.schedule_window,
        declines=_no_interior,
    ),
    KernelRule(
        nhwc_schedules.MEAN_RULE,
        (nhwc_compute.spatial_mean, nhwc_compute.column_reduce, nhwc_compute.full_reduce),
        nhwc_schedules.schedule_spatial_mean,
        declines=_ranks(3, 4),
    ),
    KernelRule(
        float_schedules.RULE,
        (float_compute.conv2d_nhwc,),
        float_schedules.schedule_conv2d_float,
        injector=float_schedules.inject_weight_prefetch,
        marker=float_schedules.PREFETCH_ATTR,
    ),
    KernelRule(
        batch_matmul.RULE,
        (batch_matmul.batch_matmul,),
        batch_matmul.schedule_batch_matmul,
    ),
    KernelRule(
        float_compute.NARROW_RULE,
        (float_compute.narrow_pointwise,),
        float_schedules.schedule_narrow_pointwise,
    ),
    KernelRule(
        softmax.RULE,
        (softmax.softmax_last_axis,),
        softmax.schedule_softmax,
        declines=softmax.declines,
    ),
    KernelRule(
        float_compute.WINOGRAD_RULE,
        (float_compute.winograd_input, float_compute.winograd_output),
        float_schedules.schedule_winograd_transform,
    ),
)


def rules_for(target: TargetDescription) -> tuple[KernelRule, ...]:
    return tuple(rule for rule in RULES if target.family in rule.families)


def register(target: TargetDescription) -> None:
    """Make the target's rules known to MetaSchedule (idempotent)."""
    import tvm

    for rule in rules_for(target):
        name = f"s_tir.meta_schedule.cpu.{rule.name}"
        if tvm.get_global_func(name, allow_missing=True) is None:
            tvm.register_global_func(name, rule.apply)


def inject(func, target: TargetDescription):
    """A scheduled PrimFunc with the injectors applied of the rules whose marker is on one of
    its loops."""
    marks = {str(key) for loop in loops(func) for key in loop.annotations.keys()}
    for rule in rules_for(target):
        if rule.injector is not None and rule.marker in marks:
            func = rule.injector(func)
    return func
