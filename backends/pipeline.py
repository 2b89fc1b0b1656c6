"""The one backend pipeline: ONNX -> import -> lower -> prepare -> tune -> finish -> package.

- import: TVM's ONNX importer (relax/importer.py), each Conv/Gemm/MatMul's call named after
  its ONNX node;
- lower: QDQ layers to integer kernels (kernels/int8), float convs and matmuls to edgepress's
  NHWC kernels (kernels/float), as LoweringOptions says and the target can;
- prepare: legalization and fusion (relax/pipeline.prepare);
- tune: MetaSchedule over the tasks no database covers, when asked (tuning/);
- finish: records applied, the rest sampled, the kernel rules' injectors, the VM build;
- package: the target's library and files (targets/).

edgepress's own kernels are an optimization: a model they break (a crash in the lowering, or a
build that fails after it) is built again with TVM's generic lowering, and the report says why.
EDGEPRESS_STRICT=1 (the test suite sets it) raises instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from edgepress.backends.options import FloatConv, Int8Compute, LoweringOptions, TuningOptions
from edgepress.backends.targets.base import Backend, TargetOptions
from edgepress.backends.targets.description import TargetDescription, describe
from edgepress.compiler.errors import BackendError, UsageError, first_line, strict

log = logging.getLogger(__name__)
# --tune-minutes alone: trials are bounded by the clock, not by this.
TRIALS_FOR_A_TIME_BUDGET = 100_000


@dataclass
class Compiled:
    """What the pipeline made: the files written (library first) and facts for the report."""

    files: list[Path]
    target: dict  # the TVM target, as a dict
    description: TargetDescription
    notes: dict  # the target's own notes (runtime folder, device code)
    tuning: dict | None
    kernels: list[dict]
    int8: dict | None  # what the int8 lowering did per layer (None: no QDQ)
    float_conv: dict | None  # what the float lowering did per layer


def make_target(target: dict, host: dict | None = None):
    import tvm

    try:
        return tvm.target.Target(target, host=host) if host else tvm.target.Target(target)
    except Exception as err:
        raise BackendError(f"TVM rejects the target {target}: {first_line(err)}") from err


def compile_model(
    model: onnx.ModelProto,
    source: str,
    backend: Backend,
    target_options: TargetOptions,
    lowering: LoweringOptions,
    tuning: TuningOptions,
    outdir: Path,
    *,
    stage: Callable | None = None,
) -> Compiled:
    """Compile `model` (fixed input shapes) for `backend` into `outdir`. `stage(name, detail)`
    gives a context that reports a step (the tuning) to the user."""
    from edgepress.backends.kernels import rules
    from edgepress.backends.kernels.common import tensor_intrinsics
    from edgepress.backends.relax.importer import import_onnx
    from edgepress.backends.tuning.database import database_dir

    target_dict = backend.tvm_target(target_options)
    target = make_target(target_dict, host=backend.host)
    description = describe(target)
    tensor_intrinsics.load(description.intrinsic_families)
    rules.register(description)
    cannot_measure = backend.cannot_measure() if tuning.requested else None
    if tuning.requested and cannot_measure:
        raise UsageError(
            f"--tune-trials/--tune-minutes: cannot tune for {backend.name} here: {cannot_measure}"
        )
    backend.prepare(target_dict)
    folder = database_dir(target_dict, tuning.database, create=tuning.requested)
    mod, names = import_onnx(model, source)

    def schedule(module, legalize):
        try:
            return _schedule(
                module, target, target_dict, description, folder, lowering, tuning, legalize, stage
            )
        except (UsageError, BackendError):
            raise
        except Exception as err:
            where = f" with the database {folder}" if folder else ""
            raise BackendError(
                f"TVM failed to tune or compile for {backend.name}{where}: {first_line(err)}"
            ) from err

    int8 = float_conv = None
    lowered_ok = False
    legalize = _legalize(description, lowering)
    try:
        lowered, int8, float_conv = _lower(mod, description, lowering, names)
        lowered_ok = True
        executable, kernels, summary = schedule(lowered, legalize)
    except UsageError:
        raise
    except Exception as err:
        if (lowered_ok and not _lowered_any(int8, float_conv)) or strict():
            raise
        why = f"edgepress's kernels failed on this model ({type(err).__name__}: {first_line(err)})"
        log.warning("%s; building with TVM's generic lowering instead", why)
        executable, kernels, summary = schedule(mod, legalize)
        if int8 is not None or _has_qdq(mod):
            int8 = {"compute": "float", "why": why, "layers": [], "fallback": True}
            float_conv = None
        else:
            float_conv = {"kernels": "tvm", "why": why, "layers": [], "fallback": True}
    files, notes = backend.package(executable, target_dict, outdir)
    return Compiled(
        files=files,
        target=target_dict,
        description=description,
        notes=notes,
        tuning=summary.to_json() if summary else None,
        kernels=[k.to_json() for k in kernels],
        int8=int8,
        float_conv=float_conv,
    )


def _schedule(mod, target, target_dict, description, folder, lowering, tuning, legalize, stage):
    """prepare -> tune -> finish: the executable, its kernels and the tuning summary."""
    from edgepress.backends.kernels import rules
    from edgepress.backends.relax.pipeline import finish, prepare
    from edgepress.backends.tuning.search import tune

    prepared = prepare(mod, target, description, legalize=legalize)
    budget = f"{tuning.minutes} min" if tuning.minutes else f"{tuning.trials} trials"
    tuning_stage = stage("tune", budget) if stage and tuning.requested else nullcontext()
    with tuning_stage:
        database, summary = tune(
            prepared,
            target,
            target_dict,
            description,
            folder,
            trials=tuning.trials or (TRIALS_FOR_A_TIME_BUDGET if tuning.minutes else 0),
            minutes=tuning.minutes,
            use_shipped=tuning.shipped,
            retune=tuning.retune,
        )
    executable, kernels = finish(
        prepared,
        target,
        description,
        database,
        untuned=str(lowering.untuned),
        post_schedule=lambda func: rules.inject(func, description),
    )
    return executable, kernels, summary


def _legalize(description: TargetDescription, lowering: LoweringOptions) -> dict | None:
    """The ops legalized otherwise than TVM does: on CPUs, the transcendental functions through
    vectorizable approximations (kernels/common/fast_math); with --winograd, 3x3 convs."""
    if description.is_gpu:
        return None
    from edgepress.backends.kernels.common.fast_math import legalize_map

    legalize = legalize_map()
    if lowering.winograd:
        from edgepress.backends.kernels.float.winograd_legalize import legalize_conv2d

        legalize["relax.nn.conv2d"] = legalize_conv2d
    return legalize


def _has_qdq(mod) -> bool:
    from edgepress.backends.kernels.int8.lowering import has_qdq

    return has_qdq(mod)


def _lowered_any(*notes: dict | None) -> bool:
    """Whether a lowering's report notes list any layer it replaced with an edgepress kernel."""
    return any(layer.get("kernel") for note in notes if note for layer in note.get("layers", []))


