"""Where edgepress keeps what it builds once per machine (the aarch64 runtime, the CUDA stub)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGEPRESS_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """$EDGEPRESS_CACHE_DIR, else $XDG_CACHE_HOME/edgepress, else ~/.cache/edgepress."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgepress"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
