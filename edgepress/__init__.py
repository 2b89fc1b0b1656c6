"""edgepress's public Python API: the names a build pipeline imports.

    import edgepress
    artifact = edgepress.build("model.onnx", target="x86_64", output="out/")

They live in edgepress.compiler.api; this module only re-exports them, lazily, so that
`import edgepress` does not start TVM.
"""

from __future__ import annotations

__all__ = [
    "Artifact",
    "BuildConfig",
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
