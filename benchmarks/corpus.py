"""Builds every real exported model of the corpus (edgepress.models.corpus, models/corpus.toml)
for a target and checks it against onnxruntime on realistic inputs; writes Markdown and JSON.

    .venv/bin/python benchmarks/corpus.py [--target x86_64|arm64] [--only NAME,...] [--bench]
                                          [--threads 1,2] [--int8] [--rebench]

For each model (fetched once into the cache; the onnx light models with random weights, see
edgepress.models.corpus), `compress` builds it with only --input-shape (and --input-value where
the file names one), verifying on one realistic input set, then `compress run` runs the artifact on three further
sets, compared with onnxruntime (graph optimizations off) on the *source* model: max |error|
<= 1e-3 x max |reference| per output, or (for an output that amplifies fp32 rounding: a text
detector's sigmoids on a photo without text, a dynamically quantized model's rounding cascade)
within 2x the reference's own fp32 noise (edgepress.compiler.verify.reference_noise), which the
table then shows. `--target arm64` runs the artifact under qemu. With --bench, `compress bench`
times it against onnxruntime in the same run (x86_64 only), once per thread count of --threads
(the same artifact: it is built for the machine's cores), with the geometric mean of the
speedups over the models that built. `--rebench` times the artifacts an earlier run left in
--output again at --threads (nothing is built) and adds those columns to its tables.

With --int8, each image model is also built with `--quantize int8 --calibration` on scikit-image's
calibration photographs (and, for the models that read documents, pages made here:
edgepress.models.corpus; the model's normalization, nothing else beyond its shape flags: the
default fidelity floor applies) and the int8 artifact is compared with
onnxruntime on the fp32 *source* on the evaluation photographs, which calibration never saw:
the least cosine of any photo and output, the layers the build kept in float, the library's
size against the fp32 one and, with --bench, its speed against onnxruntime on the int8
model.onnx and on the fp32 source. A model another tool already quantized is built as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepress.models.corpus import (
    CALIBRATION_PHOTOS,
    DOCUMENTS,
    EVAL_PHOTOS,
    RELATIVE_LIMIT,
    Entry,
    build_flags,
    calibration_photos,
    fetch,
    input_dtypes,
    is_quantized,
    load_corpus,
    match,
    photo_samples,
    realistic_inputs,
)

FURTHER_INPUTS = 3
MIN_INT8_COSINE = 0.99  # issue 20: what an int8 corpus build must keep on unseen photos


@dataclass
class Int8Row:
    status: str = "failed"  # "ok" | "failed" | "inaccurate" | "as it comes" | "skipped"
    error: str = ""
    build_s: float = 0.0
    min_cosine: float | None = None  # artifact vs fp32 source, least over eval photos and outputs
    float_layers: list[str] | None = None
    library_ratio: float | None = None  # int8 model.so bytes / fp32 model.so bytes
    # per thread count: artifact_ms, speedup_vs_ort_int8 (its QDQ model), speedup_vs_ort_fp32
    speed: dict[str, dict] = field(default_factory=dict)


@dataclass
class Row:
    model: str
    status: str = "failed"  # "ok" | "failed" | "mismatch"
    error: str = ""
    exit_code: int | None = None
    build_s: float = 0.0
    max_rel_error: float | None = None  # worst output's max |err| / max |ref| on further inputs
    # where that is over RELATIVE_LIMIT: the reference's own noise, the same way (corpus.match)
    onnxruntime_noise: float | None = None
    # per thread count: artifact_ms, onnxruntime_ms and speedup (onnxruntime / artifact)
    speed: dict[str, dict] = field(default_factory=dict)
    int8: Int8Row | None = None


def _compress(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("compress")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("compress:"):
            return line[:400]
    return (lines[-1] if lines else f"exit {proc.returncode}")[:400]


def _bench_row(row: Row, folder: Path, threads: list[int]) -> None:
    """Times the fp32 artifact (folder/out) and the int8 one (folder/int8) at each thread count."""
    for n in threads:
        result = _bench(folder / "out", n)
        if result is not None:
            row.speed[str(n)] = {
                "artifact_ms": round(result["artifact_ms"], 3),
                "onnxruntime_ms": round(result["onnxruntime_ms"], 3),
                "speedup": round(result["speedup"], 3),
            }
        quantized = row.int8 is not None and row.int8.status in ("ok", "inaccurate")
        result = _bench(folder / "int8", n) if quantized else None
        if result is not None:
            vs_int8 = result.get("speedup_vs_onnxruntime_int8")
            row.int8.speed[str(n)] = {
                "artifact_ms": round(result["artifact_ms"], 3),
                "speedup_vs_ort_fp32": round(result["speedup"], 3),
                "speedup_vs_ort_int8": None if vs_int8 is None else round(vs_int8, 3),
            }


def _load_rows(path: Path) -> list[Row]:
    """The rows of an earlier run's corpus.json (fields this version does not know dropped)."""
    known = lambda cls, d: {k: v for k, v in d.items() if k in cls.__dataclass_fields__}  # noqa: E731
    rows = []
    for data in json.loads(path.read_text())["rows"]:
        row = Row(**known(Row, data))
        row.int8 = Int8Row(**known(Int8Row, data["int8"])) if data.get("int8") else None
        rows.append(row)
    return rows


