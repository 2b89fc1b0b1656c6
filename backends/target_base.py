"""What every target module provides, so the driver never branches on the target's name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

# The compiled library's file name inside an artifact folder, for every target.
LIBRARY_NAME = "model.so"
# Link options for every artifact: TVM's LLVM code generator emits DWARF debug information,
# about 0.4 MB per model that nobody debugs on a device (8% of int8 MobileNetV2's library).
LINK_OPTIONS = ["-Wl,--strip-debug"]


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


@dataclass(frozen=True)
class Backend:
    """One target: how to make its TVM target, build, package and run the artifact."""

    name: str
    summary: str
    tvm_target: Callable[[TargetOptions], dict]
    # Builds the Relax module into the folder with the given TuningOptions; returns the files
    # written (library first) and facts for the report ("tuning": None or a summary; "kernels").
    build: Callable[..., tuple[list[Path], dict]]
    # A runner for an artifact folder, or the reason it cannot run on this machine.
    runner: Callable[[Path], Runner | str]
    extra_files: tuple[str, ...] = field(default=())
