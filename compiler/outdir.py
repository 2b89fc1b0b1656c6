"""The output folder: refuse to clobber, never touch the user's inputs, replace only at the end.

A build is written into a staging folder beside OUTDIR and moved into place when it is complete,
so a failed build leaves an existing OUTDIR as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgepress.compiler.errors import UsageError

MANIFEST = "manifest.json"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outdir(outdir: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an OUTDIR that is, or holds, a file the user gave, or holds files without --force."""
    out = outdir.resolve()
    for given in inputs:
        given = given.resolve()
        if _inside(given, out):
            raise UsageError(
                f"-o {outdir}: the output folder would contain or replace {given}, "
                "which is an input; choose another folder"
            )
        if given in out.parents:
            raise UsageError(f"-o {outdir}: the output folder cannot be inside the input {given}")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"-o {outdir}: exists and is not a folder; choose another path")
        if not any(out.iterdir()):
            return  # an empty folder (made by `mkdir -p` in a build script) is filled
        if not force:
            raise UsageError(f"-o {outdir}: the folder exists; pass --force to replace it")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise UsageError(
                f"-o {outdir}: exists and is not an edgepress artifact folder (no "
                f"{MANIFEST}); refusing to replace it even with --force"
            )


def staging_dir(outdir: Path) -> Path:
    outdir.resolve().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.staging-", dir=outdir.resolve().parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact is an ordinary folder
    return staging


def commit(staging: Path, outdir: Path) -> None:
    """Move the finished staging folder to OUTDIR, replacing an old artifact folder."""
    out = outdir.resolve()
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
