"""int8 artifacts of the bundled models against onnxruntime's int8 and fp32, in one run.

    .venv/bin/python benchmarks/int8_speed.py [--models resnet18,mobilenetv2] [--threads 1]
        [--repeat 20] [--runs 3] [--out build/int8] [--tuning-db PATH] [--no-arm64]

Per model, quantized with `--quantize int8` on the sample photos (benchmarks/photos.py):
- x86_64 int8 artifacts: "untuned" (no tuning record: edgepress's schedule rules for the int8
  kernels, one untimed sample of MetaSchedule's default schedules for the rest), "float QDQ"
  (`--int8-compute float`: TVM's own lowering of QuantizeLinear/DequantizeLinear as float
  arithmetic, what a user gets from TVM), and with --tuning-db "tuned" (its records applied);
- "untuned, --mcpu znver3": the int8 artifact for an AVX2 CPU without VNNI (exact vpmaddwd
  kernels), timed on this CPU (only where it runs AVX2 code);
- the fp32 artifact, for the size ratio (the library's bytes; the weights dominate it);
- arm64 int8 artifacts, `--mattr=+dotprod` (sdot) and `+dotprod,+i8mm` (usdot): their outputs
  checked against onnxruntime under qemu by the build, and the dot-product instructions in
  their disassembly counted (qemu times mean nothing).
Each x86 artifact's dot-product instructions (vpdpbusd, vpmaddwd) are counted the same way.

Times come from `compress bench` (artifact, onnxruntime on the float source and onnxruntime on
the int8 model.onnx, alternating rounds, same inputs and threads), run --runs times: the table
shows the run with the median ratio against onnxruntime's int8 and the range of that ratio over
the runs (this machine's timings drift between runs; each run's ratio is from one set of
alternating rounds). Exactness comes from each build's verification: elements one int8 step
off onnxruntime's QDQ run, and beyond one step.
Writes OUT/int8.md and OUT/int8.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The instruction each dot-product intrinsic compiles to, and the disassembler that finds it.
INSTRUCTIONS = {
    "dot_16x4_vnni": ("objdump", "vpdpbusd"),
    "dot_8x2x2_avx2": ("objdump", "vpmaddwd"),
    "dot_4x4_i8i8s32_sdot": ("aarch64-linux-gnu-objdump", "sdot"),
    "dot_4x4_u8i8s32_usdot": ("aarch64-linux-gnu-objdump", "usdot"),
}
AVX2_CPU = "znver3"
ARM64_MATTRS = ("+dotprod", "+dotprod,+i8mm")  # sdot; usdot


def _count_instructions(library: Path, report: dict) -> str:
    """'N instruction' for the build's dot-product intrinsic, '-' where it has none."""
    intrinsic = report.get("int8_compute", {}).get("intrinsic")
    if intrinsic not in INSTRUCTIONS or shutil.which(INSTRUCTIONS[intrinsic][0]) is None:
        return "-"
    tool, instruction = INSTRUCTIONS[intrinsic]
    listing = subprocess.run([tool, "-d", str(library)], capture_output=True, text=True).stdout
    count = len(re.findall(rf"\b{instruction}\b", listing))
    return f"{count} {instruction}"


