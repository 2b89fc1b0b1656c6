"""Builds every real exported model of the corpus (edgepress.models.corpus, models/corpus.toml)
for a target and checks it against onnxruntime on realistic inputs; writes Markdown and JSON.

    .venv/bin/python benchmarks/corpus.py [--target x86_64|arm64] [--only NAME,...] [--bench]

For each model (fetched once into the cache; the onnx light models with random weights, see
edgepress.models.corpus), `compress` builds it with only --input-shape (and --input-value where
the file names one), verifying on one realistic input set, then `compress run` runs the artifact on three further
sets, compared with onnxruntime (graph optimizations off) on the *source* model: max |error|
<= 1e-3 x max |reference| per output, or (for an output that amplifies fp32 rounding: a text
detector's sigmoids on a photo without text, a dynamically quantized model's rounding cascade)
within 2x the reference's own fp32 noise (edgepress.compiler.verify.reference_noise), which the
table then shows. `--target arm64` runs the artifact under qemu. With --bench, `compress bench`
times it against onnxruntime in the same run (x86_64 only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepress.models.corpus import (
    RELATIVE_LIMIT,
    Entry,
    build_flags,
    fetch,
    input_dtypes,
    load_corpus,
    match,
    realistic_inputs,
)

FURTHER_INPUTS = 3


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
    if bench and target == "x86_64":
        timed = _compress("bench", folder / "out", "--json", "--threads", threads, "-q")
        if timed.returncode == 0:
            result = json.loads(timed.stdout.strip().splitlines()[-1])
            row.speedup = round(result["speedup"], 3)
            row.artifact_ms = round(result["artifact_ms"], 3)
            row.onnxruntime_ms = round(result["onnxruntime_ms"], 3)
    return row


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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=Path("build/corpus"))
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
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
