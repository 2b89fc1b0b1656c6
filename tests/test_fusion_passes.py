"""Fusion passes: each on a tiny graph with its pattern (rewritten, by op counts) and on one that
must stay (an intermediate with another user, a too-old opset, a non-constant operand), all
compared with onnxruntime on fresh random inputs."""

from __future__ import annotations

from tests.pass_checks import check_pass, model, ops, rand


def _bn(n: int, seed: int = 3) -> dict:
    return {
        "s": rand(n, seed=seed, low=0.5, high=1.5),
        "bb": rand(n, seed=seed + 1),
        "m": rand(n, seed=seed + 2),
        "v": rand(n, seed=seed + 3, low=0.5, high=2.0),
    }


CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv <pads=[1,1,1,1]> (x, w, b)
  y = BatchNormalization (c, s, bb, m, v)
}
"""


def test_fuse_conv_bn_folds_bn_into_conv():
    after = check_pass(
        "fuse_conv_bn",
        model(CONV_BN, {"w": rand(4, 3, 3, 3), "b": rand(4, seed=1), **_bn(4)}),
        changes=1,
    )
    assert ops(after) == {"Conv": 1}


def test_fuse_conv_bn_folds_into_conv_transpose_and_gemm():
    convt = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,5,5] x) => (float[1,3,10,10] y) {
          c = ConvTranspose <strides=[2,2]> (x, w)
          y = BatchNormalization (c, s, bb, m, v)
        }
        """,
        {"w": rand(4, 3, 2, 2), **_bn(3)},
    )
    assert ops(check_pass("fuse_conv_bn", convt, changes=1)) == {"ConvTranspose": 1}
    gemm = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,6] x) => (float[2,4] y) {
          c = Gemm <transB=1> (x, w, b)
          y = BatchNormalization (c, s, bb, m, v)
        }
        """,
        {"w": rand(4, 6), "b": rand(4, seed=1), **_bn(4)},
    )
    assert ops(check_pass("fuse_conv_bn", gemm, changes=1)) == {"Gemm": 1}


def test_fuse_conv_bn_leaves_a_conv_with_another_user():
    shared = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
          c = Conv <pads=[1,1,1,1]> (x, w, b)
          y = BatchNormalization (c, s, bb, m, v)
          z = Relu (c)
        }
        """,
        {"w": rand(4, 3, 3, 3), "b": rand(4, seed=1), **_bn(4)},
    )
    assert ops(check_pass("fuse_conv_bn", shared, changes=0))["BatchNormalization"] == 1


def test_fuse_conv_bn_leaves_parameters_a_caller_can_override():
    text = CONV_BN.replace("(float[1,3,8,8] x)", "(float[1,3,8,8] x, float[4] s)")
    params = {"w": rand(4, 3, 3, 3), "b": rand(4, seed=1), **_bn(4)}
    del params["s"]
    after = check_pass("fuse_conv_bn", model(text, params), changes=0)
    assert ops(after)["BatchNormalization"] == 1


CONV_AFFINE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv <pads=[1,1,1,1]> (x, w, b)
  d = Mul (c, k)
  y = Add (t, d)
}
"""


def test_fold_conv_affine_folds_per_channel_mul_and_add():
    proto = model(
        CONV_AFFINE,
        {
            "w": rand(4, 3, 3, 3),
            "b": rand(4, seed=1),
            "k": rand(4, 1, 1, seed=2),
            "t": rand(1, 4, 1, 1, seed=3),
        },
    )
    assert ops(check_pass("fold_conv_affine", proto, changes=2)) == {"Conv": 1}


def test_fold_conv_affine_folds_a_scalar_div_into_a_conv_without_bias():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
          c = Conv <pads=[1,1,1,1]> (x, w)
          y = Div (c, k)
        }
        """,
        {"w": rand(4, 3, 3, 3), "k": rand(seed=2, low=0.5, high=2.0).reshape(())},
    )
    assert ops(check_pass("fold_conv_affine", proto, changes=1)) == {"Conv": 1}