def run_model(entry: Entry, target: str, work: Path) -> Row:
    row = Row(entry.name)
    try:
        source = fetch(entry)
    except Exception as err:  # a download failing is a row of the table, not the end of the run
        row.error = f"fetch: {err}"
        return row
    dtypes = input_dtypes(source)
    folder = work / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    sets = [realistic_inputs(entry, dtypes, i) for i in range(1 + FURTHER_INPUTS)]
    fixed = set(entry.values)
    np.savez(folder / "verify.npz", **{k: v for k, v in sets[0].items() if k not in fixed})
    args = [source, "--target", target, "-o", folder / "out", "--force", "-q"]
    args += ["--verify-inputs", folder / "verify.npz", *build_flags(entry)]
    started = time.perf_counter()
    proc = _compress(*args)
    row.build_s = round(time.perf_counter() - started, 1)
    row.exit_code = proc.returncode
    if proc.returncode != 0:
        row.error = _error_line(proc)
        return row
    ok, row.max_rel_error = True, 0.0
    for i, feeds in enumerate(sets[1:], start=1):
        npz = folder / f"in{i}.npz"
        np.savez(npz, **{k: v for k, v in feeds.items() if k not in fixed})
        run = _compress("run", folder / "out", "--inputs", npz, "-o", folder / f"out{i}.npz",
                        "--force", "-q")  # fmt: skip
        if run.returncode != 0:
            row.error = f"run on input set {i}: {_error_line(run)}"
            return row
        with np.load(folder / f"out{i}.npz") as got:
            result = match(source, feeds, [got[k] for k in got.files])
        ok &= result.ok
        row.max_rel_error = max(row.max_rel_error, result.worst)
        if result.noise is not None:
            row.onnxruntime_noise = max(row.onnxruntime_noise or 0.0, result.noise)
    row.status = "ok" if ok else "mismatch"
    if not ok:
        row.error = f"max |error| {row.max_rel_error:.3g} x max |reference| on further inputs"
    return row


def _bench(folder: Path, threads: int) -> dict | None:
    timed = _compress("bench", folder, "--json", "--threads", threads, "-q")
    if timed.returncode != 0:
        return None
    return json.loads(timed.stdout.strip().splitlines()[-1])


def run_int8(entry: Entry, target: str, folder: Path) -> Int8Row:
    """The int8 build of an image model (see the module docstring); `folder` holds the fp32
    build (out/) and verify.npz."""
    import edgepress
    from edgepress.compiler.verify import run_onnxruntime, sample_cosines

    row = Int8Row()
    if entry.data not in ("image", "gray"):
        row.status, row.error = "skipped", f"not an image model ({entry.data})"
        return row
    source = fetch(entry)
    if is_quantized(source):
        row.status, row.error = "as it comes", "already quantized by another tool"
        return row
    dtypes = input_dtypes(source)
    calibration = folder / "calibration.npz"
    np.savez(calibration, **photo_samples(entry, dtypes, calibration_photos(entry)))
    args = [source, "--target", target, "-o", folder / "int8", "--force", "-q"]
    args += ["--verify-inputs", folder / "verify.npz", *build_flags(entry)]
    args += ["--quantize", "int8", "--calibration", calibration]
    started = time.perf_counter()
    proc = _compress(*args)
    row.build_s = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        row.error = _error_line(proc)
        return row
    artifact = edgepress.load(folder / "int8")
    quantization = artifact.report.get("quantization") or {}
    row.float_layers = [f["layer"] for f in quantization.get("float_layers", [])]
    sizes, fp32 = artifact.report.get("sizes", {}), folder / "out" / "model.so"
    if sizes.get("model.so") and fp32.is_file():
        row.library_ratio = round(sizes["model.so"] / fp32.stat().st_size, 3)
    photos = photo_samples(entry, dtypes, EVAL_PHOTOS)
    fixed = {k: np.asarray(v, dtypes[k]).reshape(entry.inputs[k]) for k, v in entry.values.items()}
    runs = []
    for i in range(len(EVAL_PHOTOS)):
        feeds = {k: v[i] for k, v in photos.items()}
        runs.append((artifact.run(feeds), run_onnxruntime(source, {**feeds, **fixed})))
    # per photo and output; a photo whose output is noise next to the others' (a detector's
    # map of a photo without text) is judged by its error (verify.sample_cosines)
    least = min(
        float(sample_cosines(np.stack([np.asarray(list(g.values())[j]) for g, _ in runs]),
                             np.stack([np.asarray(list(w.values())[j]) for _, w in runs])).min())
        for j in range(len(runs[0][1]))
    )  # fmt: skip
    row.min_cosine = round(least, 5)
    row.status = "ok" if least >= MIN_INT8_COSINE else "inaccurate"
    return row


