"""Where an artifact's time goes: each kernel's share, its FLOP rate and its distance from the
CPU's fp32 peak, so tuning effort goes to the biggest losers.

A kernel's roofline time is its FLOPs over the peak of the threads it runs on (compute bound;
memory traffic is not modelled, so for elementwise kernels the real floor is higher). The
kernel list and each kernel's FLOPs come from the build (report.json "kernels"); times come from
the VM's per-call instrument hook. An int8 dot-product kernel (a conv or matmul the int8
lowering made) is held to its instruction's peak instead: measured where cpu_peak measures
it, else per lane, vpdpbusd and sdot do 4 multiply-adds where an fp32 FMA does 1, AVX2's
exact vpmaddwd 2 (DOT_PEAK_FACTOR).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgepress.backends.runtime.cpu_peak import CpuPeak

VM_OVERHEAD = "(VM: allocation, shape checks, reshapes)"
# Multiply-adds per instruction and lane, over an fp32 FMA's, of each int8 intrinsic
# (backends/kernels/int8/dot_intrinsics.py); on the same vector ports as the FMAs.
DOT_PEAK_FACTOR = {
    "dot_16x4_vnni": 4,
    "dot_4x4_i8i8s32_sdot": 4,
    "dot_4x4_u8i8s32_usdot": 4,
    "dot_8x2x2_avx2": 2,
}
DOT_KERNELS = ("conv2d_int8", "matmul_int8", "integer_matmul")  # names the int8 kernels get


def is_dot_kernel(name: str) -> bool:
    """An int8 dot-product kernel (fused or not); the depthwise one is float FMAs."""
    return any(k in name for k in DOT_KERNELS) and "depthwise" not in name


@dataclass
class KernelRow:
    name: str
    schedule: str
    calls: int
    ms: float
    share: float
    gflop: float
    gflops: float | None
    peak_fraction: float | None
    roofline_ms: float | None

    def to_json(self) -> dict:
        return asdict(self)


def kernel_rows(
    timings: dict[str, tuple[int, float]],
    kernels: list[dict],
    peak_gflops: float,
    dot_factor: float = 1.0,
) -> list[KernelRow]:
    """Rows, slowest first; VM builtins summed into one row. int8 dot-product kernels are held
    to `dot_factor` times the peak (DOT_PEAK_FACTOR of the build's intrinsic)."""
    known = {k["name"]: k for k in kernels}
    total = sum(seconds for _, seconds in timings.values()) or 1.0
    rows: list[KernelRow] = []
    overhead_calls, overhead_s = 0, 0.0
    for name, (calls, seconds) in timings.items():
        kernel = known.get(name)
        if kernel is None:
            overhead_calls += calls
            overhead_s += seconds
            continue
        gflop = kernel["flops"] * calls / 1e9  # the build's FLOPs are per call
        rate = gflop / seconds if seconds > 0 and gflop > 0 else None
        peak = peak_gflops * (dot_factor if is_dot_kernel(name) else 1.0)
        rows.append(
            KernelRow(
                name,
                kernel["schedule"],
                calls,
                seconds * 1e3,
                seconds / total,
                gflop,
                rate,
                rate / peak if rate else None,
                gflop / peak * 1e3 if gflop > 0 else None,
            )
        )
    if overhead_calls:
        rows.append(
            KernelRow(
                VM_OVERHEAD,
                "-",
                overhead_calls,
                overhead_s * 1e3,
                overhead_s / total,
                0.0,
                None,
                None,
                None,
            )
        )
    rows.sort(key=lambda r: r.ms, reverse=True)
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(rows: list[KernelRow], peak: CpuPeak, threads: int, dot_factor: float = 1.0) -> str:
    total_ms = sum(r.ms for r in rows)
    total_gflop = sum(r.gflop for r in rows)
    peak_gflops = peak.gflops * min(threads, peak.cores) / peak.cores
    roofline = sum(r.roofline_ms or 0.0 for r in rows)  # each kernel against its own peak
    lines = [
        f"Kernel profile, {threads} thread(s): {total_ms:.3f} ms in {len(rows)} rows, "
        f"{total_gflop:.3f} GFLOP, {total_gflop / (total_ms / 1e3):.1f} GFLOP/s; "
        f"{roofline / total_ms:.1%} of peak (roofline {roofline:.3f} ms; fp32 peak of "
        f"{threads} thread(s): {peak_gflops:.0f} GFLOP/s).",
        f"Peak: {peak.describe()}."
        + (
            f" int8 dot-product kernels: {dot_factor:.3g}x that ("
            + ("their instruction's measured rate" if peak.dot_gops else
               "multiply-adds per lane of their instruction")  # fmt: skip
            + ")."
            if dot_factor != 1.0
            else ""
        ),
        "",
        "| kernel | schedule | calls | ms | share | GFLOP | GFLOP/s | % of peak | roofline ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.schedule} | {r.calls} | {r.ms:.3f} | {r.share:.1%} | "
            f"{r.gflop:.4f} | {_fmt(r.gflops, '.1f')} | "
            f"{_fmt(r.peak_fraction * 100 if r.peak_fraction else None, '.1f')} | "
            f"{_fmt(r.roofline_ms, '.3f')} |"
        )
    return "\n".join(lines) + "\n"
