"""The build's pruning step: options and calibration data -> prune_channels -> [fine-tuning],
with the held-out fidelity and the per-layer picture measured for the report.

It runs after the float passes (BN folded, shapes fixed) and before int8 quantization, on the
same --calibration data; a fifth of the samples is held out of pruning to measure fidelity.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgepress.compiler.calibration_data import Preprocess, load_calibration
from edgepress.compiler.errors import PassError, UsageError
from edgepress.compiler.pipeline import PassRecord, run_pipeline
from edgepress.compiler.quantize_step import fidelity, load_eval, split_held_out, top1
from edgepress.compiler.shapes import model_inputs, tensor_specs
from edgepress.passes.pruning import PruningError
from edgepress.passes.pruning.channel_groups import analyze
from edgepress.passes.pruning.importance import METHODS as IMPORTANCE
from edgepress.passes.pruning.reconstruct import METHODS as RECOVERY
from edgepress.passes.quantization.sensitivity import run_samples


@dataclass(frozen=True)
class PruneOptions:
    ratio: float | None = None  # --prune: fraction of prunable channels to remove
    flops: float | None = None  # --prune-flops: fraction of MACs to keep
    importance: str | None = None  # default: activation with calibration data, else l1
    recovery: str | None = None  # default: lstsq with calibration data, else none
    uniform: bool = False  # the same ratio for every group instead of sensitivity-chosen ones
    min_keep: float = 0.1
    multiple: int = 8
    config: Path | None = None  # per-layer ratios and exclusions
    calibration: Path | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    samples: int | None = None
    eval_data: Path | None = None
    finetune: Path | None = None  # labelled data: fine-tune the pruned model in PyTorch
    finetune_epochs: int = 10

    def check(self) -> None:
        if (self.ratio is None) == (self.flops is None):
            raise UsageError("give one of --prune RATIO or --prune-flops F")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"--prune {self.ratio:g}: expected a fraction in [0, 1)")
        if self.flops is not None and not 0.0 < self.flops <= 1.0:
            raise UsageError(f"--prune-flops {self.flops:g}: expected a fraction in (0, 1]")
        if self.importance is not None and self.importance not in IMPORTANCE:
            raise UsageError(
                f"--prune-importance {self.importance!r}: expected one of {', '.join(IMPORTANCE)}"
            )
        if self.recovery is not None and self.recovery not in RECOVERY:
            raise UsageError(
                f"--prune-recovery {self.recovery!r}: expected one of {', '.join(RECOVERY)}"
            )
        if not 0.0 < self.min_keep <= 1.0:
            raise UsageError("--prune-min-keep must lie in (0, 1]")
        if self.multiple < 1:
            raise UsageError("--prune-multiple must be at least 1")
        if self.finetune_epochs < 1:
            raise UsageError("--finetune-epochs must be at least 1")
        if self.calibration is None:
            needs = [
                flag
                for flag, used in (
                    ("--prune-importance activation", self.importance == "activation"),
                    (f"--prune-recovery {self.recovery}", self.recovery not in (None, "none")),
                )
                if used
            ]
            if needs:
                raise UsageError(f"{' and '.join(needs)} need --calibration PATH")


def read_config(path: Path) -> tuple[dict[str, float], list[str]]:
    """--prune-config: JSON or TOML with `exclude = [layer, ...]` and `[layers] name = ratio`."""
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise UsageError(f"--prune-config {path}: no such file") from None
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"--prune-config {path}: cannot parse it: {err}") from None
    unknown = set(data) - {"exclude", "layers"}
    if unknown:
        raise UsageError(
            f"--prune-config {path}: unknown key(s) {', '.join(sorted(unknown))}; "
            "expected 'exclude' (a list of layer names) and 'layers' (name -> ratio)"
        )
    exclude = data.get("exclude", [])
    layers = data.get("layers", {})
    if not isinstance(exclude, list) or not all(isinstance(n, str) for n in exclude):
        raise UsageError(f"--prune-config {path}: 'exclude' must be a list of layer names")
    if not isinstance(layers, dict) or not all(
        isinstance(v, (int, float)) and 0.0 <= v < 1.0 for v in layers.values()
    ):
        raise UsageError(f"--prune-config {path}: 'layers' must map names to ratios in [0, 1)")
    return {k: float(v) for k, v in layers.items()}, exclude


def _check_layers(model: ir.Model, names: list[str], config: Path) -> None:
    known = {n.name for n in analyze(model.graph).sources}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"--prune-config {config}: no prunable layer named {', '.join(map(repr, unknown))}; "
            f"prunable layers: {', '.join(sorted(known))}"
        )


def prune(
    model: ir.Model, opts: PruneOptions, done: list[str]
) -> tuple[ir.Model, list[PassRecord], dict]:
    """Prune (and fine-tune when asked); returns the model, the pass record and report facts."""
    opts.check()
    start = time.perf_counter()
    import onnx_ir.passes.common as common_passes

    common_passes.NameFixPass()(model)  # layers are named in configs and reports
    overrides, exclude = read_config(opts.config) if opts.config else ({}, [])
    if opts.config:
        _check_layers(model, [*overrides, *exclude], opts.config)
    specs = tensor_specs(model_inputs(model))
    data = held_out = None
    if opts.calibration is not None:
        data = load_calibration(opts.calibration, specs, opts.preprocess)
        if opts.samples is not None:
            data = {name: array[: opts.samples] for name, array in data.items()}
        data, held_out, _ = split_held_out(data)
    float_model = ir.to_proto(model)
    kwargs = {
        "ratio": opts.ratio,
        "flops": opts.flops,
        "importance": opts.importance or ("activation" if data is not None else "l1"),
        "data": data,
        "recover": opts.recovery or ("lstsq" if data is not None else "none"),
        "sensitivity": data is not None and not opts.uniform,
        "min_keep": opts.min_keep,
        "multiple": opts.multiple,
        "overrides": overrides,
        "exclude": exclude,
    }
    try:
        model, records = run_pipeline(model, ["prune_channels"], {"prune_channels": kwargs}, done)
    except PassError as err:
        if isinstance(err.__cause__, PruningError):
            flag = "--prune" if opts.ratio is not None else "--prune-flops"
            raise UsageError(f"{flag}: {err.__cause__}") from err
        raise
    details = dict(records[0].details)
    details.pop("removed", None)  # per-value indices: for tests, too long for a report
    facts = {
        **details,
        "ratio": opts.ratio,
        "flops": opts.flops,
        "calibration": str(opts.calibration) if opts.calibration else None,
        "ratios_from": "uniform" if not kwargs["sensitivity"] else "measured sensitivity",
    }
    if opts.finetune is not None:
        from edgepress.models.finetune import finetune

        inputs, labels = load_eval(opts.finetune, specs, "--finetune")
        try:
            proto, history = finetune(
                ir.to_proto(model), inputs, labels, epochs=opts.finetune_epochs
            )
        except (ValueError, RuntimeError) as err:
            raise UsageError(f"--finetune {opts.finetune}: {err}") from err
        model = ir.from_proto(proto)
        facts["finetune"] = {"data": str(opts.finetune), "samples": int(len(labels)), **history}
    if held_out is not None:
        pruned = ir.to_proto(model)
        facts["fidelity"] = fidelity(
            run_samples(pruned, held_out), run_samples(float_model, held_out)
        )
    if opts.eval_data is not None:
        inputs, labels = load_eval(opts.eval_data, specs)
        facts["eval_top1"] = {
            "samples": int(labels.shape[0]),
            "float": float(np.mean(top1(run_samples(float_model, inputs)) == labels)),
            "pruned": float(np.mean(top1(run_samples(ir.to_proto(model), inputs)) == labels)),
        }
    facts["seconds"] = time.perf_counter() - start
    records[0].details = None
    return model, records, facts
