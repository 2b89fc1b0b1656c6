"""The artifact folder's runtime/: the README's C program built against it and run (x86_64
natively, arm64 under qemu), its outputs against onnxruntime; edgepress-run with nothing but
the folder; the C API's errors as strings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests import builders
from tests.conftest import ort_outputs, save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL

README = Path(__file__).parent.parent / "README.md"
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
# Nothing from this process leaks into the runs: no Python, no venv, no library path.
BARE_ENV = {"PATH": "/usr/bin:/bin", "TVM_NUM_THREADS": "1"}


def readme_c_example() -> str:
    text = README.read_text()
    after = text.split("<!-- c-example -->", 1)[1]
    return re.search(r"```c\n(.*?)```", after, re.S).group(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny conv-relu model built for x86_64 and arm64: {target: folder}, and the model."""
    from edgepress.compiler.cli import main as compress

    root = tmp_path_factory.mktemp("c-api")
    model = save(builders.conv_relu(), root / "tiny.onnx")
    built = {}
    for target in COMPILERS:
        if target == "arm64" and shutil.which("aarch64-linux-gnu-g++") is None:
            continue
        out = root / target
        assert compress([str(model), "--target", target, "-o", str(out), "-q"]) == 0
        built[target] = out
    return built, model


def _compile(target: str, source: Path, folder: Path, tmp_path: Path) -> Path:
    compiler = COMPILERS[target]
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    runtime = folder / "runtime"
    binary = tmp_path / source.stem
    subprocess.run(
        [compiler, "-Wall", "-Werror", str(source), "-I", str(runtime), "-L", str(runtime),
         "-ledgepress", f"-Wl,-rpath,{runtime}", "-o", str(binary)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return binary


def _run(target: str, args: list) -> subprocess.CompletedProcess:
    command = [*(QEMU if target == "arm64" else []), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=BARE_ENV, timeout=300)


@pytest.mark.parametrize("target", list(COMPILERS))
def test_readme_c_program_runs_the_folder_like_onnxruntime(folders, tmp_path, target):
    built, model = folders
    if target not in built:
        pytest.skip("no aarch64 cross toolchain")
    source = tmp_path / "example.c"
    source.write_text(readme_c_example())
    assert len(source.read_text().splitlines()) <= 30  # what the README promises: a short program
    binary = _compile(target, source, built[target], tmp_path)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    x.tofile(tmp_path / "in.bin")
    r = _run(target, [binary, built[target], tmp_path / "in.bin", tmp_path / "out.bin"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"y: float32, {1 * 8 * 8 * 8 * 4} bytes"
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(1, 8, 8, 8)
    (want,) = ort_outputs(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL)


ERRORS_PROGRAM = r"""
#include <stdio.h>
#include "edgepress.h"

/* Each misuse, one per line: the status and the message ("ok" where there is none). */
#define SHOW(call) do { int s = (call); printf("%d %s\n", s, ep_error(m) ? ep_error(m) : "ok"); } while (0)

int main(int argc, char** argv) {
  ep_model* m;
  float x[3 * 8 * 8] = {0}, y[8];
  ep_tensor_info info;
  SHOW(ep_load("/no/such/folder", &m));
  ep_free(m);
  if (argc != 2 || ep_load(argv[1], &m) != EP_OK) return 1;
  SHOW(ep_set_input(m, "nope", x, sizeof x));
  SHOW(ep_set_input(m, "x", x, 12));
  SHOW(ep_run(m));
  SHOW(ep_get_output(m, "y", y, sizeof y));
  SHOW(ep_input_info(m, 5, &info));
  SHOW(ep_set_input(m, "x", x, sizeof x));
  SHOW(ep_run(m));
  SHOW(ep_get_output(m, "y", y, sizeof y));
  ep_free(m);
  return 0;
}
"""


def test_c_api_reports_each_misuse_as_a_string(folders, tmp_path):
    built, _ = folders
    source = tmp_path / "errors.c"
    source.write_text(ERRORS_PROGRAM)
    binary = _compile("x86_64", source, built["x86_64"], tmp_path)
    r = _run("x86_64", [binary, built["x86_64"]])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("-1 /no/such/folder/manifest.json: cannot open"), lines[0]
    assert lines[1] == "-1 no input named 'nope' (the model's: x)"
    assert lines[2] == "-1 input 'x' takes 768 bytes (float32), got 12"
    assert lines[3] == "-1 input 'x' was never set"
    assert lines[4] == "-1 no output yet: call ep_run first"
    assert lines[5] == "-1 input index 5 out of range (the model has 1)"
    assert lines[6:8] == ["0 ok", "0 ok"]
    assert lines[8] == "-1 output 'y' holds 2048 bytes (float32), got a buffer of 32"


def test_edgepress_run_needs_nothing_but_the_folder(folders, tmp_path):
    """The folder copied elsewhere and run with a bare environment: init, first-run, memory
    and per-run times printed; the output equals onnxruntime."""
    built, model = folders
    folder = Path(shutil.copytree(built["x86_64"], tmp_path / "moved"))
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "out").mkdir()
    r = _run("x86_64", [folder / "runtime" / "edgepress-run", folder, tmp_path / "out",
                        tmp_path / "x.npy", "--repeat", "3"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    fields = dict(re.findall(r"^(\w+): ([\d.]+)$", r.stdout, re.M))
    assert float(fields["init_ms"]) > 0 and float(fields["first_run_ms"]) > 0
    assert int(fields["peak_rss_kib"]) > 1000
    assert len(r.stdout.split("times_ms:")[1].split()) == 3
    (want,) = ort_outputs(model, {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "out" / "output_0.npy"), want,
                               rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL)  # fmt: skip
    ldd = subprocess.run(["ldd", str(folder / "runtime" / "edgepress-run")],
                         capture_output=True, text=True, env=BARE_ENV)  # fmt: skip
    assert "not found" not in ldd.stdout and ".venv" not in ldd.stdout, ldd.stdout
    assert os.access(folder / "runtime" / "edgepress-run", os.X_OK)
