"""The runtime/ folder every CPU and cuda artifact carries, built once per machine and cached.

It holds libedgepress.so (the C API of edgepress.h over TVM's runtime), the header, the
edgepress-run runner that uses that API, and exactly the TVM runtime libraries they load, so
an artifact folder runs on its device as it is: no Python, no TVM compiler there.

- x86_64: TVM's runtime from the installed apache-tvm and apache-tvm-ffi wheels, built with g++.
- cuda: the same plus TVM's CUDA runtime module and the CUDA runtime (libcudart) it links; the
  device needs only the NVIDIA driver.
- aarch64: the runtime libraries and C++ headers from the manylinux aarch64 wheels of the same
  versions (fetched with pip once), built with Debian's aarch64-linux-gnu-g++.
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
from dataclasses import dataclass
from pathlib import Path

from edgepress.backends.cache import cache_dir
from edgepress.compiler.errors import BackendError

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent / "src"
API_SOURCE = SOURCES / "edgepress_api.cc"
HEADER = SOURCES / "edgepress.h"
RUNNER_SOURCE = SOURCES / "edgepress_run.cc"
RUNNER = "edgepress-run"
API_LIBRARY = "libedgepress.so"
CROSS_CXX = "aarch64-linux-gnu-g++"
HOST_CXX = "g++"
_WHEEL_PLATFORM = "manylinux_2_28_aarch64"
CUDART = "libcudart.so.13"  # what the apache-tvm wheel's libtvm_runtime_cuda.so links
CUDA_LIBRARY_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib")


@dataclass(frozen=True)
class Flavor:
    """One kind of runtime folder: the compiler and the TVM libraries it links and carries."""

    name: str
    cxx: str
    tvm_libraries: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        extra = (CUDART,) if self.name == "cuda" else ()
        return (RUNNER, API_LIBRARY, HEADER.name, *self.tvm_libraries, *extra)


FLAVORS = {
    "x86_64": Flavor("x86_64", HOST_CXX, ("libtvm_runtime.so", "libtvm_ffi.so")),
    "cuda": Flavor("cuda", HOST_CXX, ("libtvm_runtime.so", "libtvm_runtime_cuda.so", "libtvm_ffi.so")),
    "aarch64": Flavor("aarch64", CROSS_CXX, ("libtvm_runtime.so", "libtvm_ffi.so")),
}


def _versions() -> tuple[str, str]:
    return (importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi"))


def _source_digest() -> str:
    digest = hashlib.sha256()
    for source in (HEADER, API_SOURCE, RUNNER_SOURCE):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _download_wheels(dest: Path) -> list[Path]:
    tvm_version, ffi_version = _versions()
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--platform", _WHEEL_PLATFORM, "--python-version", "3.11", "-d", str(dest),
        f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}",
    ]  # fmt: skip
    log.info("fetching the aarch64 TVM runtime wheels (once per machine)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(
            "cannot fetch the aarch64 TVM runtime: 'pip download' of the apache-tvm "
            f"{tvm_version} and apache-tvm-ffi {ffi_version} aarch64 wheels failed: "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        )
    return sorted(dest.glob("*.whl"))


def _aarch64_libraries(work: Path, staged: Path) -> Path:
    """The aarch64 runtime libraries copied into `staged`; the headers unpacked in `work`."""
    include = work / "include"
    for wheel in _download_wheels(work / "wheels"):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                base = name.rsplit("/", 1)[-1]
                if name in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
                    (staged / base).write_bytes(zf.read(name))
                elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                    target = include / name[len("tvm_ffi/include/") :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
    for lib in FLAVORS["aarch64"].tvm_libraries:
        if not (staged / lib).exists():
            raise BackendError(f"the aarch64 wheels hold no {lib}; cannot build arm64 runners")
    return include


def _cudart() -> Path:
    for folder in CUDA_LIBRARY_DIRS:
        path = Path(folder) / CUDART
        if path.is_file():
            return path
    raise BackendError(
        f"{CUDART} not found in {', '.join(CUDA_LIBRARY_DIRS)}: the cuda runtime folder "
        "carries the CUDA 13 runtime that TVM's CUDA module links (install the CUDA toolkit)"
    )


def _host_libraries(flavor: Flavor, staged: Path) -> Path:
    """The installed wheels' runtime libraries copied into `staged`; their include dir."""
    import tvm
    import tvm_ffi

    found = {
        "libtvm_runtime.so": Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so",
        "libtvm_runtime_cuda.so": Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so",
        "libtvm_ffi.so": Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so",
    }
    for lib in flavor.tvm_libraries:
        if not found[lib].is_file():
            raise BackendError(f"{found[lib]} not found: the apache-tvm install is incomplete")
        shutil.copy2(found[lib], staged / lib)
    if flavor.name == "cuda":
        shutil.copy2(_cudart(), staged / CUDART)
    return Path(tvm_ffi.__file__).parent / "include"


def _compile(flavor: Flavor, include: Path, staged: Path) -> None:
    cxx = shutil.which(flavor.cxx)
    if cxx is None:
        raise BackendError(
            f"{flavor.cxx} not found: the {flavor.name} runtime is built with it"
            + (" (apt-get install g++-aarch64-linux-gnu qemu-user)" if flavor.name == "aarch64" else "")
        )
    # RPATH, not RUNPATH ($ORIGIN for every library loaded, the TVM ones' own dependencies too);
    # libraries this machine may lack (the NVIDIA driver) are the device's to provide.
    link = ["-Wl,--disable-new-dtags,-rpath,$ORIGIN", f"-L{staged}", "-Wl,--allow-shlib-undefined"]
    tvm_libs = [f"-l{lib[3:-3]}" for lib in flavor.tvm_libraries]
    commands = [
        [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
         "-I", str(include), "-I", str(include / "dlpack"), str(API_SOURCE),
         "-o", str(staged / API_LIBRARY), *link, "-Wl,--no-as-needed", *tvm_libs],
        [cxx, "-std=c++17", "-O2", "-I", str(SOURCES), str(RUNNER_SOURCE),
         "-o", str(staged / RUNNER), *link, "-ledgepress"],
    ]  # fmt: skip
    for cmd in commands:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BackendError(
                f"building the {flavor.name} runtime ({Path(cmd[-1]).name}) failed:\n"
                f"{proc.stderr[-2000:]}"
            )
    shutil.copy2(HEADER, staged / HEADER.name)


def runtime_dir(flavor_name: str) -> Path:
    """The cached runtime folder of `flavor_name` ("x86_64", "cuda", "aarch64"), built if new."""
    flavor = FLAVORS[flavor_name]
    tvm_version, ffi_version = _versions()
    root = cache_dir(f"{flavor.name}-runtime")
    final = root / f"tvm-{tvm_version}-ffi-{ffi_version}-src-{_source_digest()}"
    if all((final / f).exists() for f in flavor.files):
        return final
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        staged = work / "runtime"
        staged.mkdir()
        if flavor.name == "aarch64":
            include = _aarch64_libraries(work, staged)
        else:
            include = _host_libraries(flavor, staged)
        _compile(flavor, include, staged)
        if not final.exists():
            staged.rename(final)
    return final


def copy_runtime(flavor_name: str, outdir: Path, folder: str = "runtime") -> list[Path]:
    """The runtime folder copied into the artifact's `outdir/folder`; the files written."""
    source = runtime_dir(flavor_name)
    (outdir / folder).mkdir()
    return [
        Path(shutil.copy2(source / name, outdir / folder / name))
        for name in FLAVORS[flavor_name].files
    ]
