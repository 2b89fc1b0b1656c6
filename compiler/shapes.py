"""Fixing the model's input shapes from --input-shape, with a message listing what stays dynamic.

TVM and the folding of shape subgraphs need static shapes; exported models usually have a
symbolic batch (and often spatial) dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepress.compiler.errors import ModelError, UsageError


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output with a static shape and a numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def parse_input_shapes(flags: list[str]) -> dict[str, tuple[int, ...]]:
    """'images=1,3,224,224' flags -> {'images': (1, 3, 224, 224)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for flag in flags:
        name, sep, dims = flag.rpartition("=")
        if not sep or not name:
            raise UsageError(
                f"--input-shape {flag!r}: expected NAME=D1,D2,..., e.g. images=1,3,224,224"
            )
        try:
            values = tuple(int(d) for d in dims.split(",") if d.strip() != "")
        except ValueError:
            raise UsageError(f"--input-shape {flag!r}: dimensions must be whole numbers") from None
        if any(v <= 0 for v in values):
            raise UsageError(f"--input-shape {flag!r}: dimensions must be positive")
        if name in shapes:
            raise UsageError(f"--input-shape: input '{name}' is given twice")
        shapes[name] = values
    return shapes


def model_inputs(model: ir.Model) -> list[ir.Value]:
    """Graph inputs that are real inputs (old exporters also list initializers as inputs)."""
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def is_fixed_dim(dim) -> bool:
    """A dim with a size. Paddle's exporter writes -1 as the dim_value of a dynamic dim, and
    onnxruntime reads it as dynamic: so does edgepress."""
    return isinstance(dim, int) and dim >= 0


def _dims_text(value: ir.Value) -> str:
    if value.shape is None:
        return "unknown rank"
    return (
        "["
        + ", ".join(
            str(d) if is_fixed_dim(d) else f"{getattr(d, 'value', None) or '?'}*"
            for d in value.shape
        )
        + "]"
    )


def _is_static(value: ir.Value) -> bool:
    return value.shape is not None and all(is_fixed_dim(d) for d in value.shape)


def fix_input_shapes(model: ir.Model, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Set every input's shape from `shapes`; fail listing every input that stays dynamic."""
    inputs = {v.name: v for v in model_inputs(model)}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise UsageError(
            f"--input-shape names {', '.join(map(repr, unknown))}, which {source} does not have; "
            f"its inputs are: {', '.join(inputs) or '(none)'}"
        )
    for name, dims in shapes.items():
        value = inputs[name]
        if value.shape is not None:
            if len(value.shape) != len(dims):
                raise UsageError(
                    f"--input-shape {name}={','.join(map(str, dims))}: {source} declares input "
                    f"'{name}' with rank {len(value.shape)} {_dims_text(value)}, not rank {len(dims)}"
                )
            for axis, (have, want) in enumerate(zip(value.shape, dims)):
                if is_fixed_dim(have) and have != want:
                    raise UsageError(
                        f"--input-shape {name}={','.join(map(str, dims))}: dimension {axis} of "
                        f"input '{name}' is fixed to {have} in {source}, not {want}"
                    )
        value.shape = ir.Shape(dims)
    dynamic = [v for v in inputs.values() if not _is_static(v)]
    if dynamic:
        lines = []
        for v in inputs.values():
            mark = "static" if _is_static(v) else "dynamic (* marks symbolic dims)"
            lines.append(f"'{v.name}' {_dims_text(v)} {mark}")
        suggestion = " ".join(
            "--input-shape "
            + v.name
            + "="
            + ",".join(str(d) if is_fixed_dim(d) else "1" for d in (v.shape or [1]))
            for v in dynamic
        )
        raise ModelError(
            f"{source}: inputs with dynamic dimensions need a fixed shape. Inputs: "
            + "; ".join(lines)
            + f". Pass for example: {suggestion} (replace each 1 put for a symbolic dim by the "
            "size you deploy with)."
        )
    for v in inputs.values():
        _check_size(v, source)
    # Outputs declared with symbolic dims are re-inferred from the now static inputs; their
    # dims become anonymous (not None: the checker wants a shape on every graph output, and
    # shape inference cannot fill one behind an op it does not know).
    for out in model.graph.outputs:
        if out.shape is not None and not all(is_fixed_dim(d) for d in out.shape):
            out.shape = ir.Shape([d if is_fixed_dim(d) else None for d in out.shape])


# An input larger than this is a typo in a shape, not a deployment: verification would allocate it.
MAX_INPUT_BYTES = 1 << 32


def _check_size(value: ir.Value, source: str) -> None:
    dims = tuple(value.shape)
    if any(d == 0 for d in dims):
        raise ModelError(
            f"{source}: input '{value.name}' {_dims_text(value)} has a dimension of 0 (an empty "
            f"tensor); give the size you deploy with, --input-shape {value.name}=D1,D2,..."
        )
    try:
        itemsize = value.dtype.itemsize
    except (AttributeError, TypeError):  # no dtype, UNDEFINED, STRING
        raise ModelError(
            f"{source}: input '{value.name}' has element type {value.dtype}, not a numeric tensor "
            "type edgepress can compile"
        ) from None
    size = int(np.prod(dims, dtype=object)) * itemsize
    if size > MAX_INPUT_BYTES:
        raise ModelError(
            f"{source}: input '{value.name}' {_dims_text(value)} would take {size / 2**30:.0f} "
            f"GiB; check its shape (--input-shape {value.name}=D1,D2,...)"
        )


def numpy_dtype(value: ir.Value) -> str:
    if value.dtype is None:
        raise ModelError(f"value '{value.name}' has no element type")
    return str(value.dtype.numpy())


def tensor_specs(values: list[ir.Value]) -> list[TensorSpec]:
    """Static specs of inputs or outputs (after shapes were fixed and inferred)."""
    specs = []
    for v in values:
        shape = tuple(d if isinstance(d, int) else -1 for d in (v.shape or ()))
        specs.append(TensorSpec(v.name, shape, numpy_dtype(v)))
    return specs
