"""Build every bundled model for x86_64 and arm64 and time the untuned x86_64 artifact against
onnxruntime fp32, in one run, with the same inputs and thread count.

    .venv/bin/python benchmarks/bundled_builds.py [--models resnet18,mobilenetv2,digits]
        [--threads 1] [--repeat 20] [--out build/bench]

Writes OUT/bundled_builds.md (and prints it): build time and verification errors per target
(from each build's report.json), and the latency ratio onnxruntime_ms / artifact_ms (above 1
means the artifact is faster). arm64 runs under qemu here, so only its outputs are compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,digits")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()  # before TVM's thread pool starts

    from edgepress.compiler.bench import bench
    from edgepress.compiler.cli import main as compress
    from edgepress.models import EXAMPLES

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        model = args.out / f"{name}.onnx"
        if not model.exists():
            EXAMPLES[name].write(args.out)
        row = {"model": name}
        for target in ("x86_64", "arm64"):
            folder = args.out / f"{name}-{target}"
            code = compress([str(model), "--target", target, "-o", str(folder), "--force", "-q"])
            report = json.loads((folder / "report.json").read_text())
            check = report["verification"]["artifact"]
            worst = (
                max(check["outputs"], key=lambda o: o["max_abs_err"] or 0)
                if check["outputs"]
                else {}
            )
            row[target] = {
                "exit": code,
                "status": report["status"],
                "build_s": report["timings_s"]["total"],
                "compile_s": report["timings_s"]["compile"],
                "max_abs_err": worst.get("max_abs_err"),
                "max_rel_err": worst.get("max_rel_err"),
                "cosine": worst.get("cosine"),
            }
        timing = bench(args.out / f"{name}-x86_64", threads=args.threads, repeat=args.repeat)
        row.update(
            artifact_ms=timing.artifact_ms,
            onnxruntime_ms=timing.onnxruntime_ms,
            speedup=timing.speedup,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        f"# Bundled models: builds and untuned x86_64 latency ({args.threads} thread(s), "
        f"median of {args.repeat})",
        "",
        "| model | target | status | build s | compile s | max abs err | max rel err | cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for target in ("x86_64", "arm64"):
            t = r[target]
            lines.append(
                f"| {r['model']} | {target} | {t['status']} | {t['build_s']:.1f} | "
                f"{t['compile_s']:.1f} | {t['max_abs_err']:.2e} | {t['max_rel_err']:.2e} | "
                f"{t['cosine']:.8f} |"
            )
    lines += [
        "",
        "| model | onnxruntime ms | untuned artifact ms | speedup (ort / artifact) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['onnxruntime_ms']:.2f} | {r['artifact_ms']:.2f} | "
            f"{r['speedup']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "bundled_builds.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
