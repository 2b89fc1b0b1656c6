"""The errors edgepress raises on purpose, caught once at the CLI and turned into an exit code.

Each message says where (file, node, option), what, and what to do about it.
"""

from __future__ import annotations


# Set to 1 (the test suite does), a failure inside an optional optimization (a pass of the
# default pipeline, edgepress's own kernels) raises instead of being skipped with a warning:
# tests must see it.
STRICT_ENV = "EDGEPRESS_STRICT"


def strict() -> bool:
    import os

    return os.environ.get(STRICT_ENV) == "1"


class EdgepressError(Exception):
    """Base of every error the CLI reports as a one-paragraph message."""

    exit_code = 2


class UsageError(EdgepressError):
    """A bad flag, option value or output path."""


class ModelError(EdgepressError):
    """The input file is missing, is not ONNX, or is a malformed model."""


class UnsupportedOpError(EdgepressError):
    """The model has operators the backend cannot lower."""

    exit_code = 3


class PassError(EdgepressError):
    """A graph pass failed; the message names the pass and the passes before it."""

    exit_code = 4

    def __init__(self, message: str, pass_name: str | None = None) -> None:
        super().__init__(message)
        self.pass_name = pass_name


class BackendError(EdgepressError):
    """Lowering, compiling, linking or running the artifact failed."""

    exit_code = 5


class VerificationError(EdgepressError):
    """The artifact's outputs are outside tolerance against onnxruntime."""

    exit_code = 6


class BudgetError(EdgepressError):
    """A budget the user set (accuracy drop) cannot be met."""

    exit_code = 7


def node_label(node, index: int | None = None) -> str:
    """'conv_12' (Conv, #37): node names are optional in ONNX, so fall back to the index."""
    op = f"{node.domain + '::' if getattr(node, 'domain', '') else ''}{node.op_type}"
    where = f", #{index}" if index is not None else ""
    name = node.name or (f"#{index}" if index is not None else "<unnamed>")
    return f"node '{name}' ({op}{where})"


def first_line(err: BaseException, limit: int = 500) -> str:
    """The useful line of a library's error: TVM puts its message after a traceback."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:limit]
