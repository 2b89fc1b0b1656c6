"""Measured throughput of one core's fp32 FMA and int8 dot-product vector instructions.

cpu_peak's estimate (FMA units x lanes x the reported clock) can be far off: under a
hypervisor "cpu MHz" is the nominal clock, not the boost one, and AMD Zen 4 executes one
512-bit FMA per cycle (two 256-bit halves), not the two of an Intel Xeon Gold. On the Zen 4
these figures were first taken on, the estimate said 166 GFLOP/s per core; the core runs 3.66
zmm FMAs (and 3.66 vpdpbusd) per ns: 117 GFLOP/s, 468 GOP/s int8. Kernels measured against the
estimate read as 60-68% of peak where they were at 96%.

The loop is twelve independent chains of one instruction (more than latency x throughput on
any of these cores), written as inline assembly, built with the system C compiler (which a
build needs anyway to link its library) and run in its own process for ~0.1 s per
instruction. x86-64 only; None elsewhere or where anything fails, and the estimate stands.
"""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

ITERATIONS = 20_000_000  # x 12 instructions: ~0.07 s at 3.7 per ns


@dataclass(frozen=True)
class Instruction:
    name: str
    asm: str  # one instruction on accumulator register %d (zmm/ymm 0-11)
    needs: frozenset[str]  # /proc/cpuinfo flags
    lanes: int  # 32-bit lanes
    macs_per_lane: int  # multiply-adds per lane and instruction


FMA_ZMM = Instruction("vfmadd231ps zmm", "vfmadd231ps %%zmm30, %%zmm31, %%zmm{i}",
                      frozenset({"avx512f"}), 16, 1)  # fmt: skip
FMA_YMM = Instruction("vfmadd231ps ymm", "vfmadd231ps %%ymm14, %%ymm15, %%ymm{i}",
                      frozenset({"fma", "avx2"}), 8, 1)  # fmt: skip
VNNI_ZMM = Instruction("vpdpbusd zmm", "vpdpbusd %%zmm30, %%zmm31, %%zmm{i}",
                       frozenset({"avx512_vnni"}), 16, 4)  # fmt: skip
PMADDWD_YMM = Instruction("vpmaddwd ymm", "vpmaddwd %%ymm14, %%ymm15, %%ymm{i}",
                          frozenset({"avx2"}), 8, 2)  # fmt: skip
# The instruction each int8 intrinsic's kernels run (backends/kernels/int8/dot_intrinsics.py)
DOT_INSTRUCTIONS = {"dot_16x4_vnni": VNNI_ZMM, "dot_8x2x2_avx2": PMADDWD_YMM}


def _program(instructions: list[Instruction]) -> str:
    cases = []
    for number, instruction in enumerate(instructions):
        body = "".join(f'"{instruction.asm.format(i=i)}\\n"' for i in range(12))
        cases.append(
            f"  t0 = now();\n"
            f'  __asm__ volatile("mov %0, %%rcx\\n1:\\n" {body} "dec %%rcx\\njnz 1b\\n"'
            f' :: "r"(n) : "rcx", "memory");\n'
            f'  printf("{number} %.4f\\n", n * 12.0 / (now() - t0) / 1e9);\n'
        )
    return (
        "#include <stdio.h>\n#include <time.h>\n"
        "static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);"
        " return t.tv_sec + t.tv_nsec * 1e-9; }\n"
        f"int main(void) {{\n  long n = {ITERATIONS}; double t0;\n"
        + "".join(cases)
        + "  return 0;\n}\n"
    )


@cache
def instructions_per_ns(instructions: tuple[Instruction, ...]) -> dict[str, float] | None:
    """{instruction name: instructions per ns on one core}, the better of two runs; None
    where this cannot be measured here."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if platform.machine() not in ("x86_64", "AMD64") or compiler is None or not instructions:
        return None
    with tempfile.TemporaryDirectory(prefix="edgepress-rate-") as tmp:
        source, binary = Path(tmp) / "rate.c", Path(tmp) / "rate"
        source.write_text(_program(list(instructions)))
        try:
            subprocess.run([compiler, "-O1", "-o", str(binary), str(source)],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
            best: dict[str, float] = {}
            for _ in range(2):
                out = subprocess.run([str(binary)], check=True, capture_output=True,
                                     text=True, timeout=60).stdout  # fmt: skip
                for line in out.splitlines():
                    number, rate = line.split()
                    name = instructions[int(number)].name
                    best[name] = max(best.get(name, 0.0), float(rate))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
            log.debug("no instruction rate measured: %s", err)
            return None
    return best


def supported(flags: set[str], *candidates: Instruction) -> tuple[Instruction, ...]:
    """The candidates this CPU has (its /proc/cpuinfo flags)."""
    return tuple(c for c in candidates if c.needs <= flags)
