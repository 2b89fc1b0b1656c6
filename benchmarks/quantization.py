"""int8 quantization of the bundled models, measured: accuracy or fidelity, size, onnxruntime
latency fp32 against int8, per calibration method, in one run.

    .venv/bin/python benchmarks/quantization.py [--models digits,resnet18,mobilenetv2]
        [--methods minmax,percentile,entropy,mse] [--threads 1] [--repeat 20] [--out build/quant]

- digits: calibrated on its calibration split, scored on its labelled eval split (top-1 of the
  float and the int8 model; the drop in points).
- resnet18, mobilenetv2 (random weights, BatchNorm statistics randomized): calibrated on real
  photographs that scikit-image ships (the first 12 of its sample images, as PNG files: the
  image-folder path of --calibration), scored on the other ones, which calibration never saw:
  cosine of the logits against the float model, top-1 agreement.
- dwsep (models/depthwise.py, 64x64): a depthwise-separable net with channel ranges planted
  10^4 apart, the case plain MinMax breaks; rows for MinMax alone, with --equalize, with
  --bias-correction, and with a --max-accuracy-drop 0.001 (1 - cosine) fallback.
Size: model.onnx (int8 weights) over the exported float file. Latency: onnxruntime, graph
optimizations on, the float source against the int8 model.onnx, same inputs and threads,
alternating (its integer kernels run the QDQ patterns). Writes OUT/quantization.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _outputs(path: Path, inputs: np.ndarray, name: str) -> np.ndarray:
    from ort_timing import session

    run = session(path, 2)
    return np.stack([run.run(None, {name: x})[0] for x in inputs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet18,mobilenetv2,dwsep")
    parser.add_argument("--methods", default="minmax,percentile,entropy,mse")
    # One thread by default: two-thread timings on these 2-vCPU VMs varied 2x between runs.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/quant"))
    args = parser.parse_args()

    from edgepress.backends.runtime.threads import size_pool_to_all_cores

    size_pool_to_all_cores()
    from edgepress.compiler.calibration_data import Preprocess, load_calibration
    from edgepress.compiler.cli import main as compress
    from edgepress.compiler.shapes import TensorSpec
    from edgepress.compiler.verify import cosine_similarity
    from edgepress.models import EXAMPLES
    from ort_timing import medians_ms
    from photos import write_photos

    args.out.mkdir(parents=True, exist_ok=True)
    photos_cal, photos_eval = write_photos(args.out)
    rows = []
    for name in args.models.split(","):
        source = args.out / f"{name}.onnx"
        if name == "dwsep":
            from edgepress.models.depthwise import write_depthwise

            write_depthwise(args.out)
        elif not source.exists():
            EXAMPLES[name].write(args.out)
        if name == "digits":
            calibration = args.out / "calibration.npz"
            evaluation = np.load(args.out / "eval.npz")
            eval_inputs, labels = evaluation["input"][:, None], evaluation["label"]
        else:
            calibration = photos_cal
            size = 64 if name == "dwsep" else 224
            spec = TensorSpec("input", (1, 3, size, size), "float32")
            resize = size if name == "dwsep" else 256
            eval_inputs = load_calibration(photos_eval, [spec], Preprocess(resize=resize))["input"]
            labels = None
        float_out = _outputs(source, eval_inputs, "input")
        if name == "dwsep":
            configs = {
                "minmax": [],
                "minmax + equalize": ["--equalize"],
                "minmax + equalize + bias correction": ["--equalize", "--bias-correction"],
                "minmax + fallback (1 - cosine <= 0.001)": ["--max-accuracy-drop", "0.001"],
                "all three": ["--equalize", "--bias-correction", "--max-accuracy-drop", "0.001"],
            }
        else:
            configs = {m: ["--calibration-method", m] for m in args.methods.split(",")}
        for method, flags in configs.items():
            folder = args.out / f"{name}-int8-{len(rows)}"
            extra = [] if name == "digits" else ["--resize", str(resize)]
            code = compress(
                [
                    str(source),
                    "--target",
                    "x86_64",
                    "-o",
                    str(folder),
                    "--force",
                    "-q",
                    "--quantize",
                    "int8",
                    "--calibration",
                    str(calibration),
                    *flags,
                    *extra,
                ]
            )
            if code != 0:
                print(f"{name} {method}: build failed with exit {code}", file=sys.stderr)
                return code
            int8 = folder / "model.onnx"
            int8_out = _outputs(int8, eval_inputs, "input")
            report = json.loads((folder / "report.json").read_text())
            fp32_ms, int8_ms = medians_ms(
                [source, int8], {"input": eval_inputs[0]}, args.threads, args.repeat
            )
            flat_f, flat_q = (
                float_out.reshape(len(eval_inputs), -1),
                int8_out.reshape(len(eval_inputs), -1),
            )
            row = {
                "model": name,
                "method": method,
                "size_ratio": report["sizes"]["model.onnx"] / report["sizes"]["source model"],
                "cosine_min": min(cosine_similarity(a, b) for a, b in zip(flat_q, flat_f)),
                "cosine_mean": float(
                    np.mean([cosine_similarity(a, b) for a, b in zip(flat_q, flat_f)])
                ),
                "top1_agreement": float(np.mean(flat_q.argmax(1) == flat_f.argmax(1))),
                "eval_samples": len(eval_inputs),
                "ort_fp32_ms": fp32_ms,
                "ort_int8_ms": int8_ms,
                "ort_speedup": fp32_ms / int8_ms,
                "min_layer_sqnr_db": min(db for _, db in report["quantization"]["layer_sqnr_db"]),
            }
            if labels is not None:
                row["top1_fp32"] = float(np.mean(flat_f.argmax(1) == labels))
                row["top1_int8"] = float(np.mean(flat_q.argmax(1) == labels))
                row["top1_drop_points"] = 100 * (row["top1_fp32"] - row["top1_int8"])
            rows.append(row)
            print(json.dumps(row), flush=True)

    lines = [
        f"# int8 quantization of the bundled models ({args.threads} thread(s), median of "
        f"{args.repeat})",
        "",
        "Evaluation data was never used for calibration. Cosine: worst and mean over the "
        "evaluation samples of the int8 logits against the float ones. ORT speedup: float "
        "source ms / int8 model.onnx ms, same run.",
        "",
        "| model | method | eval samples | top-1 fp32 / int8 (drop, points) | cosine min / mean | "
        "top-1 agreement | min layer SQNR dB | size (x float) | ORT fp32 / int8 ms | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top1 = (
            f"{r['top1_fp32']:.4f} / {r['top1_int8']:.4f} ({r['top1_drop_points']:.2f})"
            if "top1_fp32" in r
            else "-"
        )
        lines.append(
            f"| {r['model']} | {r['method']} | {r['eval_samples']} | {top1} | "
            f"{r['cosine_min']:.4f} / {r['cosine_mean']:.4f} | {r['top1_agreement']:.3f} | "
            f"{r['min_layer_sqnr_db']:.1f} | "
            f"{r['size_ratio']:.3f} | {r['ort_fp32_ms']:.2f} / {r['ort_int8_ms']:.2f} | "
            f"{r['ort_speedup']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "quantization.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
