"""Relax module -> VM executable with the target's own default pipeline (fusion included)."""

from __future__ import annotations

from edgepress.compiler.errors import BackendError
from edgepress.backends.lower import _first_line


def make_target(target: dict, host: dict | None = None):
    import tvm

    try:
        return tvm.target.Target(target, host=host) if host else tvm.target.Target(target)
    except Exception as err:
        raise BackendError(f"TVM rejects the target {target}: {_first_line(err)}") from err


def compile_relax(mod, target):
    """tvm.compile with relax.get_default_pipeline(target): the plain default does no fusion."""
    import tvm
    from tvm import relax

    try:
        return tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    except Exception as err:
        raise BackendError(
            f"TVM failed to compile for {target.kind.name}: {_first_line(err)}"
        ) from err
