"""The tuning databases: the user's, one folder per target, and the records shipped with
edgepress (backends/tuning/shipped/).

- a database outlives the build (JSON files under the cache, or --tuning-db), and a later
  build applies its records without measuring anything, for this model or any other model
  that has the same workload (tasks are keyed by the TIR function's structure);
- one database per target: the folder's target.json must equal the build's target, so
  records timed on one CPU are never applied to another; the same holds for the shipped
  records, applied beside the user's database, best record first.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from edgepress.backends.cache import cache_dir
from edgepress.compiler.errors import UsageError

TUNING_DB_ENV = "EDGEPRESS_TUNING_DB"


TARGET_FILE = "target.json"


# Records shipped with edgepress (best record per workload, one folder per target).
SHIPPED_DIR = Path(__file__).parent / "shipped"


def target_key(target: dict) -> str:
    """A folder name for a target: its kind and a hash of its whole description."""
    digest = hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:16]
    return f"{target['kind']}-{digest}"


def database_dir(target: dict, path: Path | None, *, create: bool = True) -> Path | None:
    """The database folder for `target`: `path` (--tuning-db) if given, else a folder per target
    under $EDGEPRESS_TUNING_DB or, by default, the cache's tuning/ folder.

    None when it does not exist and `create` is false (a build that does not tune and has no
    records for its target). A folder made for another target is refused.
    """
    if path is None:
        root = (
            Path(os.environ[TUNING_DB_ENV])
            if os.environ.get(TUNING_DB_ENV)
            else cache_dir("tuning")
        )
        path = root / target_key(target)
    path = Path(path)
    if not create and not (path / TARGET_FILE).is_file():
        return None
    if path.exists() and not path.is_dir():
        raise UsageError(f"--tuning-db {path}: is a file; the tuning database is a folder")
    marker = path / TARGET_FILE
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded != target:
            raise UsageError(
                f"--tuning-db {path}: this tuning database holds records for target "
                f"{json.dumps(recorded, sort_keys=True)}, not for this build's target "
                f"{json.dumps(target, sort_keys=True)}; records are never applied across targets. "
                "Give another --tuning-db folder."
            )
    else:
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(target, sort_keys=True, indent=2) + "\n")
    return path


def open_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(
        path_workload=str(folder / "database_workload.json"),
        path_tuning_record=str(folder / "database_tuning_record.json"),
        allow_missing=True,
    )


DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def shipped_database(target: dict):
    """The records shipped with edgepress for exactly this target (benchmarks/tune_bundled.py
    makes them) as (folder, database), or None. Read only: tuning never writes there.

    They are shipped gzipped (a workload is a serialized TIR function: 5 MB of JSON for the
    bundled models, 0.4 MB gzipped) and unpacked once into the cache, keyed by their hash.
    """
    folder = SHIPPED_DIR / target_key(target)
    marker = folder / TARGET_FILE
    if not marker.is_file() or json.loads(marker.read_text()) != target:
        return None
    packed = [folder / f"{name}.gz" for name in DATABASE_FILES]
    if not all(p.is_file() for p in packed):
        return None
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in packed)).hexdigest()[:16]
    unpacked = cache_dir("shipped-tuning", f"{folder.name}-{digest}")
    for name, source in zip(DATABASE_FILES, packed):
        if not (unpacked / name).is_file():
            partial = unpacked / f"{name}.partial"
            partial.write_bytes(gzip.decompress(source.read_bytes()))
            partial.replace(unpacked / name)
    return folder, open_database(unpacked)


def export_best_records(source: Path, destination: Path, target: dict) -> int:
    """Copy the best record of each workload in the database `source` into a fresh folder
    `destination`, gzipped, as edgepress ships them; returns the number of records."""
    import shutil
    import tempfile

    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    (destination / TARGET_FILE).write_text(json.dumps(target, sort_keys=True, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        open_database(source).dump_pruned(open_database(Path(tmp)))
        for name in DATABASE_FILES:
            data = (Path(tmp) / name).read_bytes()
            (destination / f"{name}.gz").write_bytes(gzip.compress(data, 9, mtime=0))
        return len((Path(tmp) / DATABASE_FILES[1]).read_text().splitlines())
