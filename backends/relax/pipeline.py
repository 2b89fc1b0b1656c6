"""The Relax pipeline every build runs, in two halves around scheduling.

`prepare` does what TVM's per-target pipelines do before scheduling (library dispatch,
legalization, operator fusion) and marks weights as layout-free, so MetaSchedule may store them
in whatever layout its schedule reads fastest (the weight-prepacking of TVM's
static_shape_tuning_pipeline). Tasks are extracted from, tuned on, and looked up in this module,
so their workload keys always agree.

`finish` applies the tuning records, gives every function no record covers the target's
fallback schedule, folds the weight-layout transforms into the constants at compile time, and
lowers to the VM. The fallback on GPUs is dlight's rules. On CPUs it is one sample of
MetaSchedule's own design space (its default CPU rules: multi-level tiling, parallel outer
loops, vectorized inner loops, weight layout rewrite), taken without measuring anything. TVM's
plain loops run on one thread without vectors (benchmarks/speed.py --loops times both), and
dlight's CPU rules cover only GEMV and reductions. `finish` also lists every kernel with its
FLOPs and how it was scheduled, for the report and for `compress bench --profile`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass
class Kernel:
    """One TIR function of the built module."""

    name: str
    flops: float  # TVM's estimate_tir_flops over the scheduled loop nest (not the graph's MACs x 2)
    # "tuned" (a record), "sampled" (CPU fallback), "dlight" (GPU fallback), "loops" (none),
    # "written" (a kernel written as loops, channel_concat), "elementwise" (the CPU fallback's
    # own schedule of an elementwise function: common/elementwise_schedule)
    schedule: str
    serial: bool = False  # too small to share between threads: relax/small_kernels

    def to_json(self) -> dict:
        return asdict(self)


def prepare(mod, target, description, *, legalize: dict | None = None):
    """Imported Relax module -> fused TIR functions with layout-free weights (not yet scheduled).

    `legalize` overrides the legalization of some ops (--winograd: conv2d as TOPI's Winograd
    F(4x4, 3x3), kernels/float/winograd_legalize.py)."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    legalized = [
        *dispatch,
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(customize_legalize_map=legalize),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    fused = [relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if not description.is_gpu:
        fused.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(legalized)(mod)
        if not description.is_gpu:
            mod = _unfused_where_it_works(mod)
        mod = tvm.transform.Sequential(fused)(mod)
    return mod if description.is_gpu else _layout_free_where_read_directly(mod)


def _unfused_where_it_works(mod):
    """relax/expanding_broadcasts on `mod`, or `mod` as it is where that step fails (an
    optimization: a model it cannot read builds with FuseOps' own fusion, with a warning)."""
    from edgepress.backends.relax.expanding_broadcasts import unfuse_expanding_broadcasts
    from edgepress.compiler.errors import strict

    try:
        return unfuse_expanding_broadcasts(mod)
    except Exception as err:  # noqa: BLE001 - an optimization never breaks a build
        if strict():
            raise
        log.warning(
            "expanding broadcasts left fused (%s: %s)", type(err).__name__, str(err)[:200]
        )
        return mod


def _layout_free_where_read_directly(mod):
    """Drop the layout-free mark of a function that transforms its weights before use (a block
    reading nothing but a layout-free buffer: conv2d_transpose's flipped IOHW -> OIHW copy).

    MetaSchedule's weight layout rewrite of such a function computed wrong results: a
    conv2d_transpose to one output channel (a PaddleOCR detector's last layer) was off by up to
    20 on unit inputs; without the mark it is exact. A written kernel (the AMX conv, which
    takes constant weights) reads its weights in the layout it was written for: no mark either.
    """
    import tvm

    from edgepress.backends.kernels.common.tir_walk import sblocks

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None:
            continue
        marked = func.attrs.get("layout_free_buffers")
        if not marked:
            continue
        if _is_written(func):
            mod[gv] = func.with_attr("layout_free_buffers", [])
            continue
        # Python sees no buffer_map: a parameter's buffer shares its name
        free = {func.params[int(i)].name for i in marked}
        for block in sblocks(func):
            sources = {r.source.name for r in block.reads}
            if sources and sources <= free:
                mod[gv] = func.with_attr("layout_free_buffers", [])
                log.debug("%s transforms its weights: no layout rewrite", gv.name_hint)
                break
    return mod


def _vectors_not_layout_free(mod, names: set[str]):
    """The functions named in `names` with their per-channel vectors (a bias, a batch norm's
    scale and shift: at most one axis longer than 1) no longer marked layout-free.

    Rewriting a vector's layout gains nothing, and the mark keeps the pack rule from inlining
    the elementwise ops that read one (nhwc_schedules._inline_producers leaves blocks that read
    a layout-free buffer where they are: MetaSchedule's layout rewrite inside the pack breaks
    SplitLayoutRewritePreproc): the batch norm after ppocrv5-det's upsampling ran as five
    loop nests of their own before the next conv's pad, 5.7 ms. Only the functions left to
    sampling: a tuned function keeps the attributes its records were found for."""
    for gv, func in list(mod.functions.items()):
        if gv.name_hint not in names or func.attrs is None:
            continue
        marked = func.attrs.get("layout_free_buffers")
        if not marked:
            continue
        kept = [
            int(i)
            for i in marked
            if sum(int(d) > 1 for d in _param_shape(func, int(i))) > 1
        ]
        if len(kept) != len(marked):
            mod[gv] = func.with_attr("layout_free_buffers", kept)
    return mod


def _param_shape(func, index: int) -> list:
    """The shape of parameter `index`'s buffer, as a block reads it (Python sees no
    buffer_map: a parameter's buffer shares its name)."""
    from edgepress.backends.kernels.common.tir_walk import sblocks

    name = func.params[index].name
    for block in sblocks(func):
        for region in block.reads:
            if region.source.name == name:
                return list(region.source.shape)
    return []


def _is_scheduled(func) -> bool:
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


def _is_written(func) -> bool:
    """A kernel written as loops by edgepress (channel_concat), scheduled as it is."""
    from edgepress.backends.kernels.common.channel_concat import WRITTEN

    return bool(func.attrs is not None and func.attrs.get(WRITTEN, False))


def _gpu_fallback():
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    )


