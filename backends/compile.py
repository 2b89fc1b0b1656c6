"""Relax module -> VM executable: tuned records applied when the target's database has them.

Without records, the target's own default pipeline (relax.get_default_pipeline: fusion
included; the plain tvm.compile default does no fusion on CPU). With a tuning database for the
target, MetaSchedule's compile_relax applies its records and leaves other functions to the
default schedules; with --tune-trials/--tune-minutes, the tasks the database lacks are tuned first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepress.compiler.errors import BackendError, UsageError, first_line

# --tune-minutes alone: trials are bounded by the clock, not by this.
TRIALS_FOR_A_TIME_BUDGET = 100_000


@dataclass(frozen=True)
class TuningOptions:
    trials: int = 0
    minutes: float | None = None
    database: Path | None = None  # --tuning-db; else $EDGEPRESS_TUNING_DB, else the cache

    @property
    def requested(self) -> bool:
        return self.trials > 0 or bool(self.minutes)


def make_target(target: dict, host: dict | None = None):
    import tvm

    try:
        return tvm.target.Target(target, host=host) if host else tvm.target.Target(target)
    except Exception as err:
        raise BackendError(f"TVM rejects the target {target}: {first_line(err)}") from err


def compile_relax(mod, target):
    """tvm.compile with relax.get_default_pipeline(target): the plain default does no fusion."""
    import tvm
    from tvm import relax

    try:
        return tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    except Exception as err:
        raise BackendError(
            f"TVM failed to compile for {target.kind.name}: {first_line(err)}"
        ) from err


def compile_module(
    mod,
    target_dict: dict,
    tuning: TuningOptions,
    *,
    host: dict | None = None,
    cannot_measure: str | None = None,
):
    """The executable, and the tuning summary for the report (None when no database applies).

    `cannot_measure` is why candidates cannot be timed on this machine (tuning is refused then;
    records from a database are still applied).
    """
    from edgepress.backends.tuning import database_dir, tune_and_compile

    target = make_target(target_dict, host=host)
    if tuning.requested and cannot_measure:
        raise UsageError(
            f"--tune-trials/--tune-minutes: cannot tune for {target.kind.name} "
            f"{target_dict.get('mtriple', target_dict.get('arch', ''))} here: "
            f"{cannot_measure}"
        )
    folder = database_dir(target_dict, tuning.database, create=tuning.requested)
    if folder is None:
        return compile_relax(mod, target), None
    trials = tuning.trials or (TRIALS_FOR_A_TIME_BUDGET if tuning.minutes else 0)
    try:
        executable, summary = tune_and_compile(
            mod, target, folder, trials=trials, minutes=tuning.minutes
        )
    except (UsageError, BackendError):
        raise
    except Exception as err:
        raise BackendError(
            f"tuning or compiling with the database {folder} failed: {first_line(err)}"
        ) from err
    return executable, summary.to_json()