def _lower(mod, description: TargetDescription, lowering: LoweringOptions, names: dict):
    """The module with edgepress's kernels, and for the report what the int8 lowering (None
    for a model without QDQ) and the float lowering (None where it does not run) did. In an
    int8 model the float lowering takes the layers left float (kept so for accuracy, or not
    quantizable), which TVM's generic convolutions would otherwise run at a third of the speed."""
    mod, integer = _lower_integer_matmuls(mod, description, lowering, names)
    if not _has_qdq(mod):
        mod, float_conv = _lower_float(mod, description, lowering, names, integer)
        return mod, None, float_conv
    mod, int8 = _lower_int8(mod, description, lowering, names)
    lowered = [layer["kernel"] for layer in int8["layers"]]
    float_left = int8["compute"] == "integer" and not all(lowered)
    if not float_left and not _nhwc_convs(integer):
        if integer:  # dynamic quantization's integer matmuls, nothing float left to lower
            return mod, int8, _float_notes(description, lowering, integer)
        return mod, int8, None
    try:
        mod, float_conv = _lower_float(mod, description, lowering, names, integer)
    except Exception as err:  # an extra here: the int8 kernels stand, the float layers go to TVM
        why = f"the float lowering failed in this int8 model ({type(err).__name__}: {err})"
        log.warning("%s; its float layers use TVM's kernels", why.splitlines()[0])
        float_conv = {"kernels": "tvm", "why": why.splitlines()[0], "layers": []}
    return mod, int8, float_conv