def _geomean(values: list[float]) -> str:
    return f"{float(np.exp(np.mean(np.log(values)))):.2f}x" if values else "-"


def _thread_counts(rows: list[Row]) -> list[str]:
    counts = {n for r in rows for n in r.speed} | {n for r in rows if r.int8 for n in r.int8.speed}
    return sorted(counts, key=int)


def int8_markdown(rows: list[Row]) -> list[str]:
    rows = [r for r in rows if r.int8 is not None]
    if not rows:
        return []
    ok = sum(r.int8.status == "ok" for r in rows)
    threads = _thread_counts(rows)
    speed_heads = "".join(f" {n} thread(s): vs onnxruntime int8 / fp32 |" for n in threads)
    lines = [
        "",
        f"## int8 (`--quantize int8 --calibration` on {len(CALIBRATION_PHOTOS)} photographs; "
        f"the models that read documents also on {len(DOCUMENTS)} pages made here)",
        "",
        f"{ok} of {len(rows)} built and kept a least cosine >= {MIN_INT8_COSINE} against "
        f"onnxruntime on the fp32 source on {len(EVAL_PHOTOS)} photographs not used for "
        "calibration.",
        "",
        "onnxruntime int8 runs the build's model.onnx. It fuses a QDQ conv into an integer "
        "kernel only where the conv's output is quantized; the convs int8 leaves with a float "
        "output (before a HardSwish or SiLU, whose float ops read it) run as float convs there, "
        "so for those models the ratio against onnxruntime fp32 is the one to read.",
        "",
        f"| model | int8 status | least cosine | layers kept in float | library vs fp32 |{speed_heads} build s | error or note |",
        "|---|---|---|---|---|" + "---|" * len(threads) + "---|---|",
    ]
    ratio = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    for r in rows:
        q = r.int8
        cosine = "" if q.min_cosine is None else f"{q.min_cosine:.4f}"
        kept = "" if q.float_layers is None else str(len(q.float_layers))
        if q.float_layers:
            more = ", ..." if len(q.float_layers) > 3 else ""
            kept += " (" + ", ".join(q.float_layers[:3]) + more + ")"
        size = "" if q.library_ratio is None else f"{q.library_ratio:.2f}x"
        speeds = "".join(
            f" {ratio(q.speed[n]['speedup_vs_ort_int8'])} / {ratio(q.speed[n]['speedup_vs_ort_fp32'])} "
            f"({q.speed[n]['artifact_ms']} ms) |" if n in q.speed else " |"
            for n in threads
        )
        note = q.error.replace("|", "/")
        lines.append(
            f"| {r.model} | {q.status} | {cosine} | {kept} | {size} |{speeds} {q.build_s} | {note} |"
        )
    for n in threads:
        vs_int8 = [q.speed[n]["speedup_vs_ort_int8"] for q in (r.int8 for r in rows)
                   if n in q.speed and q.speed[n]["speedup_vs_ort_int8"]]  # fmt: skip
        lines.append(f"\nGeometric mean, {n} thread(s), over {len(vs_int8)} models: "
                     f"{_geomean(vs_int8)} onnxruntime int8 on the same QDQ model.")  # fmt: skip
    return lines


