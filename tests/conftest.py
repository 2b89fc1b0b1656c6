"""Shared fixtures: an in-process CLI runner (TVM is imported once per test session)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepress.compiler.cli import main


@pytest.fixture(autouse=True, scope="session")
def _no_tuning_records_from_the_user(tmp_path_factory):
    """Builds in tests must not pick up records from the machine's tuning cache."""
    import os

    os.environ["EDGEPRESS_TUNING_DB"] = str(tmp_path_factory.mktemp("tuning-root"))


@pytest.fixture(autouse=True, scope="session")
def _optimization_failures_fail_tests():
    """A crash in edgepress's own kernels falls back to TVM's lowering for users, a crashing pass
    is skipped, each with a warning; in the tests they raise, so that CI sees them."""
    import os

    from edgepress.compiler.errors import STRICT_ENV

    os.environ[STRICT_ENV] = "1"


@pytest.fixture(autouse=True, scope="session")
def _no_shipped_records(tmp_path_factory):
    """Builds in tests see no shipped records either (whether they apply depends on the CPU the
    tests run on); the test of shipped records ships its own."""
    from edgepress.backends.tuning import database as tuning

    tuning.SHIPPED_DIR = tmp_path_factory.mktemp("no-shipped-records")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    def run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The digits CNN and its calibration, eval and train splits, written once per session."""
    from edgepress.models import EXAMPLES

    folder = tmp_path_factory.mktemp("digits")
    EXAMPLES["digits"].write(folder)
    return folder


def disassembly(library: Path, objdump: str = "objdump") -> str:
    """`objdump -d` of a built library: the instructions its kernels compiled to (what the
    arm64 tests check, qemu's times meaning nothing)."""
    return subprocess.run(
        [objdump, "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def ort_outputs(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime with its graph optimizations off: the reference as written."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
