"""Inputs fixed at build time (--input-value NAME=V[,V...]).

A deployment often feeds one input the same value every time (a sample rate, a mode flag). Fixed
here, the input becomes a constant of the graph: `fold_constants` folds what depends on it (an
If on the sample rate keeps one branch), and the artifact's signature no longer has it. The
manifest records each fixed value, so onnxruntime on the source model (the reference) is fed it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgepress.compiler.errors import UsageError


def parse_input_values(flags: list[str]) -> dict[str, list[float]]:
    """'sr=16000' flags -> {'sr': [16000.0]} (values as given; the dtype comes from the model)."""
    values: dict[str, list[float]] = {}
    for flag in flags:
        name, sep, text = flag.rpartition("=")
        if not sep or not name or not text.strip():
            raise UsageError(f"--input-value {flag!r}: expected NAME=V or NAME=V1,V2,..., e.g. sr=16000")
        try:
            numbers = [float(v) for v in text.split(",")]
        except ValueError:
            raise UsageError(f"--input-value {flag!r}: values must be numbers") from None
        if not all(math.isfinite(v) for v in numbers):
            raise UsageError(f"--input-value {flag!r}: values must be finite")
        if name in values:
            raise UsageError(f"--input-value: input '{name}' is given twice")
        values[name] = numbers
    return values


def _shape_for(value: ir.Value, count: int, given: tuple[int, ...] | None, flag: str) -> tuple:
    if given is not None:
        return given
    shape = value.shape
    if shape is not None and all(isinstance(d, int) and d >= 0 for d in shape):
        return tuple(shape)
    if count == 1 and (shape is None or len(shape) == 0):
        return ()
    raise UsageError(
        f"{flag}: input '{value.name}' has no fixed shape; give it with --input-shape "
        f"{value.name}=D1,D2,..."
    )


def _array(numbers: list[float], dtype: np.dtype, shape: tuple, flag: str) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    if len(numbers) not in (1, size):
        raise UsageError(f"{flag}: {len(numbers)} values for an input of shape {list(shape)} ({size} elements)")
    if dtype.kind in "iub" and any(v != int(v) for v in numbers):
        raise UsageError(f"{flag}: input is {dtype}, the values must be whole numbers")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if any(not info.min <= v <= info.max for v in numbers):
            raise UsageError(f"{flag}: a value is out of range for {dtype}")
    if dtype.kind == "b" and any(v not in (0, 1) for v in numbers):
        raise UsageError(f"{flag}: input is bool, the values must be 0 or 1")
    if dtype.kind not in "iubf":
        raise UsageError(f"{flag}: inputs of type {dtype} cannot be fixed")
    return np.broadcast_to(np.asarray(numbers, dtype=dtype), (size,)).reshape(shape).copy()


def fix_input_values(
    model: ir.Model,
    values: dict[str, list[float]],
    shapes: dict[str, tuple[int, ...]],
    source: str,
) -> dict[str, np.ndarray]:
    """Turn each named input into an initializer holding its value; returns {name: array}.

    An initializer that old exporters list among the graph inputs (a default a caller may
    override) can be named too: its value is replaced. Every such input then stops being an
    input: the artifact's signature never had them, and the passes may fold them."""
    inputs = {v.name: v for v in model.graph.inputs}
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        raise UsageError(
            f"--input-value names {', '.join(map(repr, unknown))}, which {source} does not have; "
            f"its inputs are: {', '.join(inputs) or '(none)'}"
        )
    fixed = {}
    for name, numbers in values.items():
        value = inputs[name]
        flag = f"--input-value {name}"
        if value.dtype is None:
            raise UsageError(f"{flag}: {source} declares no element type for input '{name}'")
        dtype = np.dtype(value.dtype.numpy())
        array = _array(numbers, dtype, _shape_for(value, len(numbers), shapes.get(name), flag), flag)
        model.graph.inputs.remove(value)
        value.shape = ir.Shape(array.shape)
        value.const_value = ir.tensor(array, name=name)
        if name not in model.graph.initializers:
            model.graph.register_initializer(value)
        fixed[name] = array
    listed = [v for v in model.graph.inputs if v.name in model.graph.initializers]
    for value in listed:
        model.graph.inputs.remove(value)
    if listed:  # IR 3 wants every initializer among the inputs; IR 4 on does not
        model.ir_version = max(model.ir_version, 4)
    return fixed


def fixed_to_json(fixed: dict[str, np.ndarray]) -> list[dict]:
    return [
        {"name": k, "shape": list(a.shape), "dtype": str(a.dtype), "value": a.ravel().tolist()}
        for k, a in fixed.items()
    ]


def fixed_from_json(entries: list[dict] | None) -> dict[str, np.ndarray]:
    """The manifest's fixed inputs as arrays (to feed onnxruntime on the source model)."""
    return {
        e["name"]: np.asarray(e["value"], dtype=e["dtype"]).reshape(e["shape"])
        for e in entries or []
    }
