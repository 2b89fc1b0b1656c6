"""Speed of the bundled models on this CPU: onnxruntime fp32 against edgepress's x86_64
artifacts (untuned and tuned), timed in one run with the same inputs and thread count.

    .venv/bin/python benchmarks/speed.py [--models resnet18,mobilenetv2,digits] [--threads 1]
        [--repeat 20] [--out build/speed] [--tuning-db PATH] [--loops] [--tvm] [--avx2]
        [--winograd] [--profile]

Artifacts per model:
- untuned: no tuning record (--no-shipped-records): convolutions and matmuls as edgepress's
  NHWC kernels with their rules' default tiles (backends/kernels/float/lowering.py), every other
  kernel one untimed sample of MetaSchedule's default CPU schedules (what a build gets for a
  model edgepress never saw);
- tuned: the records shipped with edgepress for this exact CPU (benchmarks/tune_bundled.py
  makes them; their trials and minutes are in the folder's tuning.json), plus --tuning-db's;
- untuned tvm, tuned tvm (with --tvm): the same with --float-conv tvm, TVM's own NCHW conv
  kernels (the shipped records were tuned for these);
- untuned avx2 (with --avx2): AVX2 code (--mcpu znver3), timed on this CPU against this
  CPU's onnxruntime, which uses whatever this CPU has (AVX-512 here): not a measurement of an
  AVX2 machine;
- loops (with --loops): TVM's plain loops, as untuned builds were before (slow to time).

Each artifact is timed by `compress bench` (onnxruntime and the artifact in alternating rounds,
same inputs, same threads); ratio = onnxruntime_ms / artifact_ms (above 1: edgepress faster).
The fraction of peak is the model's FLOPs (2 x the MACs of its Conv/Gemm/MatMul nodes, counted
from the ONNX graph) per second over the fp32 peak of the threads used (backends/runtime/cpu_peak.py
says how the peak is derived). --profile adds each tuned artifact's per-kernel table: where the
time goes, and each kernel's distance from its roofline.

Writes OUT/speed.md and OUT/speed.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _model_flops(path: Path) -> float:
    """2 x the MACs of Conv/Gemm/MatMul, from the graph with its shapes inferred."""
    import onnx
    import onnx_ir as ir

    from edgepress.passes.analysis.macs import count_macs

    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    macs = count_macs(ir.from_proto(inferred))
    if macs is None:
        raise RuntimeError(f"{path}: shapes unknown after inference; cannot count MACs")
    return 2.0 * macs


def _tuning_facts(target: dict) -> dict:
    from edgepress.backends.tuning.database import SHIPPED_DIR, target_key

    facts = SHIPPED_DIR / target_key(target) / "tuning.json"
    return json.loads(facts.read_text()) if facts.is_file() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,digits")
    # One thread by default: two-thread timings on these 2-vCPU VMs varied 2x between runs.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/speed"))
    parser.add_argument("--tuning-db", type=Path, help="a tuning database to apply as well")
    parser.add_argument("--loops", action="store_true", help="also time TVM's plain loops")
    parser.add_argument(
        "--winograd", action="store_true", help="also untuned and tuned builds with --winograd"
    )
    parser.add_argument(
        "--tvm",
        action="store_true",
        help="also builds with --float-conv tvm (TVM's own conv kernels), untuned and tuned",
    )
    parser.add_argument(
        "--avx2",
        action="store_true",
        help="also an untuned build for --mcpu znver3 (AVX2 code, timed on this CPU against "
        "this CPU's onnxruntime)",
    )
    parser.add_argument("--profile", action="store_true", help="per-kernel tables, tuned")
    args = parser.parse_args()

    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()
    from edgepress.backends.runtime.cpu_peak import cpu_peak
    from edgepress.backends.targets.base import TargetOptions
    from edgepress.backends.targets.x86_64 import tvm_target
    from edgepress.compiler.bench import bench, profile_kernels
    from edgepress.compiler.cli import main as compress
    from edgepress.models import EXAMPLES

    peak = cpu_peak(measure=True)
    peak_gflops = peak.gflops * min(args.threads, peak.cores) / peak.cores
    target = tvm_target(TargetOptions())
    facts = _tuning_facts(target)
    kinds = {"untuned": ["--no-shipped-records"], "tuned": []}
    if args.loops:
        kinds = {"loops": ["--no-shipped-records", "--untuned", "loops"], **kinds}
    if args.tvm:
        kinds |= {
            "untuned tvm": ["--no-shipped-records", "--float-conv", "tvm"],
            "tuned tvm": ["--float-conv", "tvm"],
        }
    if args.avx2:
        kinds |= {"untuned avx2": ["--no-shipped-records", "--mcpu", "znver3"]}
    if args.winograd:
        kinds |= {
            "untuned winograd": ["--no-shipped-records", "--winograd"],
            "tuned winograd": ["--winograd"],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    results, profiles = [], {}
    for name in args.models.split(","):
        model = args.out / f"{name}.onnx"
        if not model.exists():
            EXAMPLES[name].write(args.out)
        flops = _model_flops(model)
        row = {"model": name, "gflop": flops / 1e9, "artifacts": {}}
        ort_ms = []
        for kind, flags in kinds.items():
            folder = args.out / f"{name}-{kind.replace(' ', '-')}"
            extra = list(flags)
            if kind.startswith("tuned") and args.tuning_db:
                extra += ["--tuning-db", str(args.tuning_db)]
            code = compress(
                [str(model), "--target", "x86_64", "-o", str(folder), "--force", "-q", *extra]
            )
            if code != 0:
                print(f"{name} {kind}: build failed with exit {code}", file=sys.stderr)
                return code
            report = json.loads((folder / "report.json").read_text())
            timing = bench(folder, threads=args.threads, repeat=args.repeat)
            ort_ms.append(timing.onnxruntime_ms)
            tuned = sum(1 for k in report["kernels"] if k["schedule"] == "tuned")
            row["artifacts"][kind] = {
                "ms": timing.artifact_ms,
                "p90_ms": timing.artifact_p90_ms,
                "onnxruntime_ms": timing.onnxruntime_ms,
                "ratio": timing.speedup,
                "peak_fraction": flops / 1e9 / (timing.artifact_ms / 1e3) / peak_gflops,
                "kernels_tuned": f"{tuned}/{len(report['kernels'])}",
            }
            if kind.startswith("tuned") and args.profile:
                profiles[f"{name}, {kind}"] = profile_kernels(
                    folder, threads=args.threads, repeat=5
                )
        row["onnxruntime_ms"] = statistics.median(ort_ms)
        row["onnxruntime_peak_fraction"] = flops / 1e9 / (row["onnxruntime_ms"] / 1e3) / peak_gflops
        results.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        f"# Speed: bundled models, x86_64, {args.threads} thread(s), median of {args.repeat}",
        "",
        f"CPU peak for {args.threads} thread(s): {peak_gflops:.0f} GFLOP/s ({peak.describe()}).",
        "Ratio = onnxruntime ms / artifact ms, both timed in the same `compress bench` run "
        "(above 1: edgepress is faster). % peak = model GFLOP (from the graph) per second over "
        "that peak.",
        "",
        "| model | GFLOP | onnxruntime ms | % peak | "
        + " | ".join(f"{k} ms | {k} ratio | {k} % peak | {k} kernels tuned" for k in kinds)
        + " |",
        "|---|---|---|---|" + "---|---|---|---|" * len(kinds),
    ]
    for r in results:
        cells = [
            f"{r['model']}",
            f"{r['gflop']:.3f}",
            f"{r['onnxruntime_ms']:.2f}",
            f"{100 * r['onnxruntime_peak_fraction']:.1f}",
        ]
        for kind in kinds:
            a = r["artifacts"][kind]
            cells += [
                f"{a['ms']:.2f}",
                f"{a['ratio']:.3f}",
                f"{100 * a['peak_fraction']:.1f}",
                a["kernels_tuned"],
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if facts:
        lines += ["", "Shipped tuning records (benchmarks/tune_bundled.py):", ""]
        for model, f in facts.items():
            for run in [*f.get("earlier_runs", []), f]:
                lines.append(
                    f"- {model}: {run['trials']} trials in {run['minutes']:.0f} minutes "
                    f"({run.get('cpu', '?')}; {run.get('float_conv', 'tvm')} conv kernels)"
                )
    for name, profile in profiles.items():
        lines += ["", f"## {name}: where the time goes", "", profile["markdown"]]
    text = "\n".join(lines) + "\n"
    (args.out / "speed.md").write_text(text)
    (args.out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