def _exactness(report: dict) -> tuple[int, int, int]:
    """(elements one step off, elements beyond one step, elements) over the int8 outputs."""
    one = beyond = total = 0
    for out in report["verification"]["artifact"]["outputs"]:
        if out.get("step") is None:
            continue
        one += out.get("off_by_one_step") or 0
        beyond += out.get("mismatched") or 0
        total += out.get("elements") or 0
    return one, beyond, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="compress bench runs per artifact")
    parser.add_argument("--out", type=Path, default=Path("build/int8"))
    parser.add_argument("--tuning-db", type=Path, help="a tuning database to apply as well")
    parser.add_argument("--no-arm64", action="store_true", help="skip the arm64 builds (qemu)")
    args = parser.parse_args()
    if args.runs < 1 or args.repeat < 1 or args.threads < 1:
        parser.error("--runs, --repeat and --threads must be at least 1")

    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()
    from edgepress.compiler.bench import bench
    from edgepress.compiler.cli import main as compress
    from edgepress.models import EXAMPLES
    from photos import write_photos

    args.out.mkdir(parents=True, exist_ok=True)
    calibration, _ = write_photos(args.out)
    kinds = {
        "untuned": ["--no-shipped-records"],
        "float QDQ": ["--no-shipped-records", "--int8-compute", "float"],
        # An AVX2 CPU without VNNI (the build machine's kind): the exact vpmaddwd kernels, run
        # on this CPU; onnxruntime still uses this CPU's own instructions.
        f"untuned, --mcpu {AVX2_CPU}": ["--no-shipped-records", "--mcpu", AVX2_CPU],
    }
    if args.tuning_db:  # no int8 records are shipped yet: tuned only with a database given
        kinds["tuned"] = ["--tuning-db", str(args.tuning_db)]
    rows = []
    for name in args.models.split(","):
        model = args.out / f"{name}.onnx"
        if not model.exists():
            EXAMPLES[name].write(args.out)

        def build(folder: Path, *flags: str) -> dict:
            argv = [str(model), "-o", str(folder), "--force", "-q", *flags]
            code = compress(argv)
            if code != 0:
                raise SystemExit(f"{name}: `compress {' '.join(argv)}` exited {code}")
            return json.loads((folder / "report.json").read_text())

        quantize = ["--quantize", "int8", "--calibration", str(calibration)]
        fp32 = build(args.out / f"{name}-fp32", "--target", "x86_64", "--no-shipped-records")
        fp32_bytes = fp32["sizes"]["model.so"]
        row = {"model": name, "fp32_artifact_bytes": fp32_bytes, "x86_64": {}}
        for kind, flags in kinds.items():
            folder = args.out / f"{name}-int8-{kind.replace(' ', '-')}"
            report = build(folder, "--target", "x86_64", *quantize, *flags)
            runs = [
                bench(folder, threads=args.threads, repeat=args.repeat) for _ in range(args.runs)
            ]
            runs.sort(key=lambda t: t.speedup_vs_onnxruntime_int8)
            timing = runs[len(runs) // 2]
            one, beyond, total = _exactness(report)
            lowered = report["int8_compute"]["layers"]
            row["x86_64"][kind] = {
                "ms": timing.artifact_ms,
                "onnxruntime_fp32_ms": timing.onnxruntime_ms,
                "onnxruntime_int8_ms": timing.onnxruntime_int8_ms,
                "vs_onnxruntime_int8": timing.speedup_vs_onnxruntime_int8,
                "vs_onnxruntime_int8_runs": [t.speedup_vs_onnxruntime_int8 for t in runs],
                "vs_onnxruntime_fp32": timing.speedup,
                "size_vs_fp32_artifact": report["sizes"]["model.so"] / fp32_bytes,
                "off_by_one": one,
                "beyond_one": beyond,
                "elements": total,
                "integer_layers": f"{sum(1 for x in lowered if x['kernel'])}/{len(lowered)}",
                "dot_instructions": _count_instructions(folder / "model.so", report),
            }
        for mattr in () if args.no_arm64 else ARM64_MATTRS:
            folder = args.out / f"{name}-int8-arm64{mattr.replace(',', '').replace('+', '-')}"
            report = build(folder, "--target", "arm64", f"--mattr={mattr}", *quantize)
            one, beyond, total = _exactness(report)
            row.setdefault("arm64", {})[mattr] = {
                "verified_by": report["verification"]["artifact"]["reference"],
                "status": report["verification"]["artifact"]["status"],
                "off_by_one": one,
                "beyond_one": beyond,
                "elements": total,
                "dot_instructions": _count_instructions(folder / "model.so", report),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        f"# int8 artifacts, x86_64, {args.threads} thread(s), median of {args.repeat}, "
        f"{args.runs} runs",
        "",
        "Ratios: onnxruntime ms / artifact ms from the same `compress bench` rounds (above 1: "
        "the artifact is faster). Size: the int8 library over the fp32 library. Exactness: "
        "output elements one int8 step off onnxruntime's run of the same QDQ model / beyond "
        "one step / all.",
        "",
        "| model | artifact | ms | onnxruntime int8 ms | onnxruntime fp32 ms | vs ort int8 | "
        "vs ort int8 over the runs | vs ort fp32 | size vs fp32 | "
        "one step off / beyond / elements | integer layers | dot-product instructions |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for kind, a in r["x86_64"].items():
            lines.append(
                f"| {r['model']} | {kind} | {a['ms']:.2f} | {a['onnxruntime_int8_ms']:.2f} | "
                f"{a['onnxruntime_fp32_ms']:.2f} | {a['vs_onnxruntime_int8']:.3f} | "
                f"{min(a['vs_onnxruntime_int8_runs']):.3f}-{max(a['vs_onnxruntime_int8_runs']):.3f}"
                f" | {a['vs_onnxruntime_fp32']:.3f} | {a['size_vs_fp32_artifact']:.3f} | "
                f"{a['off_by_one']} / {a['beyond_one']} / {a['elements']} | "
                f"{a['integer_layers']} | {a['dot_instructions']} |"
            )
    if any("arm64" in r for r in rows):
        lines += [
            "",
            "arm64, verified by the build against onnxruntime:",
            "",
            "| model | --mattr | status | one step off / beyond / elements | "
            "dot-product instructions |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            for mattr, a in r.get("arm64", {}).items():
                lines.append(
                    f"| {r['model']} | {mattr} | {a['status']} ({a['verified_by']}) | "
                    f"{a['off_by_one']} / {a['beyond_one']} / {a['elements']} | "
                    f"{a['dot_instructions']} |"
                )
    text = "\n".join(lines) + "\n"
    (args.out / "int8.md").write_text(text)
    (args.out / "int8.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
