"""arm64 target: aarch64-linux-gnu with NEON, cross-linked with Debian's toolchain.

The artifact folder carries runtime/ (edgepress-run and the aarch64 TVM runtime), so it runs
on a device as it is; here it runs under qemu-aarch64, where times mean nothing but outputs do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgepress.backends.runtime.runtime_folder import CROSS_CXX, RUNNER, copy_runtime, runtime_dir
from edgepress.backends.runtime.qemu import RunnerProcess, qemu_missing
from edgepress.backends.targets.base import (
    LIBRARY_NAME,
    LINK_OPTIONS,
    RUNTIME_DIR,
    RUNTIME_NOTE,
    Backend,
    check_llvm_options,
    Runner,
    TargetOptions,
)
from edgepress.compiler.errors import BackendError

RUNTIME_FLAVOR = "aarch64"


# Cores the schedules are parallelized for when --num-cores is not given: phones and boards
# commonly have 4 big-enough cores (MetaSchedule needs the figure to size parallel loops).
DEFAULT_CORES = 4


def tvm_target(options: TargetOptions) -> dict:
    target = {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mattr": ["+neon", *[a for a in options.mattr if a != "+neon"]],
        "num-cores": options.num_cores or DEFAULT_CORES,
    }
    if options.mcpu:
        target["mcpu"] = options.mcpu
    return target


def prepare(target: dict) -> None:
    """The cross toolchain, and the aarch64 runtime built once into the cache."""
    if shutil.which(CROSS_CXX) is None:
        raise BackendError(
            f"{CROSS_CXX} not found: the arm64 target links with Debian's cross toolchain "
            "(apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user)"
        )
    runtime_dir(RUNTIME_FLAVOR)


def cannot_measure() -> str:
    return (
        "arm64 code runs only under qemu here, whose times mean nothing (tuning needs the device)"
    )


def package(executable, target: dict, outdir: Path) -> tuple[list[Path], dict]:
    from tvm.support import cc

    library = outdir / LIBRARY_NAME
    try:
        executable.export_library(
            str(library), fcompile=cc.cross_compiler(CROSS_CXX), options=LINK_OPTIONS
        )
    except Exception as err:
        raise BackendError(f"linking the arm64 library with {CROSS_CXX} failed: {err}") from err
    files = [library, *copy_runtime(RUNTIME_FLAVOR, outdir, RUNTIME_DIR)]
    return files, {"runtime": RUNTIME_NOTE}


def runner(artifact: Path) -> Runner | str:
    reason = qemu_missing()
    if reason:
        return reason
    return RunnerProcess(artifact, artifact / RUNTIME_DIR / RUNNER, emulate=not _native())


def _native() -> bool:
    import platform

    return platform.machine() in ("aarch64", "arm64")


BACKEND = Backend(
    name="arm64",
    summary="aarch64 Linux with NEON (--mattr=+dotprod,+i8mm for newer cores); runs under qemu here",
    tvm_target=tvm_target,
    package=package,
    prepare=prepare,
    cannot_measure=cannot_measure,
    runner=runner,
    check_options=lambda options: check_llvm_options("arm64", "aarch64-linux-gnu", options),
)