def test_fold_conv_affine_leaves_constants_that_vary_over_space_or_batch():
    proto = model(
        CONV_AFFINE,
        {
            "w": rand(4, 3, 3, 3),
            "b": rand(4, seed=1),
            "k": rand(1, 1, 8, 8, seed=2),
            "t": rand(1, 4, 1, 1, seed=3),
        },
    )
    after = check_pass("fold_conv_affine", proto, changes=0)
    assert ops(after) == {"Conv": 1, "Mul": 1, "Add": 1}


def test_fold_conv_affine_leaves_a_conv_with_another_user():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] c) {
          c = Conv <pads=[1,1,1,1]> (x, w, b)
          y = Mul (c, k)
        }
        """,
        {"w": rand(4, 3, 3, 3), "b": rand(4, seed=1), "k": rand(4, 1, 1, seed=2)},
    )
    assert ops(check_pass("fold_conv_affine", proto, changes=0)) == {"Conv": 1, "Mul": 1}


def test_fuse_matmul_add_makes_a_gemm():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4,8] x) => (float[4,5] y) {
          m = MatMul (x, w)
          y = Add (b, m)
        }
        """,
        {"w": rand(8, 5), "b": rand(5, seed=1)},
    )
    assert ops(check_pass("fuse_matmul_add", proto, changes=1)) == {"Gemm": 1}


def test_fuse_matmul_add_leaves_batched_matmuls_and_widening_biases():
    batched = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4,8] x) => (float[2,4,5] y) {
          m = MatMul (x, w)
          y = Add (m, b)
        }
        """,
        {"w": rand(8, 5), "b": rand(5, seed=1)},
    )
    assert ops(check_pass("fuse_matmul_add", batched, changes=0)) == {"MatMul": 1, "Add": 1}
    widening = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4,8] x) => (float[3,4,5] y) {
          m = MatMul (x, w)
          y = Add (m, b)
        }
        """,
        {"w": rand(8, 5), "b": rand(3, 4, 5, seed=1)},
    )
    assert ops(check_pass("fuse_matmul_add", widening, changes=0)) == {"MatMul": 1, "Add": 1}


