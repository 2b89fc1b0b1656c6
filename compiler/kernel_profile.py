"""Where an artifact's time goes: each kernel's share, its FLOP rate and its distance from the
CPU's fp32 peak, so tuning effort goes to the biggest losers.

A kernel's roofline time is its FLOPs over the peak of the threads it runs on (compute bound;
memory traffic is not modelled, so for elementwise kernels the real floor is higher). The
kernel list and each kernel's FLOPs come from the build (report.json "kernels"); times come from
the VM's per-call instrument hook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgepress.backends.cpu_peak import CpuPeak

VM_OVERHEAD = "(VM: allocation, shape checks, reshapes)"


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
    timings: dict[str, tuple[int, float]], kernels: list[dict], peak_gflops: float
) -> list[KernelRow]:
    """Rows, slowest first; VM builtins summed into one row."""
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
        rows.append(
            KernelRow(
                name,
                kernel["schedule"],
                calls,
                seconds * 1e3,
                seconds / total,
                gflop,
                rate,
                rate / peak_gflops if rate else None,
                gflop / peak_gflops * 1e3 if gflop > 0 else None,
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


def render(rows: list[KernelRow], peak: CpuPeak, threads: int) -> str:
    total_ms = sum(r.ms for r in rows)
    total_gflop = sum(r.gflop for r in rows)
    peak_gflops = peak.gflops * min(threads, peak.cores) / peak.cores
    roofline = total_gflop / peak_gflops * 1e3
    lines = [
        f"Kernel profile, {threads} thread(s): {total_ms:.3f} ms in {len(rows)} rows, "
        f"{total_gflop:.3f} GFLOP, {total_gflop / (total_ms / 1e3):.1f} GFLOP/s = "
        f"{total_gflop / (total_ms / 1e3) / peak_gflops:.1%} of the {peak_gflops:.0f} GFLOP/s "
        f"peak of {threads} thread(s) (roofline {roofline:.3f} ms).",
        f"Peak: {peak.describe()}.",
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
