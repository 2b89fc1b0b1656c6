"""Running a list of registered passes in order on one clone of the model, recording each."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import onnx_ir as ir

from edgepress.compiler.errors import PassError, UsageError
from edgepress.passes import PASSES, get_pass
from edgepress.passes.graph_stats import count_nodes, parameter_bytes

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    name: str
    changes: int
    nodes_before: int
    nodes_after: int
    param_bytes_before: int
    param_bytes_after: int
    seconds: float
    details: dict | None = None

    def to_json(self) -> dict:
        record = asdict(self)
        if record["details"] is None:
            del record["details"]
        return record


def parse_pass_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise UsageError(
            f"--passes: unknown pass(es) {', '.join(unknown)}; known passes: "
            f"{', '.join(sorted(PASSES))} (see 'compress passes')"
        )
    return names


def run_pipeline(
    model: ir.Model,
    names: list[str],
    options: dict[str, dict] | None = None,
    done: list[str] | None = None,
) -> tuple[ir.Model, list[PassRecord]]:
    """Each pass gets the previous one's model; a crash names the pass and those before it.

    `options` holds keyword arguments per pass name (quantize_int8's calibration statistics);
    `done` names passes already run on this model, for the error message.
    """
    records: list[PassRecord] = []
    options = options or {}
    for name in names:
        nodes, params = count_nodes(model), parameter_bytes(model)
        start = time.perf_counter()
        try:
            result = get_pass(name)(model, **options.get(name, {}))
        except Exception as err:
            before = ", ".join([*(done or []), *(r.name for r in records)]) or "nothing"
            raise PassError(
                f"pass '{name}' failed after [{before}]: {type(err).__name__}: {err}", name
            ) from err
        model = result.model
        record = PassRecord(
            name,
            result.changes,
            nodes,
            count_nodes(model),
            params,
            parameter_bytes(model),
            time.perf_counter() - start,
            result.details,
        )
        log.debug(
            "pass %s: %d changes, nodes %d -> %d, %.2f s",
            name,
            record.changes,
            record.nodes_before,
            record.nodes_after,
            record.seconds,
        )
        records.append(record)
    return model, records


def run_optional_pipeline(
    proto, names: list[str], source: str, options: dict[str, dict] | None = None
) -> tuple[ir.Model, list[PassRecord]]:
    """run_pipeline (with `options`) on a fresh onnx_ir copy of `proto`; a pass that crashes is
    dropped (a warning, and a record with its error and no changes) and the pipeline runs again
    without it, from the start (a crash may leave the model half-rewritten). EDGEPRESS_STRICT=1
    raises instead."""
    from edgepress.compiler.errors import strict
    from edgepress.compiler.model_io import to_ir

    skipped: dict[str, str] = {}
    while True:
        active = [n for n in names if n not in skipped]
        try:
            model, records = run_pipeline(to_ir(proto, source), active, options)
            break
        except PassError as err:
            if strict() or err.pass_name is None:
                raise
            skipped[err.pass_name] = str(err)
            log.warning("%s: %s; building without it", source, err)
    for name, error in skipped.items():
        records.insert(names.index(name), PassRecord(name, 0, 0, 0, 0, 0, 0.0, {"failed": error}))
    return model, records
