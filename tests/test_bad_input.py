"""Each bad input gets a one-paragraph message naming the file, node or option, and an exit code."""

from __future__ import annotations

import hashlib

import pytest

from tests import builders
from tests.conftest import save


@pytest.fixture
def tiny(tmp_path):
    return save(builders.conv_relu(), tmp_path / "tiny.onnx")


def _one_paragraph(text: str) -> None:
    """The error is one paragraph, the last thing printed, with no traceback."""
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("compress: error:")]
    assert len(errors) == 1 and text.rstrip().endswith(errors[0])


def test_missing_path(cli, tmp_path):
    r = cli(tmp_path / "nope.onnx", "--target", "x86_64", "-o", tmp_path / "o")
    assert r.code == 2 and "nope.onnx: no such file" in r.err
    _one_paragraph(r.err)


def test_not_onnx(cli, tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o")
    assert r.code == 2 and "notes.onnx: not an ONNX model" in r.err
    _one_paragraph(r.err)


def test_truncated_protobuf(cli, tiny, tmp_path):
    cut = tmp_path / "cut.onnx"
    data = tiny.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    r = cli(cut, "--target", "x86_64", "-o", tmp_path / "o")
    assert r.code == 2 and "cut.onnx" in r.err
    assert "truncated" in r.err or "checker" in r.err
    _one_paragraph(r.err)


def test_checker_rejects(cli, tmp_path):
    model = builders.conv_relu()
    model.graph.node[1].input[0] = "undefined_tensor"
    path = save(model, tmp_path / "broken.onnx")
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o")
    assert r.code == 2 and "broken.onnx: the ONNX checker rejects the model" in r.err
    _one_paragraph(r.err)


def test_unsupported_op_names_node_op_and_opset(cli, tmp_path):
    path = save(builders.custom_op(), tmp_path / "custom.onnx")
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o")
    assert r.code == 3
    assert "node 'fancy_norm_3' (com.example::FancyNorm, #1)" in r.err
    assert "opset com.example 1" in r.err
    _one_paragraph(r.err)
    assert not (tmp_path / "o").exists()


def test_unknown_target(cli, tiny, tmp_path):
    r = cli(tiny, "--target", "riscv", "-o", tmp_path / "o")
    assert (
        r.code == 2
        and "--target 'riscv': unknown target; known targets: x86_64, arm64, cuda" in r.err
    )
    _one_paragraph(r.err)


def test_existing_outdir_refused_without_force(cli, tiny, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli(tiny, "--target", "x86_64", "-o", out)
    assert r.code == 2 and "the folder exists; pass --force" in r.err
    # --force never replaces a folder that is not an edgepress artifact.
    r = cli(tiny, "--target", "x86_64", "-o", out, "--force")
    assert r.code == 2 and "not an edgepress artifact folder" in r.err
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_an_artifact_folder(cli, tiny, tmp_path):
    out = tmp_path / "o"
    assert cli(tiny, "--target", "x86_64", "-o", out).code == 0
    (out / "stale.txt").write_text("old")
    assert cli(tiny, "--target", "x86_64", "-o", out, "--force").code == 0
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()


def test_outdir_equal_to_or_containing_the_input(cli, tiny, tmp_path):
    r = cli(tiny, "--target", "x86_64", "-o", tiny, "--force")
    assert r.code == 2 and "which is an input" in r.err
    r = cli(tiny, "--target", "x86_64", "-o", tmp_path, "--force")
    assert r.code == 2 and "which is an input" in r.err
    r = cli(tiny, "--target", "x86_64", "-o", tiny / "sub")
    assert r.code == 2 and "cannot be inside the input" in r.err
    assert tiny.is_file()


def test_dynamic_input_lists_inputs_and_the_flag(cli, tmp_path):
    path = save(builders.shape_subgraph(), tmp_path / "dyn.onnx")
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o")
    assert r.code == 2
    assert "'x' [N*, 2, 6, 6] dynamic" in r.err
    assert "--input-shape x=1,2,6,6" in r.err
    _one_paragraph(r.err)


def test_bad_input_shape_flags(cli, tmp_path):
    path = save(builders.shape_subgraph(), tmp_path / "dyn.onnx")
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o", "--input-shape", "images=1,2,6,6")
    assert r.code == 2 and "'images', which" in r.err and "its inputs are: x" in r.err
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o", "--input-shape", "x=1,3,6,6")
    assert r.code == 2 and "dimension 1 of input 'x' is fixed to 2" in r.err
    r = cli(path, "--target", "x86_64", "-o", tmp_path / "o", "--input-shape", "x=1,two,6,6")
    assert r.code == 2 and "whole numbers" in r.err


def test_bad_option_value_is_a_usage_error(cli, tiny, tmp_path):
    r = cli(tiny, "--target", "x86_64", "-o", tmp_path / "o", "--passes", "fold_constants,nope")
    assert r.code == 2 and "unknown pass(es) nope" in r.err
    r = cli(tiny, "--target", "x86_64")
    assert r.code == 2 and "-o/--output" in r.err


def test_verification_failure_exits_nonzero_and_names_the_output(cli, tiny, tmp_path, monkeypatch):
    """An artifact whose output is off: the build step fails, names the output, keeps the report."""
    import dataclasses

    from edgepress.backends import targets
    from edgepress.backends.runtime.host import HostRunner

    class OffByOne(HostRunner):
        def run(self, inputs):
            return [y + 1.0 for y in super().run(inputs)]

    real = targets.TARGETS["x86_64"]
    broken = dataclasses.replace(real, runner=lambda artifact: OffByOne(artifact / "model.so"))
    monkeypatch.setitem(targets.TARGETS, "x86_64", broken)
    out = tmp_path / "o"
    r = cli(tiny, "--target", "x86_64", "-o", out)
    assert r.code == 6
    assert "output 'y' (512 of 512 elements outside atol=0.0001 rtol=0.001)" in r.err
    report = (out / "report.json").read_text()
    assert '"status": "failed"' in report


def test_input_model_never_modified(cli, tiny, tmp_path):
    before = hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert cli(tiny, "--target", "x86_64", "-o", tmp_path / "o").code == 0
    assert hashlib.sha256(tiny.read_bytes()).hexdigest() == before


def test_debug_shows_traceback(cli, tmp_path):
    r = cli(tmp_path / "nope.onnx", "--target", "x86_64", "-o", tmp_path / "o", "--debug")
    assert r.code == 2
    assert "Traceback" in r.err and "ModelError" in r.err