def markdown(rows: list[Row], target: str, cpu: str) -> str:
    ok = sum(r.status == "ok" for r in rows)
    threads = _thread_counts(rows)
    lines = [
        f"# Corpus on {target} ({cpu})",
        "",
        f"{ok} of {len(rows)} built and matched onnxruntime on {FURTHER_INPUTS} further inputs "
        f"(max |error| <= {RELATIVE_LIMIT:g} x max |reference| per output).",
        "",
        "| model | status | max error / max ref | build s |"
        + "".join(f" {n} thread(s): vs onnxruntime |" for n in threads)
        + " error or note |",
        "|---|---|---|---|" + "---|" * len(threads) + "---|",
    ]
    for r in rows:
        err = "" if r.max_rel_error is None else f"{r.max_rel_error:.2e}"
        speeds = "".join(
            f" {r.speed[n]['speedup']:.2f}x ({r.speed[n]['artifact_ms']} vs "
            f"{r.speed[n]['onnxruntime_ms']} ms) |" if n in r.speed else " |"
            for n in threads
        )
        note = r.error.replace("|", "/")
        if r.onnxruntime_noise is not None:
            note = (
                f"within 2x the reference's own fp32 noise "
                f"({r.onnxruntime_noise:.2e} x max |reference|)"
            )
        lines.append(f"| {r.model} | {r.status} | {err} | {r.build_s} |{speeds} {note} |")
    for n in threads:
        speedups = [r.speed[n]["speedup"] for r in rows if n in r.speed]
        lines.append(f"\nGeometric mean, {n} thread(s), over {len(speedups)} models: "
                     f"{_geomean(speedups)} onnxruntime fp32.")  # fmt: skip
    return "\n".join(lines + int8_markdown(rows)) + "\n"


def _cpu() -> str:
    """The CPU's model name and the vector features the figures depend on."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    features = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {' '.join(features) or 'no AVX2'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="x86_64", choices=("x86_64", "arm64"))
    p.add_argument("--only", help="comma-separated model names")
    p.add_argument("--bench", action="store_true", help="also time against onnxruntime")
    p.add_argument("--threads", default="1", help="thread counts to time, e.g. 1,2")
    p.add_argument("--int8", action="store_true",
                   help="also build each image model int8; its fidelity on unseen photos")
    p.add_argument("--rebench", action="store_true",
                   help="time the artifacts of an earlier run in --output again; build nothing")
    p.add_argument("-o", "--output", type=Path, default=Path("build/corpus"))
    args = p.parse_args(argv)
    try:
        threads = [int(n) for n in args.threads.split(",")]
    except ValueError:
        threads = [0]
    if min(threads) < 1:
        p.error(f"--threads {args.threads}: expected counts of at least 1, e.g. 1,2")
    corpus = load_corpus()
    names = args.only.split(",") if args.only else list(corpus)
    unknown = [n for n in names if n not in corpus]
    if unknown:
        p.error(f"--only: unknown model(s) {', '.join(unknown)}; known: {', '.join(corpus)}")
    out = args.output / args.target
    out.mkdir(parents=True, exist_ok=True)
    if args.rebench:
        if not (out / "corpus.json").is_file():
            p.error(f"--rebench: no earlier run in {out} (no corpus.json)")
        rows = [r for r in _load_rows(out / "corpus.json") if r.model in names]
        for row in rows:
            if row.status == "ok" and args.target == "x86_64":
                _bench_row(row, out / row.model, threads)
                print(f"{row.model}: {row.speed}", flush=True)
    else:
        rows = []
        for name in names:
            row = run_model(corpus[name], args.target, out)
            print(f"{name}: {row.status} {row.error}", flush=True)
            if args.int8 and row.status == "ok":
                row.int8 = run_int8(corpus[name], args.target, out / name)
                print(f"{name} int8: {row.int8.status} {row.int8.min_cosine} {row.int8.error}",
                      flush=True)
            if args.bench and row.status == "ok" and args.target == "x86_64":
                _bench_row(row, out / name, threads)
            rows.append(row)
    text = markdown(rows, args.target, _cpu())
    (out / "corpus.md").write_text(text)
    (out / "corpus.json").write_text(
        json.dumps({"target": args.target, "cpu": _cpu(), "rows": [asdict(r) for r in rows]},
                   indent=1)  # fmt: skip
    )
    print(text)
    int8_ok = all(r.int8.status in ("ok", "as it comes", "skipped") for r in rows if r.int8)
    return 0 if all(r.status == "ok" for r in rows) and int8_ok else 1


if __name__ == "__main__":
    sys.exit(main())
