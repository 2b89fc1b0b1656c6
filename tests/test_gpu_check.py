"""benchmarks/gpu_check.py, the script prepared for a GPU machine, run through here on CPU
artifacts: packing, the runner's outputs against onnxruntime, and PyTorch eager on the same
seeded weights as the ONNX export (so its column times the same model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ort_outputs

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


def test_packed_cpu_artifacts_run_with_their_runtime_alone(tmp_path):
    pack, work = tmp_path / "pack", tmp_path / "work"
    prepare = subprocess.run(
        [sys.executable, str(SCRIPT), "prepare", "--target", "x86_64", "--models", "digits",
         "--corpus", "", "--pack", str(pack), "--work", str(work)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert f"python3 {pack}/gpu_check.py run --out $OUT" in prepare.stdout
    assert (pack / "runtime" / "edgepress-run").exists() and (pack / "art" / "digits" / "model.so").exists()
    assert not (pack / "art" / "digits" / "runtime").exists()  # one runtime/ for all

    # What runs there: the packed copy, from another folder, with no checkout on its path (-I).
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-I", str(pack / "gpu_check.py"), "run", "--out", str(out), "--repeat", "5"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((out / "gpu-results.json").read_text())
    (row,) = result["rows"]
    assert row["name"] == "digits" and row["finite"]
    assert row["max_rel_err"] < 1e-4 and row["min_cosine"] > 0.99999
    assert row["median_ms"] > 0 and row["first_run_ms"] > 0
    assert "| digits |" in (out / "gpu-results.md").read_text()


def test_torch_eager_runs_the_weights_of_the_onnx_export(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from edgepress.models import EXAMPLES

    EXAMPLES["vit_tiny"].write(tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    folder = tmp_path / "art"
    folder.mkdir()
    np.save(folder / "input_0.npy", x)
    np.save(folder / "ref_0.npy", ort_outputs(tmp_path / "vit_tiny.onnx", {"input": x})[0])
    pack = Path(gpu_check.__file__).resolve().parent.parent  # the checkout: edgepress importable
    row = gpu_check._torch_eager(pack, folder, gpu_check.TORCH_MODELS["vit_tiny"], "cpu", 3)
    assert row["eager_ms"] > 0 and row["eager_tf32_ms"] > 0
    assert row["eager_max_rel_err"] < 1e-4
