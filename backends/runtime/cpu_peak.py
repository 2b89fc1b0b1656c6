"""The fp32 peak of this machine's CPU, to say what fraction of it a kernel or a model reaches.

peak = cores x FMA units per core x fp32 lanes per vector x 2 FLOP per FMA x clock.

- lanes: from the instruction sets the kernel reports (/proc/cpuinfo flags): AVX-512F 16,
  AVX2 with FMA 8, SSE 4; on aarch64 NEON 4.
- FMA units per core: 2. True of Intel server cores since Haswell (two 512-bit FMA ports on
  Xeon Gold/Platinum; some Silver/Bronze parts have one), AMD since Zen 2, and Arm Cortex-A76
  and later; set EDGEPRESS_FMA_UNITS for a CPU with one.
- cores: the CPUs this process may run on (os.sched_getaffinity).
- clock: cpufreq's maximum when the kernel exposes it, else /proc/cpuinfo's "cpu MHz" (the
  nominal clock under most hypervisors). Turbo and AVX-512 down-clocking move the real figure
  both ways: treat the fraction of peak as an estimate, not a measurement.

With `measure` (the benchmarks' profiles), FMA units x clock is replaced by the FMA
instructions one core was measured to run per ns (instruction_rate), and the int8 peak by the
measured rate of the dot-product instruction; the estimate stands where that fails.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from edgepress.backends.runtime import instruction_rate

FMA_ENV = "EDGEPRESS_FMA_UNITS"


@dataclass(frozen=True)
class CpuPeak:
    cores: int
    lanes: int
    fma_units: int
    ghz: float
    isa: str
    fma_per_ns: float | None = None  # measured on one core (instruction_rate)
    dot_gops: dict[str, float] | None = None  # measured int8 GOP/s of one core, by intrinsic

    @property
    def gflops(self) -> float:
        if self.fma_per_ns:
            return self.cores * self.fma_per_ns * self.lanes * 2
        return self.cores * self.fma_units * self.lanes * 2 * self.ghz

    def describe(self) -> str:
        if self.fma_per_ns:
            return (
                f"{self.cores} core(s) x {self.fma_per_ns:.2f} FMA instructions per ns "
                f"(measured) x {self.lanes} fp32 lanes ({self.isa}) x 2 FLOP = "
                f"{self.gflops:.0f} GFLOP/s"
            )
        return (
            f"{self.cores} core(s) x {self.fma_units} FMA units x {self.lanes} fp32 lanes "
            f"({self.isa}) x 2 FLOP x {self.ghz:.2f} GHz = {self.gflops:.0f} GFLOP/s"
        )

    def dot_factor(self, intrinsic: str | None) -> float | None:
        """The measured int8 peak of `intrinsic`'s instruction over the fp32 peak, if any."""
        gops = (self.dot_gops or {}).get(intrinsic or "")
        return gops * self.cores / self.gflops if gops else None

    def to_json(self) -> dict:
        return {**asdict(self), "gflops": self.gflops}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _flags(info: str) -> set[str]:
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _ghz(info: str) -> float:
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(max_freq.read_text()) / 1e6
    except (OSError, ValueError):
        pass
    for line in info.splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1]) / 1e3
    return 2.0  # nothing says: a typical server clock, so the figure is at least plausible


def _lanes(flags: set[str]) -> tuple[int, str]:
    if platform.machine() in ("aarch64", "arm64"):
        return 4, "NEON"
    if "avx512f" in flags:
        return 16, "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return 8, "AVX2+FMA"
    return 4, "SSE"


def _measured(flags: set[str], lanes: int) -> tuple[float | None, dict[str, float] | None]:
    """(FMA instructions per ns, {intrinsic: int8 GOP/s}) of one core, or (None, None)."""
    fma = instruction_rate.FMA_ZMM if lanes == 16 else instruction_rate.FMA_YMM
    dots = instruction_rate.DOT_INSTRUCTIONS
    rates = instruction_rate.instructions_per_ns(
        instruction_rate.supported(flags, fma, *dots.values())
    )
    if not rates or fma.name not in rates:
        return None, None
    dot_gops = {
        intrinsic: rates[i.name] * i.lanes * i.macs_per_lane * 2
        for intrinsic, i in dots.items()
        if i.name in rates
    }
    return rates[fma.name], dot_gops


def cpu_peak(measure: bool = False) -> CpuPeak:
    info = _cpuinfo()
    flags = _flags(info)
    lanes, isa = _lanes(flags)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fma_per_ns, dot_gops = _measured(flags, lanes) if measure else (None, None)
    return CpuPeak(
        cores=cores or 1,
        lanes=lanes,
        fma_units=int(os.environ.get(FMA_ENV, "2")),
        ghz=_ghz(info),
        isa=isa,
        fma_per_ns=fma_per_ns,
        dot_gops=dot_gops,
    )
