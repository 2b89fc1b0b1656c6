"""compress inspect: inputs, outputs, opset, op histogram, parameters and MACs (hand-counted)."""

from __future__ import annotations

import json

from tests import builders
from tests.conftest import save


def test_inspect_reports_the_model(cli, tmp_path):
    path = save(builders.shape_subgraph(opset=13), tmp_path / "m.onnx")
    r = cli("inspect", path, "--input-shape", "x=2,2,6,6", "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["inputs"] == [{"name": "x", "shape": [2, 2, 6, 6], "dtype": "FLOAT"}]
    assert info["outputs"][0]["name"] == "y"
    assert info["opsets"] == {"ai.onnx": 13}
    assert info["op_histogram"]["Constant"] == 2 and info["op_histogram"]["Conv"] == 1
    # conv weight 4x2x3x3 = 72, fc 5x144 = 720, axes [0] = 1 -> 793 parameters
    assert info["parameters"] == 72 + 720 + 1
    assert info["parameter_bytes"] == (72 + 720) * 4 + 8
    # Conv: N*Cout*H*W*Cin*kh*kw = 2*4*6*6*2*3*3 = 5184; Gemm: M*N*K = 2*5*144 = 1440
    assert info["macs"] == 5184 + 1440


def test_inspect_dynamic_model_says_macs_unknown(cli, tmp_path):
    path = save(builders.shape_subgraph(opset=13), tmp_path / "m.onnx")
    r = cli("inspect", path)
    assert r.code == 0
    assert "x: FLOAT [N, 2, 6, 6]" in r.out
    assert "MACs: unknown (dynamic dims: pass --input-shape)" in r.out
    assert "Conv" in r.out and "opsets: ai.onnx 13" in r.out


def test_inspect_bad_file(cli, tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x00\x01garbage")
    r = cli("inspect", tmp_path / "x.onnx")
    assert r.code == 2 and "x.onnx" in r.err
