"""cuda artifacts checked and timed on a GPU machine with nothing but their own runtime/ folder
(no TVM, no edgepress there), against onnxruntime CPU references made here, and timed against
PyTorch eager on the same GPU for the bundled models.

Here, after ./setup.sh (needs nvcc; no GPU):

    .venv/bin/python benchmarks/gpu_check.py prepare [--models mobilenetv2,vit_tiny,digits]
        [--corpus ppocrv5-cls,magika,ddddocr-det,ppocrv5-rec] [--arch sm_90] [--pack .gpu-check]

builds each model for cuda, runs onnxruntime (graph optimizations off) on its source model
with the inputs the GPU will get (seeded random for the bundled models, the corpus's realistic
inputs for the others), and packs PACK (ignored by git): one runtime/ (the artifacts' own,
identical in each), art/NAME/{model.so, manifest.json, input_<i>.npy, ref_<i>.npy}, the
bundled models' PyTorch definitions, and this script. What the device tool carries is capped
at 64 MiB: models that would not fit are left out, and said so (ResNet-18's fp32 library
alone is 47 MB). It prints the command to run there:

    python3 PACK/gpu_check.py run --out DIR [--repeat 100]

which needs Python 3 with numpy (and torch for the eager column), runs runtime/edgepress-run
on each folder, compares its outputs with the references (max |error| / max |reference|,
cosine) and writes DIR/gpu-results.json and DIR/gpu-results.md (with the GPU's name and
driver), to be kept in benchmarks/results/. PyTorch eager runs the same seeded weights on the
same inputs, TF32 off and on.

`prepare --target x86_64` packs CPU artifacts instead and `run --torch-device cpu` runs them
here: the same path, checked without a GPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

CARRY_LIMIT = 64 * 1024 * 1024  # what the device tool carries, all paths together
DEFAULT_MODELS = "mobilenetv2,vit_tiny,digits"
DEFAULT_CORPUS = "ppocrv5-cls,magika,ddddocr-det,ppocrv5-rec"
# The bundled models' PyTorch constructors (seeded: the weights the ONNX export has).
TORCH_MODELS = {
    "resnet18": ("edgepress.models.resnet", "resnet18"),
    "mobilenetv2": ("edgepress.models.mobilenetv2", "mobilenetv2"),
    "vit_tiny": ("edgepress.models.vit", "vit_tiny"),
}
TORCH_SOURCES = ("__init__.py", "export.py", "resnet.py", "mobilenetv2.py", "vit.py")


# --- here: build, reference, pack --------------------------------------------------------------


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _sources(args) -> list[tuple[str, Path, list[str], Callable | None]]:
    """(name, onnx path, build flags, its inputs maker or None) for each model asked."""
    from edgepress.models import EXAMPLES
    from edgepress.models.corpus import build_flags, fetch, input_dtypes, load_corpus, realistic_inputs

    work = args.work / "models"
    work.mkdir(parents=True, exist_ok=True)
    found = []
    for name in filter(None, args.models.split(",")):
        if name not in EXAMPLES:
            raise SystemExit(f"--models: no bundled model '{name}' (have {', '.join(EXAMPLES)})")
        if not (work / f"{name}.onnx").exists():
            EXAMPLES[name].write(work)
        found.append((name, work / f"{name}.onnx", [], None))
    corpus = load_corpus()
    for name in filter(None, args.corpus.split(",")):
        if name not in corpus:
            raise SystemExit(f"--corpus: no corpus model '{name}' (have {', '.join(corpus)})")
        entry = corpus[name]
        source = fetch(entry)
        found.append((name, source, build_flags(entry),
                      lambda source=source, entry=entry: realistic_inputs(entry, input_dtypes(source), 0)))  # fmt: skip
    return found


def prepare(args) -> int:
    from edgepress.compiler.cli import main as compress
    from edgepress.compiler.inputs import random_inputs
    from edgepress.compiler.manifest import read_manifest
    from edgepress.compiler.shapes import TensorSpec
    from edgepress.compiler.verify import run_onnxruntime

    pack = args.pack
    if pack.exists():
        shutil.rmtree(pack)
    (pack / "art").mkdir(parents=True)
    target = ["--target", args.target] + (["--arch", args.arch] if args.target == "cuda" else [])
    runtime_digest = None
    plan, left_out = [], []
    used = _size(Path(__file__))
    for name, source, flags, feeds_of in _sources(args):
        out = args.work / f"{name}-{args.target}"
        code = compress([str(source), *target, *flags, "-o", str(out), "--force", "-q"])
        if code != 0:
            left_out.append(f"{name}: the {args.target} build failed (exit {code})")
            continue
        manifest = read_manifest(out)
        if runtime_digest is None:
            shutil.copytree(out / "runtime", pack / "runtime")
            runtime_digest = _digest(out / "runtime")
            used += _size(pack / "runtime")
        elif _digest(out / "runtime") != runtime_digest:
            raise SystemExit(f"{out}/runtime differs from the first artifact's: rebuild all")
        specs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
        feeds = feeds_of() if feeds_of else random_inputs(specs, 0)
        refs = run_onnxruntime(source, feeds)
        need = (out / "model.so").stat().st_size + sum(a.nbytes + 128 for a in [*feeds.values(), *refs.values()])
        if used + need > CARRY_LIMIT:
            left_out.append(f"{name}: {need / 2**20:.1f} MiB does not fit in what is left of 64 MiB")
            continue
        used += need
        folder = pack / "art" / name
        folder.mkdir()
        shutil.copy2(out / "model.so", folder)
        shutil.copy2(out / "manifest.json", folder)
        for i, spec in enumerate(specs):
            np.save(folder / f"input_{i}.npy", feeds[spec.name])
        for i, output in enumerate(manifest["outputs"]):
            np.save(folder / f"ref_{i}.npy", refs[output["name"]])
        plan.append({"name": name, "source": str(source), "torch": TORCH_MODELS.get(name)})
    models = Path(__file__).resolve().parent.parent / "models"
    torch_dir = pack / "torch_models" / "edgepress"
    (torch_dir / "models").mkdir(parents=True)
    (torch_dir / "__init__.py").write_text("")
    for name in TORCH_SOURCES:
        shutil.copy2(models / name, torch_dir / "models" / name)
    shutil.copy2(__file__, pack / "gpu_check.py")
    (pack / "plan.json").write_text(json.dumps({"target": args.target, "models": plan}, indent=2))
    for line in left_out:
        print(f"left out: {line}")
    print(f"packed {len(plan)} model(s) into {pack} ({_size(pack) / 2**20:.1f} MiB)")
    print(f'device run: carry ["{pack}"], command:\n  python3 {pack}/gpu_check.py run --out $OUT')
    return 0 if plan else 1


# --- there: run, compare, time (numpy, and torch for the eager column; no edgepress) ----------


def _runner_times(stdout: str) -> dict:
    """edgepress-run's "key: value" lines and the per-run times after "times_ms:" (the same
    format compiler/devices.py reads; this side of the script cannot import edgepress)."""
    head, _, times = stdout.partition("times_ms:")
    fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    return {"init_ms": float(fields.get("init_ms", "nan")), "first_run_ms": float(fields.get("first_run_ms", "nan")),
            "peak_rss_kib": int(float(fields.get("peak_rss_kib", "0"))), "times_ms": [float(t) for t in times.split()]}  # fmt: skip


def _agreement(got: list[np.ndarray], refs: list[np.ndarray]) -> dict:
    rel, cos, finite = [], [], True
    for g, r in zip(got, refs):
        g, r = g.astype(np.float64).ravel(), r.astype(np.float64).ravel()
        finite &= bool(np.isfinite(g).all())
        rel.append(float(np.abs(g - r).max() / (np.abs(r).max() + 1e-30)))
        cos.append(float(g @ r / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30)))
    return {"max_rel_err": max(rel), "min_cosine": min(cos), "finite": finite}


def _run_artifact(pack: Path, folder: Path, repeat: int) -> dict:
    inputs = sorted(folder.glob("input_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    refs = [np.load(p) for p in sorted(folder.glob("ref_*.npy"), key=lambda p: int(p.stem.split("_")[1]))]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [str(pack / "runtime" / "edgepress-run"), str(folder), tmp, *map(str, inputs), "--repeat", str(repeat)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]}
        got = [np.load(Path(tmp) / f"output_{i}.npy") for i in range(len(refs))]
    times = _runner_times(proc.stdout)
    return {
        **_agreement(got, refs),
        "median_ms": statistics.median(times["times_ms"]),
        "p90_ms": float(np.percentile(times["times_ms"], 90)),
        "init_ms": times["init_ms"],
        "first_run_ms": times["first_run_ms"],
    }


def _torch_eager(pack: Path, folder: Path, spec: list[str], device: str, repeat: int) -> dict:
    import torch

    sys.path.insert(0, str(pack / "torch_models"))
    model = getattr(importlib.import_module(spec[0]), spec[1])(0).eval().to(device)
    x = torch.from_numpy(np.load(folder / "input_0.npy")).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    row = {}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        with torch.inference_mode():
            for _ in range(10):
                y = model(x)
            times = []
            for _ in range(repeat):
                sync()
                start = time.perf_counter()
                y = model(x)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
        row["eager_tf32_ms" if tf32 else "eager_ms"] = statistics.median(times)
        if not tf32:
            ref = np.load(folder / "ref_0.npy")
            row["eager_max_rel_err"] = _agreement([y.float().cpu().numpy()], [ref])["max_rel_err"]
    return row


def _gpu() -> str:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        return proc.stdout.strip().splitlines()[0] + " (driver)" if proc.returncode == 0 else "no nvidia-smi"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "no nvidia-smi"


def _markdown(result: dict) -> str:
    lines = [
        f"# cuda artifacts on {result['gpu']}",
        "",
        f"{result['when']}; edgepress-run with the folder's own runtime/, {result['repeat']} runs; "
        "references: onnxruntime CPU on the source model, made on the build machine.",
        "",
        "| model | max rel err | min cosine | median ms | p90 ms | init ms | first run ms | torch eager ms | eager TF32 ms | eager / edgepress |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    cell = lambda row, key, fmt: format(row[key], fmt) if row.get(key) is not None else "-"  # noqa: E731
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['name']} | error: {row['error']} |||||||||")
            continue
        ratio = row["eager_ms"] / row["median_ms"] if row.get("eager_ms") else None
        lines.append(
            f"| {row['name']} | {cell(row, 'max_rel_err', '.2g')} | {cell(row, 'min_cosine', '.6f')} "
            f"| {cell(row, 'median_ms', '.3f')} | {cell(row, 'p90_ms', '.3f')} | {cell(row, 'init_ms', '.1f')} "
            f"| {cell(row, 'first_run_ms', '.2f')} | {cell(row, 'eager_ms', '.3f')} "
            f"| {cell(row, 'eager_tf32_ms', '.3f')} | {f'{ratio:.2f}x' if ratio else '-'} |"
        )
    return "\n".join(lines) + "\n"


def run(args) -> int:
    pack = Path(__file__).resolve().parent
    plan = json.loads((pack / "plan.json").read_text())
    torch_device = args.torch_device or ("cuda" if plan["target"] == "cuda" else "cpu")
    result = {"gpu": _gpu() if plan["target"] == "cuda" else f"{plan['target']} (CPU)",
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeat": args.repeat, "rows": []}  # fmt: skip
    print(result["gpu"], flush=True)
    for item in plan["models"]:
        folder = pack / "art" / item["name"]
        row = {"name": item["name"], **_run_artifact(pack, folder, args.repeat)}
        if item["torch"] and "error" not in row and not args.no_torch:
            try:
                row.update(_torch_eager(pack, folder, item["torch"], torch_device, args.repeat))
            except Exception as err:  # torch missing or the GPU refused: the artifact row stands
                row["torch_error"] = f"{type(err).__name__}: {err}"[:300]
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu-results.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0 if all("error" not in r and r["finite"] for r in result["rows"]) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build, make references and pack (here)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="bundled models, comma-separated")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="corpus models, comma-separated")
    p.add_argument("--target", default="cuda", choices=("cuda", "x86_64"))
    p.add_argument("--arch", default="sm_90", help="cuda architecture (H100 and H200: sm_90)")
    p.add_argument("--pack", type=Path, default=Path(".gpu-check"))
    p.add_argument("--work", type=Path, default=Path("build/gpu-check"))
    r = sub.add_parser("run", help="run the packed artifacts (on the GPU machine)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--repeat", type=int, default=100)
    r.add_argument("--torch-device", help="default: cuda for cuda artifacts, else cpu")
    r.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager column")
    args = parser.parse_args()
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
