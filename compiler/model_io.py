"""Reading the user's ONNX file with errors that say what is wrong with it; never writing it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgepress.compiler.errors import ModelError

# The first byte of a serialized ModelProto is almost always field 1 (ir_version, varint): 0x08.
_MODEL_PROTO_FIRST_BYTES = {0x08, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: Path, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (external data included) and run the ONNX checker on it."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file. Give the path of an .onnx model.")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX model file.")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{path}: the file is empty, not an ONNX model.")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError) as err:
        if data[0] in _MODEL_PROTO_FIRST_BYTES:
            raise ModelError(
                f"{path}: the ONNX protobuf cannot be parsed ({err}); the file looks truncated "
                "or corrupt. Export or copy the model again."
            ) from err
        raise ModelError(f"{path}: not an ONNX model (the file is not an ONNX protobuf).") from err
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(
            f"{path}: not an ONNX model (no graph or IR version in the protobuf); "
            "if the file was cut short, export or copy it again."
        )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot read the model's external data: {err}") from err
    if check:
        try:
            # The path form handles external data and models over 2 GB.
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid model"
            raise ModelError(
                f"{path}: the ONNX checker rejects the model: {first}. "
                "Fix the exporter's output or re-export the model."
            ) from err
    return model


def to_ir(model: onnx.ModelProto, path: Path):
    """The onnx_ir model of a loaded file; a protobuf the checker let through but onnx-ir cannot
    read (an unknown element type, say) is the user's model's fault, said as such."""
    import onnx_ir as ir

    try:
        return ir.from_proto(model)
    except Exception as err:  # onnx-ir's SerdeError wraps whatever it met
        raise ModelError(
            f"{path}: the model cannot be read as a graph ({' '.join(str(err).split())[:300]}). "
            "Export it again."
        ) from err


def to_proto(model, path: Path, after: str) -> onnx.ModelProto:
    """The protobuf of an onnx_ir model, with a message naming the file and the step."""
    import onnx_ir as ir

    try:
        return ir.to_proto(model)
    except Exception as err:
        raise ModelError(
            f"{path}: the model cannot be written back as ONNX {after} "
            f"({' '.join(str(err).split())[:300]})"
        ) from err
