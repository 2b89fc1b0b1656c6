"""Lowering ONNX through TVM Relax to a native library per target, and running the result."""
