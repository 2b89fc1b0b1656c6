"""x86-64 host target: LLVM for the build machine's CPU (or --mcpu), run in-process here; the
folder's runtime/ runs it on another x86-64 machine without Python."""

from __future__ import annotations

from pathlib import Path

import os

from edgepress.backends.runtime.host import HostRunner
from edgepress.backends.runtime.runtime_folder import copy_runtime
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


def host_cpu_name() -> str:
    """LLVM's name for this machine's CPU (e.g. znver3), so the code uses its vector units."""
    import tvm

    name = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName", allow_missing=True)
    return str(name()) if name is not None else "x86-64"


AMX_FEATURES = ("amx-tile", "amx-int8")


def host_amx() -> bool:
    """Whether this CPU has AMX's int8 tiles (as LLVM reads CPUID) and Linux lets this process
    use their state (arch_prctl ARCH_REQ_XCOMP_PERM, which kernels/int8/amx_conv asks again)."""
    import ctypes

    import tvm

    features = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures", allow_missing=True)
    if features is None:
        return False
    found = features()
    if not all(bool(found.get(name, False)) for name in AMX_FEATURES):
        return False
    from edgepress.backends.kernels.int8.amx_conv import (
        ARCH_REQ_XCOMP_PERM,
        SYS_ARCH_PRCTL,
        XFEATURE_XTILEDATA,
    )

    libc = ctypes.CDLL(None, use_errno=True)
    request = (SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    return libc.syscall(*(ctypes.c_long(v) for v in request)) == 0


def tvm_target(options: TargetOptions) -> dict:
    # num-cores: MetaSchedule sizes parallel loops by it (and refuses to tune without it).
    target = {
        "kind": "llvm",
        "mtriple": "x86_64-linux-gnu",
        "mcpu": options.mcpu or host_cpu_name(),
        "num-cores": options.num_cores or os.cpu_count() or 1,
    }
    mattr = list(options.mattr)
    # A virtual machine may report a CPU model older than its features (LLVM named one with
    # AMX "rocketlake", whose feature list has none): building for this machine, its AMX
    # features are added where the name lacks them. Only there: a name that has them (an
    # emeraldrapids host) keeps its target, and the tuning records shipped for it.
    if not options.mcpu and host_amx():
        named = {attr[1:] for attr in mattr} | _cpu_features(target["mcpu"], AMX_FEATURES)
        mattr += [f"+{name}" for name in AMX_FEATURES if name not in named]
    if mattr:
        target["mattr"] = mattr
    return target


def _cpu_features(mcpu: str, features: tuple[str, ...]) -> set[str]:
    """Which of `features` LLVM's CPU `mcpu` has by its name alone."""
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    return {name for name in features if codegen.target_has_features(name, target)}


def package(executable, target: dict, outdir: Path) -> tuple[list[Path], dict]:
    library = outdir / LIBRARY_NAME
    executable.export_library(str(library), options=LINK_OPTIONS)
    return [library, *copy_runtime("x86_64", outdir, RUNTIME_DIR)], {"runtime": RUNTIME_NOTE}


def runner(artifact: Path) -> Runner | str:
    return HostRunner(artifact / LIBRARY_NAME, device="cpu")


BACKEND = Backend(
    name="x86_64",
    summary="x86-64 Linux, LLVM for this CPU (--mcpu to choose another), runs natively",
    tvm_target=tvm_target,
    package=package,
    runner=runner,
    check_options=lambda options: check_llvm_options("x86_64", "x86_64-linux-gnu", options),
)
