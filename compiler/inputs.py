"""Inputs for verification and `compress run`: seeded random arrays or a user's .npz."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgepress.compiler.errors import UsageError
from edgepress.compiler.shapes import TensorSpec


def random_inputs(specs: list[TensorSpec], seed: int) -> dict[str, np.ndarray]:
    """Standard-normal floats, small non-negative integers (safe as indices), random booleans."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 4, size=spec.shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, size=spec.shape).astype(bool)
        else:
            raise UsageError(
                f"input '{spec.name}': cannot make random data of dtype {dtype}; "
                "pass --verify-inputs with an .npz"
            )
    return arrays


def load_npz(path: Path, specs: list[TensorSpec], option: str) -> dict[str, np.ndarray]:
    """One array per input, under the input's name, of the input's shape and dtype."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UsageError(f"{option} {path}: not a readable .npz file ({err})") from err
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise UsageError(
            f"{option} {path}: no array for input(s) {', '.join(missing)}; "
            f"the file holds {', '.join(arrays) or 'nothing'}"
        )
    out = {}
    for spec in specs:
        array = arrays[spec.name]
        if tuple(array.shape) != spec.shape:
            raise UsageError(
                f"{option} {path}: array '{spec.name}' has shape {tuple(array.shape)}, "
                f"the model's input has {spec.shape}"
            )
        if array.dtype != np.dtype(spec.dtype):
            raise UsageError(
                f"{option} {path}: array '{spec.name}' is {array.dtype}, the model's input is "
                f"{spec.dtype}"
            )
        out[spec.name] = np.ascontiguousarray(array)
    return out


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def complete_feeds(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The artifact's inputs, plus zeros for source inputs a pass removed as unused (they do
    not change the outputs, but onnxruntime wants every input fed)."""
    out = dict(feeds)
    for i in session.get_inputs():
        if i.name not in out:
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            out[i.name] = np.zeros(shape, dtype=_ORT_TYPES.get(i.type, np.float32))
    return out
