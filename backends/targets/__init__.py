"""The one table of targets: the driver looks a target up here and never branches on its name."""

from __future__ import annotations

from edgepress.backends.targets import arm64
from edgepress.backends.targets import cuda
from edgepress.backends.targets import x86_64
from edgepress.backends.targets.base import Backend
from edgepress.compiler.errors import UsageError

TARGETS: dict[str, Backend] = {b.name: b for b in (x86_64.BACKEND, arm64.BACKEND, cuda.BACKEND)}


def get_backend(name: str) -> Backend:
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(
            f"--target {name!r}: unknown target; known targets: {', '.join(TARGETS)}"
        ) from None