def _nhwc_convs(integer: list | None) -> bool:
    """Whether _lower_integer_matmuls took convs: NHWC kernels, whose neighbours the float
    lowering's rewrite keeps in NHWC (and whose dynamic quantizations it fuses)."""
    return any(layer.op == "conv2d" for layer in integer or [])


def _lower_integer_matmuls(
    mod, description: TargetDescription, lowering: LoweringOptions, names: dict
) -> tuple[object, list]:
    """Dynamic quantization's integer matmuls (int8/integer_matmul) on the dot-product kernels,
    where the target has them and integer compute is not turned off."""
    from edgepress.backends.kernels.int8.integer_matmul import lower_integer_matmuls

    layout = description.dot
    if layout is None or lowering.int8_compute is Int8Compute.FLOAT:
        return mod, []
    if lowering.float_conv is FloatConv.TVM:
        return mod, []
    try:
        return lower_integer_matmuls(mod, layout, names)
    except Exception as err:  # an extra: those matmuls stay float
        log.warning(
            "the integer matmul lowering failed (%s: %s); dynamic quantization's matmuls stay "
            "float", type(err).__name__, first_line(err)
        )
        return mod, []


def _lower_int8(mod, description: TargetDescription, lowering: LoweringOptions, names: dict):
    from edgepress.backends.kernels.int8.lowering import lower_qdq

    layout = description.dot
    if lowering.int8_compute is Int8Compute.FLOAT or layout is None:
        why = "--int8-compute float"
        if lowering.int8_compute is not Int8Compute.FLOAT:
            why = f"no integer kernels for {description.family}"
        return mod, {"compute": "float", "why": why, "layers": []}
    mod, layers = lower_qdq(mod, layout, names)
    return mod, {
        "compute": "integer",
        "act_dtype": layout.act_dtype,
        "lanes": layout.lanes,
        "intrinsic": layout.intrinsic,
        "amx": layout.amx,
        "layers": [layer.to_json() for layer in layers],
    }


def _lower_float(
    mod,
    description: TargetDescription,
    lowering: LoweringOptions,
    names: dict,
    integer: list | None = None,
):
    """The float lowering's module and report notes; `integer`: the layers taken before it
    (_lower_integer_matmuls), listed first."""
    from edgepress.backends.kernels.float.lowering import lower_float

    lanes = description.float_lanes
    if lanes is None:
        return mod, None
    if lowering.float_conv is FloatConv.TVM:
        return mod, {"kernels": "tvm", "why": "--float-conv tvm", "layers": []}
    winograd = lowering.float_conv is FloatConv.EDGEPRESS
    nhwc_before = _nhwc_convs(integer)
    mod, layers = lower_float(
        mod,
        lanes,
        names,
        skip_winograd=lowering.winograd,
        winograd=winograd,
        nhwc_before=nhwc_before,
    )
    return mod, _float_notes(description, lowering, [*(integer or []), *layers])


def _float_notes(description: TargetDescription, lowering: LoweringOptions, layers: list) -> dict:
    """The report's notes of the float lowering, its layers numbered in order."""
    layers = [replace(layer, index=i) for i, layer in enumerate(layers)]
    return {
        "kernels": str(lowering.float_conv),
        "lanes": description.float_lanes,
        "layers": [layer.to_json() for layer in layers],
    }
