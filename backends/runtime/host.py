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

    def profile(self, inputs: list[np.ndarray], repeat: int) -> dict[str, tuple[int, float]]:
        """Per VM call target (kernels and VM builtins): calls per run and seconds per run,
        the mean over `repeat` runs after a warm-up. Each call is timed from Python through
        the VM's instrument hook, which adds a few microseconds per call."""
        import time

        import tvm

        if self._vm is None:
            self._load()
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in inputs]
        self._vm["main"](*args)
        totals: dict[str, list] = {}
        started: dict[str, float] = {}

        def instrument(func, name, before_run, ret_value, *call_args):
            if before_run:
                started[name] = time.perf_counter()
            else:
                entry = totals.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started[name]
            return 0  # VMInstrumentReturnKind.kNoOp

        self._vm.set_instrument(instrument)
        try:
            for _ in range(repeat):
                self._vm["main"](*args)
        finally:
            self._vm.set_instrument(None)
        return {
            name: (calls // repeat, seconds / repeat) for name, (calls, seconds) in totals.items()
        }

    def time(self, inputs: list[np.ndarray], repeat: int, number: int = 1) -> list[float]:
        """Seconds per run, `repeat` samples of `number` runs each (after one warm-up run)."""
        import tvm

        if self._vm is None:
            self._load()
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in inputs]
        self._vm["main"](*args)  # warm-up: first-call allocation and page faults
        timer = self._vm.time_evaluator("main", self._device, number=number, repeat=repeat)
        return list(timer(*args).results)
