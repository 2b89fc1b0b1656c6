"""What the cleanup and fusion passes do to the bundled models, measured in one run.

    .venv/bin/python benchmarks/fusion.py [--threads 1] [--repeat 20] [--out build/fusion]

The models are exported with their BatchNorm layers kept (as PaddlePaddle and other exporters
leave them; torch folds them itself in eval mode): ResNet-18 and MobileNetV2 at 1x3x224x224, and
the digits CNN. For each: node counts before and after the default pipeline, onnxruntime fp32
latency on the exported model and on the fused model.onnx (graph optimizations on, as users
run it, and off, which shows the graph as written), and the untuned x86_64 artifact built with
only fold_constants against one built with the default pipeline. Every figure pair is from the
same run and thread count; ratios are before / after (above 1: the passes made it faster).
Writes OUT/fusion.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def _export(name: str, folder: Path) -> Path:
    import torch

    from edgepress.models.export import export_onnx, randomize_batchnorm

    if name == "resnet18":
        from edgepress.models.resnet import resnet18 as make

        shape = (1, 3, 224, 224)
    elif name == "mobilenetv2":
        from edgepress.models.mobilenetv2 import mobilenetv2 as make

        shape = (1, 3, 224, 224)
    else:
        from edgepress.models.digits import DigitsCNN as make

        shape = (1, 1, 8, 8)
    net = make() if name == "digits" else make(0)
    randomize_batchnorm(net, torch.Generator().manual_seed(0))
    return export_onnx(net, torch.zeros(shape), folder / f"{name}_bn.onnx", keep_batchnorm=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,digits")
    # One thread by default: two-thread timings on these 2-vCPU VMs varied 2x between runs.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/fusion"))
    args = parser.parse_args()

    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()
    import numpy as np
    import onnx

    from edgepress.compiler.bench import bench
    from edgepress.compiler.cli import main as compress
    from ort_timing import medians_ms

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        source = _export(name, args.out)
        builds = {}
        for kind, passes in (("folded only", ["--passes", "fold_constants"]), ("default", [])):
            folder = args.out / f"{name}-{kind.replace(' ', '-')}"
            code = compress(
                [
                    str(source),
                    "--target",
                    "x86_64",
                    "-o",
                    str(folder),
                    "--force",
                    "-q",
                    "--no-shipped-records",
                    *passes,
                ]
            )
            if code != 0:
                print(f"{name} ({kind}): build failed with exit {code}", file=sys.stderr)
                return code
            builds[kind] = folder
        report = json.loads((builds["default"] / "report.json").read_text())
        first, last = report["passes"][0], report["passes"][-1]
        shape = report["inputs"][0]["shape"]
        feeds = {
            report["inputs"][0]["name"]: np.random.default_rng(0)
            .standard_normal(shape)
            .astype(np.float32)
        }
        fused = builds["default"] / "model.onnx"
        row = {
            "model": name,
            "nodes_exported": first["nodes_before"],
            "nodes_after": last["nodes_after"],
            "ops_after": dict(
                sorted(Counter(n.op_type for n in onnx.load(fused).graph.node).items())
            ),
            "changes": {p["name"]: p["changes"] for p in report["passes"] if p["changes"]},
        }
        for optimize in (True, False):
            key = "ort_opt" if optimize else "ort_noopt"
            before, after = medians_ms([source, fused], feeds, args.threads, args.repeat, optimize)
            row[key] = {"before_ms": before, "after_ms": after, "ratio": before / after}
        tvm = {k: bench(f, threads=args.threads, repeat=args.repeat) for k, f in builds.items()}
        row["tvm_untuned"] = {
            "before_ms": tvm["folded only"].artifact_ms,
            "after_ms": tvm["default"].artifact_ms,
            "ratio": tvm["folded only"].artifact_ms / tvm["default"].artifact_ms,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        f"# Cleanup and fusion passes: bundled models exported with BatchNorm kept "
        f"({args.threads} thread(s), median of {args.repeat})",
        "",
        "Before: the exported model (TVM: built with fold_constants only). After: the default "
        "pipeline. Ratio = before ms / after ms.",
        "",
        "| model | nodes before | nodes after | ort (optimized) before / after ms | ratio | "
        "ort (unoptimized) before / after ms | ratio | TVM untuned before / after ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["model"], str(r["nodes_exported"]), str(r["nodes_after"])]
        for key in ("ort_opt", "ort_noopt", "tvm_untuned"):
            m = r[key]
            cells += [f"{m['before_ms']:.2f} / {m['after_ms']:.2f}", f"{m['ratio']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Changes per pass (default pipeline):", ""]
    for r in rows:
        lines.append(f"- {r['model']}: {r['changes']}; ops after: {r['ops_after']}")
    text = "\n".join(lines) + "\n"
    (args.out / "fusion.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
