"""The aarch64 TVM runtime and the edgepress-run runner, built once per machine and cached.

The apache-tvm manylinux aarch64 wheel carries libtvm_runtime.so, and the apache-tvm-ffi one
libtvm_ffi.so and the C++ headers; edgepress-run (runner/edgepress_run.cc) is cross-compiled
against them with Debian's aarch64-linux-gnu-g++. The three files go into every arm64 artifact
(runtime/), so the folder runs on a device as it is, and under qemu-aarch64 here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgepress.backends.cache import cache_dir
from edgepress.compiler.errors import BackendError

log = logging.getLogger(__name__)

RUNNER_SOURCE = Path(__file__).parent / "src" / "edgepress_run.cc"
CROSS_CXX = "aarch64-linux-gnu-g++"
RUNTIME_FILES = ("edgepress-run", "libtvm_runtime.so", "libtvm_ffi.so")
_WHEEL_PLATFORM = "manylinux_2_28_aarch64"


def _versions() -> tuple[str, str]:
    return (importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi"))


def _runner_digest() -> str:
    return hashlib.sha256(RUNNER_SOURCE.read_bytes()).hexdigest()[:16]


def _download_wheels(dest: Path) -> list[Path]:
    tvm_version, ffi_version = _versions()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        _WHEEL_PLATFORM,
        "--python-version",
        "3.11",
        "-d",
        str(dest),
        f"apache-tvm=={tvm_version}",
        f"apache-tvm-ffi=={ffi_version}",
    ]
    log.info("fetching the aarch64 TVM runtime wheels (once per machine)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(
            "cannot fetch the aarch64 TVM runtime: 'pip download' of the apache-tvm "
            f"{tvm_version} and apache-tvm-ffi {ffi_version} aarch64 wheels failed: "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        )
    return sorted(dest.glob("*.whl"))


def _extract(wheels: list[Path], dest: Path) -> Path:
    """Copy the two runtime libraries into dest; unpack the headers; return the include dir."""
    include = dest / "include"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                base = name.rsplit("/", 1)[-1]
                if name in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
                    (dest / base).write_bytes(zf.read(name))
                elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                    target = include / name[len("tvm_ffi/include/") :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
    for lib in ("libtvm_runtime.so", "libtvm_ffi.so"):
        if not (dest / lib).exists():
            raise BackendError(f"the aarch64 wheels hold no {lib}; cannot build arm64 runners")
    return include


def _compile_runner(include: Path, libdir: Path, out: Path) -> None:
    cxx = shutil.which(CROSS_CXX)
    if cxx is None:
        raise BackendError(
            f"{CROSS_CXX} not found: the arm64 target needs Debian's cross toolchain "
            "(apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user)"
        )
    cmd = [
        cxx,
        "-std=c++17",
        "-O2",
        "-I",
        str(include),
        "-I",
        str(include / "dlpack"),
        str(RUNNER_SOURCE),
        "-o",
        str(out),
        f"-L{libdir}",
        "-Wl,--no-as-needed",
        "-ltvm_runtime",
        "-ltvm_ffi",
        "-Wl,-rpath,$ORIGIN",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"building edgepress-run for aarch64 failed:\n{proc.stderr[-2000:]}")


def aarch64_runtime_dir() -> Path:
    """A folder holding edgepress-run, libtvm_runtime.so and libtvm_ffi.so for aarch64."""
    tvm_version, ffi_version = _versions()
    root = cache_dir("aarch64-runtime")
    final = root / f"tvm-{tvm_version}-ffi-{ffi_version}-runner-{_runner_digest()}"
    if all((final / f).exists() for f in RUNTIME_FILES):
        return final
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        staged = work / "runtime"
        staged.mkdir()
        wheels = _download_wheels(work / "wheels")
        include = _extract(wheels, staged)
        _compile_runner(include, staged, staged / "edgepress-run")
        shutil.rmtree(include)
        if not final.exists():
            staged.rename(final)
    return final
