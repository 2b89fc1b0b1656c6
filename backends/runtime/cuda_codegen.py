"""Making TVM emit real CUDA device code (a fatbin, via nvcc) on machines without a GPU driver.

Without libcuda.so.1, TVM 0.27's CUDA runtime library does not load and codegen silently falls
back to a module holding CUDA C source only. Here we load the driver if there is one, else a
build-only stub (runner/cuda_driver_stub.c) with the same soname, then load TVM's CUDA runtime
so its real module factory is registered, and register the nvcc callback that turns the source
into a fatbin for the requested arch, with PTX for it embedded so newer GPUs can JIT it.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import struct
import subprocess
from pathlib import Path

from edgepress.backends.cache import cache_dir
from edgepress.compiler.errors import BackendError

log = logging.getLogger(__name__)

STUB_SOURCE = Path(__file__).parent / "src" / "cuda_driver_stub.c"
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_state: dict[str, object] = {}


def _load_driver() -> bool:
    """Load libcuda.so.1 globally: the real driver (returns True) or the stub (returns False)."""
    if "real_driver" in _state:
        return bool(_state["real_driver"])
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        _state["real_driver"] = True
        return True
    except OSError:
        pass
    stub = cache_dir("cuda-stub") / "libcuda.so.1"
    if not stub.exists() or stub.stat().st_mtime < STUB_SOURCE.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise BackendError("no C compiler (cc) to build the CUDA driver stub; install gcc")
        tmp = stub.with_suffix(".tmp")
        proc = subprocess.run(
            [cc, "-shared", "-fPIC", "-o", str(tmp), str(STUB_SOURCE), "-Wl,-soname,libcuda.so.1"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BackendError(f"building the CUDA driver stub failed: {proc.stderr[-1000:]}")
        tmp.replace(stub)
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    _state["real_driver"] = False
    return False


_KEEP_LOADED: list = []


def _load_tvm_cuda_runtime() -> None:
    import tvm_ffi
    from tvm.libinfo import find_libtvm_runtime
    from tvm_ffi.libinfo import load_lib_ctypes

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    runtime_dir = Path(find_libtvm_runtime()).resolve().parent
    try:
        library = load_lib_ctypes(
            package="tvm",
            target_name="tvm_runtime_cuda",
            extra_lib_paths=[runtime_dir],
            mode="RTLD_LOCAL",
        )
    except (OSError, RuntimeError) as err:
        raise BackendError(f"TVM's CUDA runtime library does not load: {err}") from err
    _KEEP_LOADED.append(library)  # the module factory lives as long as the library
    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise BackendError("TVM's CUDA runtime loaded but registered no CUDA module factory")


def prepare(arch: str) -> None:
    """Route TVM's CUDA codegen through nvcc for `arch` (e.g. sm_80)."""
    import tvm
    import tvm_ffi
    from tvm.support import nvcc as tvm_nvcc

    if shutil.which("nvcc") is None:
        raise BackendError(
            "nvcc not found: the cuda target compiles device code with the CUDA "
            "toolkit's nvcc; put it on PATH"
        )
    number = arch.removeprefix("sm_")
    _load_driver()
    _load_tvm_cuda_runtime()
    gencode = ["-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]"]
    target = tvm.target.Target({"kind": "cuda", "arch": arch})

    def compile_with_nvcc(code, *_):
        # nvcc's wrapper reads the current target for the arch even when given one explicitly.
        with target:
            return tvm_nvcc.compile_cuda(
                code, target_format="fatbin", arch=gencode, compiler="nvcc"
            )

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_with_nvcc, override=True)


def gpu_missing() -> str | None:
    """Why CUDA code cannot run here, or None when a GPU is usable."""
    import tvm

    if not _load_driver():
        return "no GPU (no NVIDIA driver on this machine)"
    _load_tvm_cuda_runtime()
    if not tvm.cuda(0).exist:
        return "no GPU (the NVIDIA driver sees no device)"
    return None


def embedded_fatbin_bytes(library: Path) -> int:
    """Size of the device code blob in the library (0 when it holds none, e.g. source only)."""
    data = Path(library).read_bytes()
    start = data.find(FATBIN_MAGIC)
    if start < 0:
        return 0
    # fatbin header: magic u32, version u16, header size u16, payload size u64.
    header_size, payload = struct.unpack_from("<HQ", data, start + 6)
    return int(header_size + payload)
