"""edgepress's public Python API: the names a build pipeline imports.

    import edgepress
    artifact = edgepress.build("model.onnx", target="x86_64", output="out/")

They live in edgepress.compiler.api; this module only re-exports them, lazily, so that
`import edgepress` does not start TVM.
"""

from __future__ import annotations

from pathlib import Path

# In a source checkout the code folders are this folder's siblings (pyproject.toml maps them
# into the package when installed): found from here too, so that a checkout on sys.path is
# one consistent edgepress whichever install is also present.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "compiler" / "api.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (the package's own __path__)

__all__ = [
    "Artifact",
    "EdgepressError",
    "build",
    "load",
    "load_config",
]


def __getattr__(name: str):
    if name in __all__:
        from edgepress.compiler import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgepress' has no attribute {name!r}")