# The CPU fallback takes this design space of MetaSchedule's default CPU rules (the last of the
# three: multi-level tiling with its own cache-write stage): on ResNet-18 one sample of it ran
# in 0.26 s against 0.59 s and 0.73 s for the other two.
FALLBACK_SPACE = -1
PREPACKED = "_prepacked"
FALLBACK_TRIES = 4  # seeds tried before a function is left as plain loops
# A sample may compute a reduction inside the loop of its consumer (RandomComputeLocation):
# a 1000-class softmax then recomputes its max and sum per element, 550x the work, 2-4 ms
# against onnxruntime's 8 us. A sample estimated at more than this many times the function's
# own FLOPs, and by more than RECOMPUTE_SLACK of them (a small function's split loops and
# rfactor stages count for more than they cost), is refused (another seed, else plain loops).
RECOMPUTE_LIMIT = 1.5
# edgepress's own rules compute whole vectors of output channels: 24 channels as 32 with a
# SiLU behind them was estimated at 1.51x and fell to plain loops. Up to 3x is that padding
# and an epilogue's expression copied into each of its reads (the estimate counts the copies,
# which TIR's common-subexpression elimination removes): ddddocr's first conv, one input
# channel, with a dynamic quantization's two scales and a SiLU behind it, 2.35x. Beyond it
# (a conv's epilogue run per pixel of the padding behind it: 4-12x) is refused.
OUR_RECOMPUTE_LIMIT = 3.0
RECOMPUTE_SLACK = 16384


def _by_our_rule(func) -> bool:
    """Whether a block of `func` names one of edgepress's kernel rules (kernels/rules.py): its
    schedule is written, not sampled, and computes output channels padded to whole vectors."""
    from edgepress.backends.kernels.common.tir_walk import sblocks
    from edgepress.backends.kernels.rules import RULES

    names = {rule.name for rule in RULES}
    return any(str(b.annotations.get("schedule_rule", "")) in names for b in sblocks(func))


def _tensorized(spaces):
    """The first design space that uses a tensor intrinsic (an int8 dot product), if any: one
    untimed sample of it beats any plain-loop space for the kernels it applies to."""
    for sch in spaces:
        if "meta_schedule.auto_tensorize" in str(sch.trace):
            return sch
    return None