LAYER_NORM_17 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,5,16] x) => (float[2,5,16] y) {
  mean = ReduceMean <axes=[-1]> (x)
  d = Sub (x, mean)
  sq = Pow (d, two)
  var = ReduceMean <axes=[-1]> (sq)
  ve = Add (var, eps)
  std = Sqrt (ve)
  n = Div (d, std)
  sc = Mul (n, scale)
  y = Add (sc, bias)
}
"""
LN_PARAMS = {
    "two": rand(1, seed=9).reshape(()) * 0 + 2.0,
    "eps": rand(1, seed=9).reshape(()) * 0 + 1e-5,
    "scale": rand(16, seed=1),
    "bias": rand(16, seed=2),
}


def test_fuse_layer_norm_with_axes_as_attribute_and_as_input():
    after = check_pass("fuse_layer_norm", model(LAYER_NORM_17, LN_PARAMS), changes=1)
    assert ops(after) == {"LayerNormalization": 1}
    text18 = (
        LAYER_NORM_17.replace('"" : 17', '"" : 18')
        .replace("ReduceMean <axes=[-1]> (x)", "ReduceMean (x, axes)")
        .replace("ReduceMean <axes=[-1]> (sq)", "ReduceMean (sq, axes)")
    )
    import numpy as np

    params18 = {**LN_PARAMS, "axes": np.array([-1], dtype=np.int64)}
    after = check_pass("fuse_layer_norm", model(text18, params18), changes=1)
    assert ops(after) == {"LayerNormalization": 1}


def test_fuse_layer_norm_needs_opset_17_and_private_intermediates():
    old = LAYER_NORM_17.replace('"" : 17', '"" : 16')
    assert check_pass("fuse_layer_norm", model(old, LN_PARAMS), changes=0)
    shared = LAYER_NORM_17.replace("=> (float[2,5,16] y)", "=> (float[2,5,16] y, float[2,5,16] d)")
    after = check_pass("fuse_layer_norm", model(shared, LN_PARAMS), changes=0)
    assert "LayerNormalization" not in ops(after)


GELU_ERF = """
<ir_version: 9, opset_import: ["" : 20]>
g (float[3,7] x) => (float[3,7] y) {
  s = Div (x, sqrt2)
  e = Erf (s)
  p = Add (e, one)
  m = Mul (x, p)
  y = Mul (m, half)
}
"""
GELU_TANH = """
<ir_version: 9, opset_import: ["" : 20]>
g (float[3,7] x) => (float[3,7] y) {
  cube = Pow (x, three)
  k = Mul (cube, c)
  inner = Add (x, k)
  a = Mul (inner, s2pi)
  t = Tanh (a)
  p = Add (t, one)
  h = Mul (x, half)
  y = Mul (h, p)
}
"""


def _scalars(**values: float) -> dict:
    import numpy as np

    return {k: np.array(v, dtype=np.float32) for k, v in values.items()}


def test_fuse_gelu_erf_and_tanh_forms():
    erf = model(GELU_ERF, _scalars(sqrt2=1.4142135, one=1.0, half=0.5))
    assert ops(check_pass("fuse_gelu", erf, changes=1)) == {"Gelu": 1}
    tanh = model(GELU_TANH, _scalars(three=3.0, c=0.044715, s2pi=0.7978845608, one=1.0, half=0.5))
    assert ops(check_pass("fuse_gelu", tanh, changes=1)) == {"Gelu": 1}


def test_fuse_gelu_needs_opset_20_and_private_intermediates():
    params = _scalars(sqrt2=1.4142135, one=1.0, half=0.5)
    old = GELU_ERF.replace('"" : 20', '"" : 19')
    assert ops(check_pass("fuse_gelu", model(old, params), changes=0))["Erf"] == 1
    shared = GELU_ERF.replace("=> (float[3,7] y)", "=> (float[3,7] y, float[3,7] e)")
    assert ops(check_pass("fuse_gelu", model(shared, params), changes=0))["Erf"] == 1


HARD_SWISH = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[2,4,5] x) => (float[2,4,5] y) {
  a = Add (x, three)
  c = Clip (a, zero, six)
  m = Mul (x, c)
  y = Div (m, six)
}
"""
HARD_SIGMOID = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2,4,5] x) => (float[2,4,5] y) {
  a = Add (x, three)
  c = Clip (a, zero, six)
  y = Div (c, six)
}
"""


def test_fuse_hard_swish_and_hard_sigmoid():
    params = _scalars(three=3.0, zero=0.0, six=6.0)
    assert ops(check_pass("fuse_hard_swish", model(HARD_SWISH, params), changes=1)) == {
        "HardSwish": 1
    }
    assert ops(check_pass("fuse_hard_swish", model(HARD_SIGMOID, params), changes=1)) == {
        "HardSigmoid": 1
    }


def test_fuse_hard_swish_needs_opset_14_and_the_right_constants():
    params = _scalars(three=3.0, zero=0.0, six=6.0)
    old = HARD_SWISH.replace('"" : 14', '"" : 13')
    assert "HardSwish" not in ops(check_pass("fuse_hard_swish", model(old, params), changes=0))
    relu5 = _scalars(three=3.0, zero=0.0, six=5.0)
    assert ops(check_pass("fuse_hard_swish", model(HARD_SIGMOID, relu5), changes=0))["Clip"] == 1


def test_fuse_matmul_add_leaves_a_matmul_with_another_user():
    proto = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4,8] x) => (float[4,5] y, float[4,5] m) {
          m = MatMul (x, w)
          y = Add (m, b)
        }
        """,
        {"w": rand(8, 5), "b": rand(5, seed=1)},
    )
    assert ops(check_pass("fuse_matmul_add", proto, changes=0)) == {"MatMul": 1, "Add": 1}


def test_fuse_hard_swish_leaves_a_clip_with_another_user():
    params = _scalars(three=3.0, zero=0.0, six=6.0)
    shared = HARD_SWISH.replace("=> (float[2,4,5] y)", "=> (float[2,4,5] y, float[2,4,5] c)")
    after = check_pass("fuse_hard_swish", model(shared, params), changes=0)
    assert "HardSwish" not in ops(after) and ops(after)["Clip"] == 1


def test_fuse_gelu_leaves_a_chain_with_other_constants():
    wrong = model(GELU_ERF, _scalars(sqrt2=1.5, one=1.0, half=0.5))
    assert ops(check_pass("fuse_gelu", wrong, changes=0))["Erf"] == 1
