"""CUDA target: dlight GPU schedules, device code compiled to a fatbin by nvcc at build time."""

from __future__ import annotations

from pathlib import Path

from edgepress.backends.runtime import cuda_codegen
from edgepress.backends.runtime.host import HostRunner
from edgepress.backends.runtime.runtime_folder import CUDART, copy_runtime
from edgepress.backends.targets.base import (
    LIBRARY_NAME,
    LINK_OPTIONS,
    RUNTIME_DIR,
    RUNTIME_NOTE,
    Backend,
    Runner,
    TargetOptions,
    no_cpu_options,
)
from edgepress.compiler.errors import BackendError, UsageError

HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


def tvm_target(options: TargetOptions) -> dict:
    if not options.arch.startswith("sm_") or not options.arch[3:].isdigit():
        raise UsageError(f"--arch {options.arch!r}: expected sm_NN, e.g. sm_80 or sm_90")
    # What every CUDA GPU gives a block without opt-in (dlight assumes the same, with a warning
    # per kernel when the target does not say it).
    return {"kind": "cuda", "arch": options.arch, "max_shared_memory_per_block": 49152,
            "max_threads_per_block": 1024}  # fmt: skip


def prepare(target: dict) -> None:
    cuda_codegen.prepare(target["arch"])


def package(executable, target: dict, outdir: Path) -> tuple[list[Path], dict]:
    library = outdir / LIBRARY_NAME
    executable.export_library(str(library), options=LINK_OPTIONS)
    fatbin = cuda_codegen.embedded_fatbin_bytes(library)
    if fatbin == 0:
        raise BackendError(
            f"{library}: the CUDA library holds no device code (only CUDA source); nvcc did not run"
        )
    runtime = copy_runtime("cuda", outdir, RUNTIME_DIR)
    return [library, *runtime], {
        "device_code": f"fatbin for {target['arch']} with PTX, {fatbin} bytes",
        "runtime": RUNTIME_NOTE + f"; with TVM's CUDA module and {CUDART} (CUDA 13), so the "
        "device needs only the NVIDIA driver (580 or newer, CUDA 13)",
    }


def runner(artifact: Path) -> Runner | str:
    reason = cuda_codegen.gpu_missing()
    if reason:
        return reason
    return HostRunner(artifact / LIBRARY_NAME, device="cuda")


BACKEND = Backend(
    name="cuda",
    summary="NVIDIA GPU (--arch sm_80 by default); device code compiled by nvcc, runs where a GPU is",
    tvm_target=tvm_target,
    package=package,
    host=HOST,
    prepare=prepare,
    cannot_measure=cuda_codegen.gpu_missing,
    runner=runner,
    check_options=lambda options: no_cpu_options("cuda", options),
)