def sample_schedules(mod, target, description, names: set[str], seed: int = 0):
    """Schedule the PrimFuncs named in `names` with one valid sample of MetaSchedule's design
    space (no measurement); returns the module and the names it scheduled."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    done = set()
    for gv, func in list(mod.functions.items()):
        if gv.name_hint not in names:
            continue
        ours = _by_our_rule(func)
        for attempt in range(FALLBACK_TRIES):
            try:
                context = ms.TuneContext(
                    mod=tvm.IRModule({"main": func}),
                    target=target,
                    space_generator=description.space_generator(),
                    rand_state=seed + attempt,
                    num_threads=1,
                )
                spaces = context.generate_design_space()
                if not spaces:
                    break
                tensorized = _tensorized(spaces)
                sch = tensorized or spaces[FALLBACK_SPACE]
                valid = all(p.apply(sch) for p in context.space_generator.postprocs)
            except Exception as err:  # a function MetaSchedule's rules cannot take: plain loops
                log.debug("no sampled schedule for %s: %s", gv.name_hint, err)
                break
            limit = OUR_RECOMPUTE_LIMIT if ours else RECOMPUTE_LIMIT
            # MetaSchedule's own samples are measured against their own inlining (the copies
            # of an inlined expression are the same work, which TIR's CSE removes); edgepress's
            # rules against the function as written (channel padding counts: see above).
            baseline = func if ours else _inlined_as_sampled(func, sch)
            if (
                valid
                and tensorized is None
                and _reduces(func)
                and _recomputes(baseline, sch.mod, limit)
            ):
                log.debug("sample %d of %s recomputes its reductions", attempt, gv.name_hint)
                continue
            if valid:
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                done.add(gv.name_hint)
                break
    return mod, done


def _scalars_inlined(func):
    """`func` with its blocks that write a one-element buffer (a dynamic quantization's scale
    and zero point) inlined into their readers, as a sample's AutoInline does. The expression
    is loop-invariant, and LLVM hoists it out of the loop; counted per element against the
    function as written, it had sent every dynamically quantized conv input (ddddocr's,
    onnxruntime's quantize_dynamic) to plain loops on one thread, 2.6x over the limit.
    (Elementwise blocks in general stay counted as written: a block read several times, once
    inlined, is a copy of its expression per read, and chains of them grow the expression
    exponentially, which the simplifier then takes minutes over.)"""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        writes = sch.get(block).writes
        try:
            if writes and all(all(int(d) == 1 for d in w.source.shape) for w in writes):
                sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a symbolic shape, or not inlinable: as it is
            pass
    return sch.mod


# The instructions of a sample's trace that inline blocks, and the one that names a block.
_INLINING = frozenset({"ComputeInline", "ReverseComputeInline"})
_GET_BLOCK = "GetSBlock"


def _inlined_as_sampled(func, sch):
    """`func` with the sample's own inlining (its AutoInline) and nothing else of it.

    An inlined elementwise block is a copy of its expression per read: a tanh-GELU's clipped
    input, read by each term of fast_tanh's polynomial, counted 4.2x the function as written,
    and magika's two GELUs (one before a max over the sequence) went to plain loops on one
    thread. TIR's common-subexpression elimination removes those copies. Against this, a
    sample's estimate grows only where it moves work into another loop (a reduction computed
    per element of its consumer: the 1000-class softmax the guard is there for). Where the
    replay fails, `func` as written."""
    import tvm
    from tvm import s_tir

    try:
        inlines = [i for i in sch.trace.insts if i.kind.name in _INLINING]
        blocks = {b for i in inlines for b in i.inputs}
        insts = [
            i
            for i in sch.trace.insts
            if i.kind.name in _INLINING or (i.kind.name == _GET_BLOCK and i.outputs[0] in blocks)
        ]
        replayed = s_tir.Schedule(tvm.IRModule({"main": func}))
        s_tir.schedule.Trace(insts, {}).apply_to_schedule(replayed, remove_postproc=False)
        return replayed.mod["main"]
    except Exception:  # noqa: BLE001 - a trace this replay does not follow: as written
        return func


def _schedule_elementwise(mod, description, names: set[str]):
    """The functions named in `names` that are elementwise with broadcasting, scheduled by
    common/elementwise_schedule instead of a sample; returns the module and their names."""
    from edgepress.backends.kernels.common.elementwise_schedule import schedule_elementwise
    from edgepress.compiler.errors import strict

    done = set()
    for gv, func in list(mod.functions.items()):
        if gv.name_hint not in names:
            continue
        try:
            scheduled = schedule_elementwise(func, description.float_lanes)
        except Exception as err:  # noqa: BLE001 - an extra: the function is sampled instead
            if strict():
                raise
            log.debug("no elementwise schedule for %s: %s", gv.name_hint, err)
            continue
        if scheduled is not None:
            mod[gv] = scheduled.with_attr("tirx.is_scheduled", True)
            done.add(gv.name_hint)
    return mod, done


def _reduces(func) -> bool:
    """Whether `func` has a reduction block, the work a sample could recompute per element of
    its consumer. Without one, a sample's estimate grows only by inlined copies and by selects
    counted whole: a YOLO's Focus layer (four quantized slices, concatenated into the first
    conv's packed input) read as 4.1x and went to plain loops on one thread, 0.83 ms."""
    from edgepress.backends.kernels.common.tir_walk import sblocks

    return any(block.init is not None for block in sblocks(func))


