"""The one table of targets: the driver looks a target up here and never branches on its name."""

from __future__ import annotations

import difflib

from edgepress.backends.targets import arm64
from edgepress.backends.targets import cuda
from edgepress.backends.targets import x86_64
from edgepress.backends.targets.base import Backend
from edgepress.compiler.errors import UsageError

TARGETS: dict[str, Backend] = {b.name: b for b in (x86_64.BACKEND, arm64.BACKEND, cuda.BACKEND)}


# What users type for a target that has another name here.
ALIASES = {
    "aarch64": "arm64",
    "arm": "arm64",
    "x86-64": "x86_64",
    "x86": "x86_64",
    "x64": "x86_64",
    "amd64": "x86_64",
    "gpu": "cuda",
    "nvidia": "cuda",
}


def get_backend(name: str) -> Backend:
    if name in TARGETS:
        return TARGETS[name]
    close = ALIASES.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, list(TARGETS), n=1)), None
    )
    hint = f"; did you mean {close!r}?" if close else ""
    raise UsageError(
        f"--target {name!r}: unknown target; known targets: {', '.join(TARGETS)}{hint}"
    )
