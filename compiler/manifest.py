"""manifest.json: what the artifact is (inputs, outputs, target, versions) and every file's hash."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from edgepress.compiler import __version__
from edgepress.compiler.model_io import sha256_file

MANIFEST_VERSION = 1


def tool_versions() -> dict[str, str]:
    versions = {"edgepress": __version__}
    for dist in ("apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "onnx-ir", "onnxscript"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def write_manifest(
    folder: Path,
    *,
    source: Path,
    source_sha256: str,
    target: dict,
    inputs: list[dict],
    outputs: list[dict],
    status: str,
    fixed_inputs: list[dict] | None = None,
    opset_upgrade: dict | None = None,
) -> Path:
    """Hash every file in the folder (the manifest itself aside) and write the manifest."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        files[path.relative_to(folder).as_posix()] = {
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "status": status,
        "source": {"path": str(source), "sha256": source_sha256, "opset_upgrade": opset_upgrade},
        "target": target,
        "inputs": inputs,
        # Source inputs fixed at build time (--input-value): not in the artifact's signature.
        "fixed_inputs": fixed_inputs or [],
        "outputs": outputs,
        "versions": tool_versions(),
        "files": files,
    }
    out = folder / "manifest.json"
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(folder: Path) -> dict:
    from edgepress.compiler.errors import UsageError

    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{folder}: not an edgepress artifact folder (no manifest.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from err
