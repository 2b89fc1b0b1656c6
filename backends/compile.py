"""Relax module -> VM executable, with tuning records applied where any database has them.

Every build goes through relax_pipeline.prepare/finish: records from the user's tuning database
for this target (--tuning-db, else a folder per target under the cache) and records shipped
with edgepress for exactly this target are applied; other functions get the target's default
schedule. With --tune-trials/--tune-minutes, the tasks no database covers are tuned first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgepress.compiler.errors import BackendError, UsageError, first_line, strict

log = logging.getLogger(__name__)
# --tune-minutes alone: trials are bounded by the clock, not by this.
TRIALS_FOR_A_TIME_BUDGET = 100_000
# --int8-compute: QDQ layers as integer kernels (int8_lowering), or TVM's float QDQ
INT8_COMPUTE = ("integer", "float")
# --float-conv: float convs as edgepress's kernels (float_lowering) with Winograd F(2x2, 3x3)
# where it qualifies, the same kernels direct only, or TVM's own
FLOAT_CONV = ("edgepress", "direct", "tvm")


@dataclass(frozen=True)
class TuningOptions:
    trials: int = 0
    minutes: float | None = None
    database: Path | None = None  # --tuning-db; else $EDGEPRESS_TUNING_DB, else the cache
    shipped: bool = True  # apply the records shipped with edgepress for this exact target
    # CPU kernels without a record: "sampled" (one untimed MetaSchedule sample) or "loops"
    untuned: str = "sampled"
    retune: bool = False  # tune tasks that already have records too
    winograd: bool = False  # CPU: 3x3 stride-1 convs as Winograd F(4x4, 3x3)
    int8_compute: str = "integer"  # QDQ layers: integer kernels, or TVM's float QDQ ("float")
    # float convs: edgepress's NHWC kernels, "direct" (the same without Winograd F(2x2, 3x3)),
    # or TVM's ("tvm")
    float_conv: str = "edgepress"

    @property
    def requested(self) -> bool:
        return self.trials > 0 or bool(self.minutes)


def make_target(target: dict, host: dict | None = None):
    import tvm

    try:
        return tvm.target.Target(target, host=host) if host else tvm.target.Target(target)
    except Exception as err:
        raise BackendError(f"TVM rejects the target {target}: {first_line(err)}") from err


def compile_module(
    mod,
    target_dict: dict,
    tuning: TuningOptions,
    *,
    host: dict | None = None,
    cannot_measure: str | None = None,
):
    """The executable, and for the report: the tuning summary (None when no database applies)
    and the kernel list.

    `cannot_measure` is why candidates cannot be timed on this machine (tuning is refused then;
    records from a database are still applied).
    """
    from edgepress.backends import tensor_intrinsics
    from edgepress.backends.int8_lowering import has_qdq
    from edgepress.backends.tuning import database_dir, tune_and_compile

    target = make_target(target_dict, host=host)
    tensor_intrinsics.load(tensor_intrinsics.families_for(target_dict))
    if tuning.requested and cannot_measure:
        raise UsageError(
            f"--tune-trials/--tune-minutes: cannot tune for {target.kind.name} "
            f"{target_dict.get('mtriple', target_dict.get('arch', ''))} here: "
            f"{cannot_measure}"
        )
    folder = database_dir(target_dict, tuning.database, create=tuning.requested)
    trials = tuning.trials or (TRIALS_FOR_A_TIME_BUDGET if tuning.minutes else 0)

    def compile_lowered(module):
        try:
            return tune_and_compile(
                module,
                target,
                target_dict,
                folder,
                trials=trials,
                minutes=tuning.minutes,
                use_shipped=tuning.shipped,
                untuned=tuning.untuned,
                retune=tuning.retune,
                winograd=tuning.winograd,
            )
        except (UsageError, BackendError):
            raise
        except Exception as err:
            where = f" with the database {folder}" if folder else ""
            raise BackendError(
                f"TVM failed to tune or compile for {target.kind.name}{where}: {first_line(err)}"
            ) from err

    # edgepress's own kernels are an optimization: a model they break (a crash in the lowering,
    # or a build that fails after it) is built again with TVM's generic lowering, and the
    # report says why. EDGEPRESS_STRICT=1 (the test suite sets it) raises instead.
    int8 = float_conv = None
    lowering_done = False
    try:
        lowered, int8 = _lower_int8(mod, target, tuning.int8_compute)
        if int8 is None:
            lowered, float_conv = _lower_float(lowered, target, tuning)
        lowering_done = True
        executable, kernels, summary = compile_lowered(lowered)
    except UsageError:
        raise
    except Exception as err:
        ours = not lowering_done or _lowered_any(int8, float_conv)
        if not ours or strict():
            raise
        why = f"edgepress's kernels failed on this model ({type(err).__name__}: {first_line(err)})"
        log.warning("%s; building with TVM's generic lowering instead", why)
        executable, kernels, summary = compile_lowered(mod)
        if has_qdq(mod):
            int8, float_conv = {"compute": "float", "why": why, "layers": [], "fallback": True}, None
        else:
            float_conv = {"kernels": "tvm", "why": why, "layers": [], "fallback": True}
    return executable, {
        "tuning": summary.to_json() if summary else None,
        "kernels": [k.to_json() for k in kernels],
        "int8": int8,
        "float_conv": float_conv,
    }


def _lowered_any(*notes: dict | None) -> bool:
    """Whether a lowering's report notes list any layer it replaced with an edgepress kernel."""
    return any(layer.get("kernel") for note in notes if note for layer in note.get("layers", []))


def _lower_int8(mod, target, compute: str):
    """QDQ layers -> integer kernels (backends/int8_lowering.py); the module and, for the
    report, what happened to each layer (None for a model without QDQ)."""
    from edgepress.backends.int8_lowering import has_qdq, layout_for, lower_qdq

    if not has_qdq(mod):
        return mod, None
    layout = layout_for(target)
    if compute == "float" or layout is None:
        why = "--int8-compute float"
        if compute != "float":
            why = f"no integer kernels for {target.kind.name}"
        return mod, {"compute": "float", "why": why, "layers": []}
    mod, layers = lower_qdq(mod, layout)
    return mod, {
        "compute": "integer",
        "act_dtype": layout.act_dtype,
        "lanes": layout.lanes,
        "intrinsic": layout.intrinsic,
        "layers": [layer.to_json() for layer in layers],
    }


def _lower_float(mod, target, tuning: TuningOptions):
    """Float convs and matmuls -> edgepress's NHWC kernels (backends/float_lowering.py); the
    module and, for the report, what happened to each (None where nothing is lowered)."""
    from edgepress.backends.float_lowering import float_lanes, lower_float

    lanes = float_lanes(target)
    if lanes is None:
        return mod, None
    if tuning.float_conv == "tvm":
        return mod, {"kernels": "tvm", "why": "--float-conv tvm", "layers": []}
    winograd = tuning.float_conv == "edgepress"
    mod, layers = lower_float(mod, lanes, skip_winograd=tuning.winograd, winograd=winograd)
    return mod, {
        "kernels": tuning.float_conv,
        "lanes": lanes,
        "layers": [layer.to_json() for layer in layers],
    }
