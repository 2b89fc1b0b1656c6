"""Tolerances for tests, in one place. Never loosen one to make a test pass."""

FLOAT_REWRITE_RTOL = 1e-5  # a float graph rewrite (folding) against the original in onnxruntime
FLOAT_REWRITE_ATOL = 1e-6
ARTIFACT_RTOL = 1e-4  # a TVM artifact against onnxruntime (fp32, different summation order)
ARTIFACT_ATOL = 1e-5
FUSION_RTOL = 1e-4  # a fusion that folds arithmetic into weights (BN, affine) or fuses an op chain
FUSION_ATOL = 1e-5
# Winograd F(4x4, 3x3) against direct convolution: its transforms add error in proportion to the
# tensor's magnitude, not to each element's (small outputs are sums of large cancelling terms),
# so the bound is on max |error| relative to max |output|.
WINOGRAD_ERROR_OF_SCALE = 2e-6
