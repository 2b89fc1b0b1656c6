"""The Python API, build config files and the CLI's manners (help, checks, summary), on a tiny
model: outputs against onnxruntime, errors by type and by the key or flag they name."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import builders
from tests.conftest import ort_outputs, save


@pytest.fixture
def tiny(tmp_path):
    return save(builders.conv_relu(batch="N"), tmp_path / "tiny.onnx")


def test_api_builds_runs_and_benches(tiny, tmp_path):
    import edgepress

    artifact = edgepress.build(
        tiny, target="x86_64", output=tmp_path / "out", input_shapes={"x": [2, 3, 8, 8]}, seed=3
    )
    assert artifact.status == "ok" and artifact.target == "x86_64"
    assert artifact.report["config"]["seed"] == 3
    assert artifact.report["config"]["input_shape"] == ["x=2,3,8,8"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = artifact.run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_outputs(tiny, {"x": x})[0], rtol=1e-4, atol=1e-4)
    result, profile = artifact.bench(repeat=2, warmup=0)
    assert result.artifact_ms > 0 and profile is None
    assert json.loads((artifact.path / "bench.json").read_text())["bench"]["repeat"] == 2
    assert "ok: " in artifact.summary() and "verified against onnxruntime" in artifact.summary()


def test_api_errors_are_the_cli_error_types(tiny, tmp_path):
    import edgepress
    from edgepress.compiler.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'arm64'") as err:
        edgepress.build(tiny, target="aarch64", output=tmp_path / "o")
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="unknown key 'calibraton'; did you mean 'calibration'"):
        edgepress.build(tiny, target="x86_64", output=tmp_path / "o", calibraton="x")
    with pytest.raises(UsageError, match="'seed' must be an integer"):
        edgepress.build(tiny, target="x86_64", output=tmp_path / "o", seed="3")
    assert not (tmp_path / "o").exists()


def test_config_file_flags_override_and_the_report_repeats_the_build(cli, tiny, tmp_path):
    config = tmp_path / "build.toml"
    config.write_text(
        f'model = "{tiny.name}"\n'
        'target = "x86_64"\n'
        "[build]\n"
        'input_shape = {x = [1, 3, 8, 8]}\n'
        "[verification]\n"
        "seed = 5\n"
        "atol = 0.001\n"
    )
    out = tmp_path / "out"
    r = cli("build", "--config", config, "-o", out, "--seed", "7")
    assert r.code == 0, r.err
    settings = json.loads((out / "report.json").read_text())["config"]
    assert settings["seed"] == 7 and settings["atol"] == 0.001  # the flag wins over the file
    assert settings["model"] == str(tiny.resolve())  # relative to the config file's folder
    assert r.out.strip().splitlines()[-1].startswith(f"ok: {out}")
    again = tmp_path / "again"
    r = cli("build", "--config", out / "report.json", "-o", again)
    assert r.code == 0, r.err
    repeated = json.loads((again / "report.json").read_text())["config"]
    assert {**repeated, "output": None} == {**settings, "output": None}


@pytest.mark.parametrize(
    "text, message",
    [
        ('target = "x86_64"\ncalibraton = "a"\n', "unknown key 'calibraton'; did you mean"),
        ('target = "x86_64"\nseed = "a"\n', "'seed' must be an integer"),
        ('target = "x86_64"\n[tuning]\nretune = 1\n', "'retune' must be true or false"),
        ('target = "x86_64"\nfloat_conv = "tvn"\n', "did you mean 'tvm'"),
        ("target = \n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_file_and_key(cli, tiny, tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    r = cli("build", tiny, "--config", config, "-o", tmp_path / "o")
    assert r.code == 2 and message in r.err and str(config) in r.err, r.err
    assert "Traceback" not in r.err


def test_help_shows_each_command_with_defaults_and_choices(cli, capsys):
    from edgepress.compiler.cli import main

    assert main(["build", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: compress build")
    assert "(default: minmax)" in text and "{edgepress,direct,tvm}" in text
    assert "(default: 0.0001)" in text  # --atol
    assert main(["bench", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: compress bench")


def test_target_options_checked_before_building(cli, tiny, tmp_path):
    r = cli(tiny, "--target", "x86_64", "--mcpu", "cortex-a76", "-o", tmp_path / "o")
    assert r.code == 2 and "--mcpu 'cortex-a76'" in r.err and "x86_64" in r.err
    r = cli(tiny, "--target", "arm64", "--mattr", "+dotprd", "-o", tmp_path / "o")
    assert r.code == 2 and "did you mean '+dotprod'" in r.err
    r = cli(tiny, "--target", "cuda", "--mcpu", "skylake", "-o", tmp_path / "o")
    assert r.code == 2 and "--arch" in r.err
    assert not (tmp_path / "o").exists()


def test_an_empty_output_folder_is_filled(cli, tiny, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    r = cli(tiny, "--target", "x86_64", "-o", out, "--input-shape", "x=1,3,8,8")
    assert r.code == 0, r.err and (out / "manifest.json").is_file()


def test_layers_carry_their_onnx_node_names(cli, tmp_path):
    """A 1-D conv (a 2-D conv along the width after conv_along_width) before a 2-D one and a
    MatMul: the report names each lowered layer after its node, the rewritten one too."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="temporal", pads=[1, 1]),
            helper.make_node("Unsqueeze", ["a", "axes"], ["b"], name="to_2d"),
            helper.make_node("Conv", ["b", "w2"], ["c"], name="spatial", pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["c"], ["f"], name="flat"),
            helper.make_node("MatMul", ["f", "w3"], ["y"], name="classifier"),
        ],
        "named",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [
            init("w1", (8, 4, 3)),
            numpy_helper.from_array(np.array([2], np.int64), "axes"),
            init("w2", (16, 8, 3, 3)),
            init("w3", (16 * 1 * 6, 5)),
        ],
    )
    source = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                  tmp_path / "named.onnx")
    onnx.checker.check_model(onnx.load(source))
    r = cli(source, "--target", "x86_64", "-o", tmp_path / "o", "-q")
    assert r.code == 0, r.err
    layers = json.loads((tmp_path / "o" / "report.json").read_text())["float_conv"]["layers"]
    assert [(layer["node"], layer["op"]) for layer in layers] == [
        ("temporal", "conv2d"),
        ("spatial", "conv2d"),
        ("classifier", "matmul"),
    ]