def _recomputes(func, scheduled, limit: float = RECOMPUTE_LIMIT) -> bool:
    """Whether the scheduled function is estimated at over `limit` x the FLOPs of the
    function as written (its one-element blocks inlined: _scalars_inlined), and
    RECOMPUTE_SLACK more (work done again in a consumer's loop)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        before = float(estimate_tir_flops(_scalars_inlined(func)))
        after = float(estimate_tir_flops(scheduled))
    except Exception:  # no estimate (symbolic extents, opaque blocks): nothing to compare
        return False
    return before > 0 and after > limit * before and after - before > RECOMPUTE_SLACK


def _flops(mod) -> dict[str, float]:
    """FLOPs of each PrimFunc, estimated before scheduling: a tensorized kernel (an int8 dot
    product) has no estimate afterwards."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from edgepress.backends.kernels.common.channel_concat import FLOPS_ATTR

    flops = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            if func.attrs is not None and FLOPS_ATTR in func.attrs:  # a written kernel's own
                flops[gv.name_hint] = float(func.attrs[FLOPS_ATTR])
                continue
            try:
                flops[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({gv: func})))
            except Exception:  # some functions (layout copies, symbolic extents) have none
                flops[gv.name_hint] = 0.0
    return flops


def kernels_of(
    mod,
    tuned: set[str],
    sampled: set[str],
    fallback: str,
    flops: dict,
    written=frozenset(),
    elementwise=frozenset(),
    serial=frozenset(),
) -> list[Kernel]:
    """Each PrimFunc with its FLOPs (from `flops`, by name) and how it was scheduled."""
    import tvm

    kernels = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        # SplitLayoutRewritePreproc renames a kernel whose weights it prepacked.
        name = gv.name_hint.removesuffix(PREPACKED)
        if name in written:
            schedule = "written"
        elif name in elementwise:
            schedule = "elementwise"
        else:
            schedule = "tuned" if name in tuned else "sampled" if name in sampled else fallback
        kernels.append(
            Kernel(gv.name_hint, flops.get(name, 0.0), schedule, gv.name_hint in serial)
        )
    return kernels


def _lowering_passes(target) -> list:
    """The target's dataflow-lowering and finalizing passes (the tail of its default pipeline).

    TVM 0.27's dispatcher does not find them for CPU targets (cpu_generic does not export
    them), so they come from the target's pipeline module itself.
    """
    from tvm.relax import pipeline
    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

    try:
        return pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
    except (ValueError, AttributeError):
        return cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)


def finish(
    prepared, target, description, database=None, *, untuned: str = "sampled", post_schedule=None
):
    """Schedule (records, then the target's fallback), fold weight layouts, build for the VM.

    `untuned` picks the CPU fallback: "sampled" or "loops" (TVM's plain loops: faster builds,
    far slower code). `post_schedule` edits each scheduled PrimFunc (the kernel rules'
    injectors). Returns the executable and the kernel list.
    """
    import tvm
    from tvm import relax
    from tvm.relax.vm_build import build as relax_build

    from edgepress.backends.relax.small_kernels import serial_where_small

    flops = _flops(prepared)
    with target, tvm.transform.PassContext(opt_level=3):
        mod = prepared
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        written = {
            gv.name_hint
            for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and _is_written(f)
        }
        tuned = {
            gv.name_hint
            for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and _is_scheduled(f)
        } - written
        elementwise = set()
        if description.is_gpu:
            mod = _gpu_fallback()(mod)
            sampled, fallback = set(), "dlight"
        else:
            fallback = "loops"
            sampled = set()
            if untuned == "sampled":
                names = {
                    gv.name_hint
                    for gv, f in mod.functions.items()
                    if isinstance(f, tvm.tirx.PrimFunc)
                    and gv.name_hint not in tuned | written
                }
                mod = _vectors_not_layout_free(mod, names)
                mod, elementwise = _schedule_elementwise(mod, description, names)
                mod, sampled = sample_schedules(mod, target, description, names - elementwise)
        # The schedules' weight-layout rewrites become separate functions on constants, which
        # FoldConstant evaluates now: the library holds the weights already in the tuned layout.
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc) and post_schedule is not None:
                mod[gv] = post_schedule(func)
        serial = set()
        if not description.is_gpu:
            mod, serial = serial_where_small(
                mod, lambda name: flops.get(name.removesuffix(PREPACKED))
            )
        kernels = kernels_of(mod, tuned, sampled, fallback, flops, written, elementwise, serial)
        mod = tvm.transform.Sequential(_lowering_passes(target))(mod)
        executable = relax_build(mod, target=target, relax_pipeline=None)
    return executable, kernels
