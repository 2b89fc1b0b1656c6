"""Channel pruning of the bundled models: MACs, parameters, speed and accuracy, in one run.

- ResNet-18 and MobileNetV2 at `--prune 0.3` (activation importance, least-squares
  reconstruction; group ratios from sensitivity, and uniform), calibrated on crops of
  scikit-image's sample photos and scored on crops of other photos: MACs and parameters
  against the unpruned model; onnxruntime latency of the pruned model.onnx against the
  unpruned source; the compiled artifacts' latency (both with the untuned default schedules:
  the shipped tuning records cover the unpruned shapes only, so using them would compare tuned
  against untuned); all in one run.
- digits CNN at 25% and 50%: top-1 on its eval split for plain magnitude pruning (L1, uniform,
  no recovery), with least-squares reconstruction, with sensitivity-chosen ratios too, and with
  fine-tuning on its train split.
- pruning plus int8: model.onnx size against the fp32 source file.

Usage: .venv/bin/python benchmarks/pruning.py [--models resnet18,mobilenetv2,digits]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np


def compress(*args: str | Path) -> str:
    """The CLI in-process; its stdout, or exit with its code."""
    from edgepress.compiler.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    if code:
        print(f"compress {' '.join(map(str, args))}: exit {code}", file=sys.stderr)
        sys.exit(code)
    return out.getvalue()


def bench_ms(folder: Path, threads: int, repeat: int) -> dict:
    text = compress("bench", folder, "--threads", threads, "--repeat", repeat, "--json")
    return json.loads(text)


IMAGE_CONFIGS = {"sensitivity": [], "uniform": ["--prune-uniform"]}


def image_model_rows(name: str, out: Path, ratio: float, threads: int, repeat: int) -> list[dict]:
    from edgepress.compiler.verify import cosine_similarity
    from edgepress.models import EXAMPLES
    from ort_timing import medians_ms, session
    from photos import CALIBRATION_PHOTOS, EVAL_PHOTOS, photo_crops

    source = out / f"{name}.onnx"
    if not source.exists():
        EXAMPLES[name].write(out)
    calibration = out / "crops-calibration.npz"
    if not calibration.exists():
        np.savez(calibration, input=photo_crops(CALIBRATION_PHOTOS, 4, 0))
    eval_inputs = photo_crops(EVAL_PHOTOS, 2, 1)
    base = out / f"{name}-fp32"
    common = ["--target", "x86_64", "--force", "-q", "--no-shipped-records"]
    compress(source, "-o", base, *common)
    want = [session(source, 1).run(None, {"input": x})[0].ravel() for x in eval_inputs]
    rows = []
    for label, flags in IMAGE_CONFIGS.items():
        pruned, pruned_int8 = out / f"{name}-{label}", out / f"{name}-{label}-int8"
        prune = ["--prune", ratio, "--calibration", calibration, *flags]
        compress(source, "-o", pruned, *common, *prune)
        compress(source, "-o", pruned_int8, *common, *prune, "--quantize", "int8")
        p = json.loads((pruned / "report.json").read_text())["pruning"]
        ort_base, ort_pruned = medians_ms(
            [source, pruned / "model.onnx"], {"input": eval_inputs[0]}, threads, repeat
        )
        art_base = bench_ms(base, threads, repeat)["artifact_ms"]
        art_pruned = bench_ms(pruned, threads, repeat)["artifact_ms"]
        run = session(pruned / "model.onnx", 1)
        got = [run.run(None, {"input": x})[0].ravel() for x in eval_inputs]
        cosines = [cosine_similarity(a, b) for a, b in zip(got, want)]
        int8_sizes = json.loads((pruned_int8 / "report.json").read_text())["sizes"]
        rows.append({
            "model": name, "ratio": ratio, "ratios": label,
            "channels_removed": f"{p['removed_channels']}/{p['prunable_channels']}",
            "macs_ratio": p["macs_after"] / p["macs_before"],
            "params_ratio": p["param_bytes_after"] / p["param_bytes_before"],
            "ort_ms": (ort_base, ort_pruned), "ort_speedup": ort_base / ort_pruned,
            "artifact_ms": (art_base, art_pruned), "artifact_speedup": art_base / art_pruned,
            "eval_cosine_min_mean": (min(cosines), float(np.mean(cosines))),
            "top1_agreement": float(np.mean([a.argmax() == b.argmax() for a, b in zip(got, want)])),
            "int8_size_ratio": int8_sizes["model.onnx"] / int8_sizes["source model"],
            "prune_seconds": p["seconds"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


DIGITS_CONFIGS = {
    "magnitude (L1, uniform, no recovery)": ["--prune-importance", "l1", "--prune-uniform",
                                             "--prune-recovery", "none"],
    "L1 + reconstruction": ["--prune-importance", "l1", "--prune-uniform"],
    "activation + sensitivity + reconstruction": [],
    "magnitude + fine-tuning (10 epochs)": ["--prune-importance", "l1", "--prune-uniform",
                                            "--prune-recovery", "none", "--finetune", "{train}"],
    "reconstruction + fine-tuning (10 epochs)": ["--prune-importance", "l1", "--prune-uniform",
                                                 "--finetune", "{train}"],
}  # fmt: skip


def digits_rows(out: Path) -> list[dict]:
    from edgepress.models import EXAMPLES

    EXAMPLES["digits"].write(out)
    rows = []
    for ratio in ("0.25", "0.5"):
        for label, flags in DIGITS_CONFIGS.items():
            folder = out / f"digits-{ratio}-{len(rows)}"
            flags = [f.format(train=out / "train.npz") for f in flags]
            compress(out / "digits.onnx", "--target", "x86_64", "-o", folder, "--force", "-q",
                     "--prune", ratio, "--calibration", out / "calibration.npz",
                     "--eval", out / "eval.npz", "--prune-multiple",
                     "1", *flags)  # fmt: skip
            p = json.loads((folder / "report.json").read_text())["pruning"]
            rows.append({
                "ratio": ratio, "config": label, "top1_float": p["eval_top1"]["float"],
                "top1_pruned": p["eval_top1"]["pruned"],
                "macs_ratio": p["macs_after"] / p["macs_before"],
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    folder = out / "digits-int8"
    compress(out / "digits.onnx", "--target", "x86_64", "-o", folder, "--force", "-q",
             "--prune", "0.5", "--calibration", out / "calibration.npz", "--eval",
             out / "eval.npz", "--quantize", "int8")  # fmt: skip
    report = json.loads((folder / "report.json").read_text())
    rows.append({
        "ratio": "0.5 + int8", "config": "activation + sensitivity + reconstruction, int8",
        "top1_float": report["pruning"]["eval_top1"]["float"],
        "top1_pruned": report["quantization"]["eval_top1"]["int8"],
        "macs_ratio": report["pruning"]["macs_after"] / report["pruning"]["macs_before"],
        "size_ratio": report["sizes"]["model.onnx"] / report["sizes"]["source model"],
    })  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,digits")
    parser.add_argument("--ratio", type=float, default=0.3)
    # One thread by default: two-thread timings on these 2-vCPU VMs varied 2x between runs.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/pruning"))
    args = parser.parse_args()

    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()
    args.out.mkdir(parents=True, exist_ok=True)
    image_rows, digit_rows = [], []
    for name in args.models.split(","):
        if name == "digits":
            digit_rows = digits_rows(args.out)
            continue
        image_rows += image_model_rows(name, args.out, args.ratio, args.threads, args.repeat)

    lines = [
        f"# Channel pruning ({args.threads} thread(s), median of {args.repeat})",
        "",
        "Speedups are unpruned ms / pruned ms from the same run. Artifacts: both with the "
        "untuned default schedules. Cosine and top-1 agreement: pruned fp32 logits against "
        "the unpruned ones on crops of photos calibration never saw (the weights are random, "
        "so these are fidelity, not accuracy).",
        "",
        "| model | --prune | group ratios | channels removed | MACs (x) | params (x) | ORT ms "
        "unpruned / pruned (speedup) | artifact ms unpruned / pruned (speedup) | cosine min / "
        "mean | top-1 agreement | pruned + int8 size (x fp32 file) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in image_rows:
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['ratios']} | {r['channels_removed']} | "
            f"{r['macs_ratio']:.3f} | "
            f"{r['params_ratio']:.3f} | {r['ort_ms'][0]:.2f} / {r['ort_ms'][1]:.2f} "
            f"({r['ort_speedup']:.2f}) | {r['artifact_ms'][0]:.2f} / {r['artifact_ms'][1]:.2f} "
            f"({r['artifact_speedup']:.2f}) | {r['eval_cosine_min_mean'][0]:.4f} / "
            f"{r['eval_cosine_min_mean'][1]:.4f} | {r['top1_agreement']:.2f} | "
            f"{r['int8_size_ratio']:.3f} |"
        )
    if digit_rows:
        lines += [
            "",
            "digits CNN, top-1 on the 360-sample eval split (calibration and fine-tuning data "
            "are disjoint from it):",
            "",
            "| pruned | method | top-1 float | top-1 pruned | MACs (x) | size (x fp32 file) |",
            "|---|---|---|---|---|---|",
        ]
        for r in digit_rows:
            size = f"{r['size_ratio']:.3f}" if "size_ratio" in r else "-"
            lines.append(
                f"| {r['ratio']} | {r['config']} | {r['top1_float']:.4f} | "
                f"{r['top1_pruned']:.4f} | {r['macs_ratio']:.3f} | {size} |"
            )
    text = "\n".join(lines) + "\n"
    (args.out / "pruning.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
