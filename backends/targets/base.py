"""What every target module provides, so the driver never branches on the target's name."""

from __future__ import annotations

import difflib

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgepress.compiler.errors import UsageError

# The compiled library's file name inside an artifact folder, for every target.
LIBRARY_NAME = "model.so"
# Link options for every artifact: TVM's LLVM code generator emits DWARF debug information,
# about 0.4 MB per model that nobody debugs on a device (8% of int8 MobileNetV2's library).
LINK_OPTIONS = ["-Wl,--strip-debug"]
# Every CPU and cuda artifact carries runtime/ (backends/runtime/runtime_folder.py).
RUNTIME_DIR = "runtime"
RUNTIME_NOTE = (
    "runtime/ holds edgepress-run, the C API (edgepress.h, libedgepress.so) and the TVM runtime "
    "libraries they load: `runtime/edgepress-run FOLDER OUT_DIR in0.npy ... [--repeat N]`"
)


@dataclass(frozen=True)
class TargetOptions:
    """Per-target knobs from the command line; each target reads the ones it knows."""

    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    arch: str = "sm_80"
    num_cores: int | None = None  # cores the code is parallelized for (CPU targets)


class Runner(Protocol):
    """Runs an artifact: inputs in the model's input order, outputs in its output order."""

    description: str
    emulated: bool  # True when run under an emulator: outputs count, times do not

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...

    def time(self, inputs: list[np.ndarray], repeat: int) -> list[float]:
        """Seconds per run, one sample per repeat, after a warm-up."""
        ...


def check_llvm_options(name: str, triple: str, options: TargetOptions) -> None:
    """--mcpu and --mattr checked against what LLVM knows for the triple, before anything is
    built: LLVM itself only prints a warning per function and ignores the name."""
    if not options.mcpu and not options.mattr:
        return
    import tvm
    from tvm.target import codegen

    base = {"kind": "llvm", "mtriple": triple}
    cpus = sorted(str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target(base)))
    if options.mcpu and options.mcpu not in cpus:
        hint = _did_you_mean(options.mcpu, cpus) or f"; known: {', '.join(cpus)}"
        raise UsageError(
            f"--mcpu {options.mcpu!r}: not a CPU LLVM knows for --target {name} ({triple}){hint}"
        )
    features: set[str] = set()
    for cpu in cpus:
        spec = tvm.target.Target({**base, "mcpu": cpu})
        features |= {str(f) for f in codegen.llvm_get_cpu_features(spec)}
    for attr in options.mattr:
        feature = attr[1:] if attr[:1] in "+-" else ""
        if not feature:
            raise UsageError(f"--mattr {attr!r}: each feature starts with + or - (e.g. +{attr})")
        if feature not in features:
            raise UsageError(
                f"--mattr {attr!r}: not a feature LLVM knows for --target {name} ({triple})"
                f"{_did_you_mean(feature, sorted(features), '+')}"
            )


def _did_you_mean(word: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def no_cpu_options(name: str, options: TargetOptions) -> None:
    if options.mcpu or options.mattr:
        raise UsageError(f"--mcpu/--mattr apply to CPU targets; --target {name} takes --arch")


def nothing_to_prepare(target: dict) -> None:
    return None


def can_measure() -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One target: its TVM target, what it needs before compiling, how its artifact is packaged
    and run. The compiling itself is the same for all (backends/pipeline.py)."""

    name: str
    summary: str
    tvm_target: Callable[[TargetOptions], dict]
    # Writes the compiled executable into the folder: the files written (library first) and
    # the target's notes for the report.
    package: Callable[[object, dict, Path], tuple[list[Path], dict]]
    # A runner for an artifact folder, or the reason it cannot run on this machine.
    runner: Callable[[Path], Runner | str]
    host: dict | None = None  # the TVM host target of a device target
    # Checks and sets up what compiling needs (a toolchain, nvcc), raising BackendError.
    prepare: Callable[[dict], None] = nothing_to_prepare
    # Why candidates cannot be timed here (tuning is refused then), or None.
    cannot_measure: Callable[[], str | None] = can_measure
    # Refuses (UsageError) target options this target cannot use.
    check_options: Callable[[TargetOptions], None] = lambda options: None
