"""Runs an arm64 artifact with its own edgepress-run: natively on aarch64, else under qemu."""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgepress.compiler.errors import BackendError

QEMU = "qemu-aarch64"
SYSROOT = Path("/usr/aarch64-linux-gnu")


def qemu_missing() -> str | None:
    """Why arm64 code cannot run here, or None when it can."""
    if platform.machine() in ("aarch64", "arm64"):
        return None
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (apt-get install qemu-user)"
    if not (SYSROOT / "lib").is_dir():
        return f"no aarch64 sysroot at {SYSROOT} (apt-get install gcc-aarch64-linux-gnu)"
    return None


class RunnerProcess:
    """edgepress-run in a subprocess, exchanging .npy files through a temporary folder."""

    def __init__(self, folder: Path, runner: Path, *, emulate: bool, timeout_s: float = 1800):
        self.folder = Path(folder)  # named in errors, given to the runner
        self.runner = Path(runner)
        self.emulate = emulate
        self.timeout_s = timeout_s
        self.description = f"{runner.name} under {QEMU}" if emulate else f"{runner.name} natively"
        self.emulated = emulate  # times under qemu mean nothing

    def _command(self, out_dir: Path, inputs: list[Path], repeat: int) -> list[str]:
        cmd = [str(self.runner), str(self.folder), str(out_dir), *map(str, inputs)]
        if repeat:
            cmd += ["--repeat", str(repeat)]
        if self.emulate:
            cmd = [QEMU, "-L", str(SYSROOT), *cmd]
        return cmd

    def _invoke(self, inputs: list[np.ndarray], repeat: int = 0) -> tuple[list[np.ndarray], str]:
        with tempfile.TemporaryDirectory(prefix="edgepress-run-") as tmp:
            tmp_path = Path(tmp)
            paths = []
            for i, array in enumerate(inputs):
                paths.append(tmp_path / f"input_{i}.npy")
                np.save(paths[-1], np.ascontiguousarray(array))
            out_dir = tmp_path / "out"
            out_dir.mkdir()
            try:
                proc = subprocess.run(
                    self._command(out_dir, paths, repeat),
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                )
            except subprocess.TimeoutExpired as err:
                raise BackendError(
                    f"{self.folder}: {self.description} ran past {self.timeout_s:.0f} s"
                ) from err
            if proc.returncode != 0:
                raise BackendError(
                    f"{self.folder}: {self.description} failed (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()[-1500:]}"
                )
            outputs = []
            i = 0
            while (out_dir / f"output_{i}.npy").exists():
                outputs.append(np.load(out_dir / f"output_{i}.npy"))
                i += 1
            return outputs, proc.stdout

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._invoke(inputs)[0]

    def time(self, inputs: list[np.ndarray], repeat: int) -> list[float]:
        """Seconds per run, measured inside the runner (meaningless under qemu)."""
        stdout = self._invoke(inputs, repeat)[1]
        lines = stdout.split("times_ms:", 1)[-1].split()
        return [float(v) / 1e3 for v in lines]
