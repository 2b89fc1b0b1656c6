"""Runs ONNX's own backend test models (the onnx wheel's backend/test/data/{pytorch-converted,
pytorch-operator,simple}: model.onnx with inputs and expected outputs) through `compress`.

    .venv/bin/python benchmarks/backend_tests.py [--only SUBSTRING] [--every K] [-o DIR]

Each case is built for x86_64 with its input shapes, verified on its own inputs, run with
`compress run`, and compared with the expected outputs (rtol 1e-3, atol 1e-5 as onnx's backend
runner). A case ends as one of:
  pass      built and matched the expected outputs
  refused   exit 3 (an unsupported op, named) or exit 2 naming what the model lacks
  wrong     built, but its outputs differ from the expected ones
  crash     exit 1 (internal error), a traceback or a signal
  failed    any other exit (a lowering failure: exit 4, 5, 6)
Only `pass` and `refused` are acceptable; the summary counts each, and a JSON and Markdown table
list every case.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SUITES = ("pytorch-converted", "pytorch-operator", "simple")
RTOL, ATOL = 1e-3, 1e-5
ACCEPTABLE = ("pass", "refused")


@dataclass
class Case:
    name: str
    outcome: str
    exit_code: int | None
    detail: str


def data_root() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def cases(root: Path | None = None, only: str | None = None, every: int = 1) -> list[Path]:
    root = root or data_root()
    found = []
    for suite in SUITES:
        for folder in sorted((root / suite).iterdir()):
            if (folder / "model.onnx").is_file() and (folder / "test_data_set_0").is_dir():
                if only is None or only in f"{suite}/{folder.name}":
                    found.append(folder)
    return found[::every]


def _tensors(folder: Path, prefix: str) -> list:
    """The data set's tensors in order (input_0.pb, input_1.pb, ...), as numpy arrays, or None
    for a tensor that is not a plain tensor (a sequence, a map)."""
    import onnx
    from onnx import numpy_helper

    arrays = []
    for path in sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1])):
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(path.read_bytes())
            arrays.append(numpy_helper.to_array(tensor))
        except Exception:  # a sequence or optional value: not a tensor
            arrays.append(None)
    return arrays


def _compress(*args) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("compress")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600)


def _message(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("compress:")]
    text = lines[-1] if lines else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return text[:300]


def _build(folder: Path, out: Path, arrays: dict, fixed: set[str]):
    """compress on the case's model with its inputs' shapes (and values, for `fixed`)."""
    args = [folder / "model.onnx", "--target", "x86_64", "-o", out / "artifact", "--force", "-q"]
    if arrays:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "in.npz", **{k: v for k, v in arrays.items() if k not in fixed})
        args += ["--verify-inputs", out / "in.npz"]
        for input_name, array in arrays.items():
            if input_name in fixed:
                values = ",".join(str(v) for v in array.ravel().tolist())
                args += ["--input-value", f"{input_name}={values}"]
            else:
                args += ["--input-shape", f"{input_name}={','.join(map(str, array.shape))}"]
    try:
        return _compress(*args)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 5, "", "build took over 10 minutes")


def run_case(folder: Path, work: Path) -> Case:
    import onnx

    name = f"{folder.parent.name}/{folder.name}"
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    input_names = [i.name for i in model.graph.input]
    inputs = _tensors(folder / "test_data_set_0", "input")
    expected = _tensors(folder / "test_data_set_0", "output")
    out = work / folder.name
    if len(inputs) != len(input_names):  # the data set feeds only the non-initializer inputs
        input_names = [n for n in input_names if n not in initializers]
    usable = len(inputs) == len(input_names) and all(a is not None for a in inputs)
    arrays = dict(zip(input_names, inputs)) if usable else {}
    # an initializer listed among the inputs is a default the data set overrides: fixed by value
    fixed = {n for n in arrays if n in initializers}
    while True:
        build = _build(folder, out, arrays, fixed)
        # An input that feeds a shape: deploy it with its value fixed, as the error says.
        wanted = set(re.findall(r"--input-value (\S+?)=", build.stderr)) & set(arrays) - fixed
        if build.returncode != 2 or not wanted:
            break
        fixed |= wanted
    code = build.returncode
    if code != 0:
        crashed = code == 1 or code < 0 or "Traceback" in build.stderr
        refused = code == 3 or (code == 2 and "Traceback" not in build.stderr)
        outcome = "crash" if crashed else "refused" if refused else "failed"
        return Case(name, outcome, code, _message(build))
    run = _compress("run", out / "artifact", "--inputs", out / "in.npz", "-o", out / "out.npz",
                    "--force", "-q")  # fmt: skip
    if run.returncode != 0:
        return Case(name, "crash" if run.returncode == 1 else "failed", run.returncode, _message(run))
    with np.load(out / "out.npz") as got:
        outputs = [got[k] for k in got.files]
    for i, (have, want) in enumerate(zip(outputs, expected)):
        if want is None:
            continue
        if have.shape != want.shape:
            return Case(name, "wrong", 0, f"output {i}: shape {have.shape}, expected {want.shape}")
        if want.dtype.kind in "fc":
            ok = np.allclose(have, want, rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            ok = np.array_equal(have, want)
        if not ok:
            err = np.abs(have.astype(np.float64) - want.astype(np.float64)).max()
            return Case(name, "wrong", 0, f"output {i}: max |error| {err:.3g}")
    if len(outputs) != len(expected):
        return Case(name, "wrong", 0, f"{len(outputs)} outputs, expected {len(expected)}")
    return Case(name, "pass", 0, "")


def summary(results: list[Case]) -> dict[str, int]:
    counts = {k: 0 for k in ("pass", "refused", "wrong", "crash", "failed")}
    for r in results:
        counts[r.outcome] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="run the cases whose suite/name contains this")
    p.add_argument("--every", type=int, default=1, metavar="K", help="run every K-th case only")
    p.add_argument("-o", "--output", type=Path, default=Path("build/backend-tests"))
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in cases(only=args.only, every=max(1, args.every)):
            result = run_case(folder, Path(tmp))
            print(f"{result.outcome:8} {result.name} {result.detail}", flush=True)
            results.append(result)
    counts = summary(results)
    lines = [
        "# ONNX backend test data through compress (x86_64)",
        "",
        ", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(results)}",
        "",
        "| case | outcome | exit | detail |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.outcome} | {r.exit_code} | {r.detail.replace('|', '/')} |" for r in results]
    (args.output / "backend-tests.md").write_text("\n".join(lines) + "\n")
    (args.output / "backend-tests.json").write_text(
        json.dumps({"counts": counts, "cases": [asdict(r) for r in results]}, indent=1)
    )
    print(lines[2])
    return 0 if all(r.outcome in ACCEPTABLE for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
