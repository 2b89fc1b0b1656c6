"""fold_constants: structure (op counts), numbers against onnxruntime, validity, idempotence."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from edgepress.compiler.shapes import fix_input_shapes
from edgepress.passes import get_pass
from tests import builders
from tests.conftest import ort_outputs, save
from tests.tolerances import FLOAT_REWRITE_ATOL, FLOAT_REWRITE_RTOL


def _fixed(model: onnx.ModelProto, shape) -> ir.Model:
    m = ir.from_proto(model)
    fix_input_shapes(m, {"x": shape}, "test")
    return m


def test_folds_shape_subgraph(tmp_path):
    model = _fixed(builders.shape_subgraph(opset=11), (2, 2, 6, 6))
    result = get_pass("fold_constants")(model)
    ops = [n.op_type for n in result.model.graph]
    assert ops == ["Conv", "Reshape", "Gemm"]
    assert result.changes == 6
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    (got,) = ort_outputs(save(proto, tmp_path / "folded.onnx"), {"x": x})
    (ref,) = ort_outputs(save(builders.shape_subgraph(opset=11), tmp_path / "orig.onnx"), {"x": x})
    np.testing.assert_allclose(got, ref, rtol=FLOAT_REWRITE_RTOL, atol=FLOAT_REWRITE_ATOL)


def test_second_run_changes_nothing():
    model = _fixed(builders.shape_subgraph(opset=13), (2, 2, 6, 6))
    fold = get_pass("fold_constants")
    fold(model)
    assert fold(model).changes == 0


def test_leaves_a_graph_without_constants_alone():
    model = ir.from_proto(builders.conv_relu())
    result = get_pass("fold_constants")(model)
    assert result.changes == 0
    assert [n.op_type for n in result.model.graph] == ["Conv", "Relu"]


def test_dynamic_shape_subgraph_is_kept():
    """With the batch left symbolic, Shape -> Reshape cannot fold and must survive."""
    model = ir.from_proto(builders.shape_subgraph(opset=13))
    result = get_pass("fold_constants")(model)
    assert "Shape" in [n.op_type for n in result.model.graph]
