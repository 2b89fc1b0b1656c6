"""Runs an artifact in this process through TVM's Relax VM (x86_64 here, cuda with a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.compiler.errors import BackendError, first_line


def _flatten(value) -> list[np.ndarray]:
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [array for item in value for array in _flatten(item)]


class HostRunner:
    def __init__(self, library: Path, device: str = "cpu") -> None:
        self.library = Path(library)
        self.device_name = device
        self.description = f"in-process TVM VM on {device}"
        self.emulated = False
        self._vm = None

    def _load(self):
        import tvm
        from tvm import relax

        device = tvm.cpu() if self.device_name == "cpu" else tvm.cuda(0)
        try:
            lib = tvm.runtime.load_module(str(self.library))
            self._device = device
            self._vm = relax.VirtualMachine(lib, device)
        except Exception as err:
            raise BackendError(
                f"{self.library}: cannot load the artifact: {first_line(err)}"
            ) from err

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import tvm

        if self._vm is None:
            self._load()
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in inputs]
        try:
            return _flatten(self._vm["main"](*args))
        except Exception as err:
            raise BackendError(
                f"{self.library}: running the artifact failed: {first_line(err)}"
            ) from err

    def time(self, inputs: list[np.ndarray], repeat: int, number: int = 1) -> list[float]:
        """Seconds per run, `repeat` samples of `number` runs each (after one warm-up run)."""
        import tvm

        if self._vm is None:
            self._load()
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in inputs]
        self._vm["main"](*args)  # warm-up: first-call allocation and page faults
        timer = self._vm.time_evaluator("main", self._device, number=number, repeat=repeat)
        return list(timer(*args).results)
