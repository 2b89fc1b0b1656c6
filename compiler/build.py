"""One build: load -> fix shapes -> passes -> model.onnx -> TVM -> library -> verify -> report."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from edgepress.backends.options import LoweringOptions, TuningOptions
from edgepress.backends.pipeline import compile_model
from edgepress.backends.targets import get_backend
from edgepress.backends.targets.base import TargetOptions
from edgepress.compiler import outdir as outdirs
from edgepress.compiler import report as reports
from edgepress.compiler.errors import BudgetError, ModelError, VerificationError
from edgepress.compiler.input_values import fix_input_values, fixed_to_json
from edgepress.compiler.inputs import load_npz, random_inputs
from edgepress.compiler.manifest import write_manifest
from edgepress.compiler.model_io import load_model, sha256_file, to_ir, to_proto
from edgepress.compiler.opset_upgrade import upgrade_opset
from edgepress.compiler.pipeline import run_optional_pipeline
from edgepress.compiler.quant_noise import quantization_noise
from edgepress.compiler.progress import Progress, Silent
from edgepress.compiler.prune_step import PruneOptions, prune
from edgepress.compiler.quantize_step import (
    QuantizeOptions,
    fidelity,
    output_steps,
    outputs_over,
    quantize,
)
from edgepress.compiler.shape_operands import check_shape_operands
from edgepress.compiler.sqnr_plot import write_sqnr_plot
from edgepress.compiler.shapes import fix_input_shapes, model_inputs, tensor_specs
from edgepress.compiler.verify import (
    FP32_NOISE,
    INT8_NOISE,
    Tolerance,
    check_reference_loads,
    compare,
    compare_within_noise,
    not_verified,
    reference_noise,
    run_onnxruntime,
)
from edgepress.passes import DEFAULT_PIPELINE

log = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    model: Path
    target: str
    outdir: Path
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_values: dict[str, list[float]] = field(default_factory=dict)  # --input-value
    target_options: TargetOptions = field(default_factory=TargetOptions)
    passes: list[str] = field(default_factory=lambda: list(DEFAULT_PIPELINE))
    verify_inputs: Path | None = None
    seed: int = 0
    tolerance: Tolerance = field(default_factory=Tolerance)
    force: bool = False
    tuning: TuningOptions = field(default_factory=TuningOptions)
    lowering: LoweringOptions = field(default_factory=LoweringOptions)
    # the resolved settings it was made from (compiler/config.py), kept in report.json
    config: dict | None = None
    quantize: QuantizeOptions | None = None
    prune: PruneOptions | None = None


@dataclass
class BuildResult:
    outdir: Path
    report: dict

    @property
    def status(self) -> str:
        return self.report["status"]


def _file_sizes(folder: Path, source: Path) -> dict[str, int]:
    sizes = {"source model": source.stat().st_size}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
    return sizes


def build(opts: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build and verify; the artifact folder is written even when verification fails (its
    report says why), then VerificationError is raised. `progress` hears of each stage."""
    progress = progress or Silent()
    get_backend(opts.target).check_options(opts.target_options)
    with progress.stage("load", str(opts.model)):
        loaded = _load(opts)
    compressed = _compress(opts, loaded, progress)
    inputs = (
        load_npz(opts.verify_inputs, loaded.input_specs, "--verify-inputs")
        if opts.verify_inputs
        else random_inputs(loaded.input_specs, opts.seed)
    )
    timings = loaded.timings
    staging = outdirs.staging_dir(Path(opts.outdir))
    try:
        model_path = staging / "model.onnx"
        onnx.save(compressed.proto, model_path)
        quantization = compressed.quantization
        if quantization is not None:
            write_sqnr_plot(
                quantization["layer_sqnr_db"],
                staging / "sqnr.png",
                f"int8 SQNR per layer against float ({quantization['fidelity_samples']} samples)",
            )
        t = time.perf_counter()
        with progress.stage("compile", f"for {loaded.backend.name}"):
            compiled = compile_model(
                compressed.proto,
                str(loaded.source),
                loaded.backend,
                opts.target_options,
                opts.lowering,
                opts.tuning,
                staging,
                stage=progress.stage,
            )
        timings["compile"] = time.perf_counter() - t
        # runtime/ reads the signature from manifest.json: a provisional one until verified
        target = {"name": loaded.backend.name, "tvm": compiled.target}
        _write_manifest(staging, loaded, compressed, target, "unverified")
        t = time.perf_counter()
        with progress.stage("verify", "against onnxruntime"):
            checks = _verify(loaded, compressed, staging, inputs)
        timings["verify"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - loaded.started
        report = _report(opts, loaded, compressed, compiled, checks, staging)
        reports.write_json(report, staging / "report.json")
        (staging / "report.md").write_text(reports.render_markdown(report))
        _write_manifest(staging, loaded, compressed, report["target"], report["status"])
        outdirs.commit(staging, Path(opts.outdir))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    missed = below_floor(compressed.quantization)
    if report["status"] == "failed" and missed and not any(c.failed for c in checks):
        raise BudgetError(
            f"{loaded.source}: {missed}. The artifact and its report are in {opts.outdir}; "
            "calibrate on more representative samples, or lower --fidelity-floor (0 turns it "
            "off)."
        )
    if report["status"] == "failed":
        broken = [f"'{o.name}' ({o.problem})" for v in checks for o in v.broken_outputs()]
        raise VerificationError(
            f"{loaded.source}: the {loaded.backend.name} build is outside tolerance against "
            f"onnxruntime: output {', '.join(broken)}. The artifact and its report are in "
            f"{opts.outdir}; loosen with --atol/--rtol/--min-cosine only if the error is expected."
        )
    return BuildResult(Path(opts.outdir), report)


@dataclass
class _Loaded:
    """The source model with its inputs fixed, and what the build needs to know of it."""

    timings: dict[str, float]
    started: float
    backend: object
    source: Path
    source_sha: str
    upgraded: dict | None  # the opset conversion, if any (compiler/opset_upgrade.py)
    reference_model: object  # what onnxruntime runs as the reference: a path or bytes
    fixed: dict  # --input-value arrays
    fixed_proto: onnx.ModelProto
    input_specs: list
    tolerance: Tolerance


@dataclass
class _Compressed:
    """The model after passes, pruning and quantization (model.onnx)."""

    model: ir.Model
    proto: onnx.ModelProto
    pass_records: list
    pruning: dict | None
    quantization: dict | None
    held_out: dict | None  # held-out calibration samples (int8 fidelity)
    held_reference: dict | None  # the float model int8 started from, on them
    output_specs: list
    artifact_specs: list  # the artifact's inputs (remove_unused_inputs may drop some)

    @property
    def changed_by(self) -> str | None:
        """Pruning and int8 change the numbers on purpose (their fidelity is in the report)."""
        return "int8" if self.quantization is not None else "pruned" if self.pruning else None


def _load(opts: BuildOptions) -> _Loaded:
    """TVM started, the output folder checked, the model loaded with its inputs fixed and
    onnxruntime able to run it: what every build needs before its passes."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    import tvm  # noqa: F401  (its start-up takes seconds: timed on its own)

    timings["start TVM"] = time.perf_counter() - started
    backend = get_backend(opts.target)
    source = Path(opts.model)
    given = [source] + ([Path(opts.verify_inputs)] if opts.verify_inputs else [])
    for step in (opts.quantize, opts.prune):
        for path in (step.calibration, step.eval_data) if step else ():
            if path is not None:
                given.append(Path(path))
    if opts.prune:
        given += [Path(p) for p in (opts.prune.config, opts.prune.finetune) if p is not None]
    outdirs.check_outdir(Path(opts.outdir), given, opts.force)

    t = time.perf_counter()
    proto = load_model(source)
    source_sha = sha256_file(source)
    proto, upgraded = upgrade_opset(proto, str(source))
    # What onnxruntime runs as the reference: the source file, or its conversion to an opset
    # onnxruntime still has kernels for.
    converted = upgraded is not None and upgraded["reference"] == "converted"
    reference_model = proto.SerializeToString() if converted else source
    model = to_ir(proto, source)
    fixed = fix_input_values(model, opts.input_values, opts.input_shapes, str(source))
    shapes = {k: v for k, v in opts.input_shapes.items() if k not in fixed}
    fix_input_shapes(model, shapes, str(source))
    fixed_proto = to_proto(model, source, "with its inputs fixed")
    check_reference_loads(fixed_proto, str(source))
    input_specs = tensor_specs(model_inputs(model))
    timings["load"] = time.perf_counter() - t
    return _Loaded(
        timings, started, backend, source, source_sha, upgraded, reference_model, fixed,
        fixed_proto, input_specs, opts.tolerance,
    )


def _compress(opts: BuildOptions, loaded: _Loaded, progress: Progress) -> _Compressed:
    """Passes, then pruning, then int8; the result checked as ONNX (model.onnx)."""
    t = time.perf_counter()
    source = loaded.source
    # The passes are optimizations: one that crashes is skipped, not the end of the build.
    with progress.stage("passes", f"{len(opts.passes)} graph passes"):
        model, pass_records = run_optional_pipeline(loaded.fixed_proto, opts.passes, str(source))
    pruning = quantization = held_out = held_reference = None
    if opts.prune:
        with progress.stage("pruning"):
            model, records, pruning = prune(model, opts.prune, opts.passes)
        pass_records += records
    if opts.quantize:
        done = [r.name for r in pass_records]
        with progress.stage("calibration", f"int8 on {opts.quantize.calibration}"):
            model, records, quantization, held_out, held_reference = quantize(
                model, opts.quantize, done
            )
        pass_records += records
    check_shape_operands(model, str(source))
    proto = ir.to_proto(model)
    # IR 3 lists every initializer among the graph inputs; the passes add initializers (folded
    # constants) that are not: model.onnx is written as IR 4, where that is not required.
    proto.ir_version = max(proto.ir_version, 4)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ModelError(
            f"{source}: the model after passes [{', '.join(r.name for r in pass_records)}] "
            f"fails the ONNX checker: {str(err).splitlines()[0]}"
        ) from err
    loaded.timings["passes"] = time.perf_counter() - t
    return _Compressed(
        model,
        proto,
        pass_records,
        pruning,
        quantization,
        held_out,
        held_reference,
        tensor_specs(list(model.graph.outputs)),
        tensor_specs(model_inputs(model)),
    )


def _write_manifest(staging: Path, loaded: _Loaded, compressed: _Compressed, target, status):
    write_manifest(
        staging,
        source=loaded.source,
        source_sha256=loaded.source_sha,
        target=target,
        inputs=[s.to_json() for s in compressed.artifact_specs],
        fixed_inputs=fixed_to_json(loaded.fixed),
        outputs=[s.to_json() for s in compressed.output_specs],
        status=status,
        opset_upgrade=loaded.upgraded,
    )


def _verify(loaded: _Loaded, compressed: _Compressed, staging: Path, inputs: dict):
    """(the artifact against its reference, model.onnx against the source): the reference is
    onnxruntime on the source model, or on model.onnx where pruning or int8 changed the
    numbers on purpose. An int8 build's fidelity to the float model goes into its report."""
    model_path = staging / "model.onnx"
    source_feeds = {**inputs, **loaded.fixed}
    reference = run_onnxruntime(loaded.reference_model, source_feeds)
    compressed_outputs = run_onnxruntime(model_path, inputs)
    # Outputs dequantized from int8 (an int8 build, or a QDQ model given as the source) are
    # checked to within one quantization step: integer kernels round where float does not.
    steps = output_steps(compressed.proto) or None
    changed_by = compressed.changed_by
    measured: dict = {}

    def noise() -> dict:
        """The reference's own noise, measured once: fp32 noise for a float build, one-step
        rounding noise of model.onnx for an int8 build (compiler/quant_noise.py)."""
        if "noise" not in measured:
            if changed_by == "int8":
                measured["noise"] = quantization_noise(compressed.proto, inputs)
            else:
                measured["noise"] = reference_noise(loaded.reference_model, source_feeds)
        return measured["noise"]

    def checked(got, want, name, steps=None):
        """compare(), then within the reference's own noise (not for a pruned build, whose
        model.onnx differs from the source by design)."""
        if changed_by == "pruned":
            return compare(got, want, loaded.tolerance, name, steps)
        source = INT8_NOISE if changed_by == "int8" else FP32_NOISE
        return compare_within_noise(got, want, loaded.tolerance, name, steps, noise, source)

    if changed_by is None:
        after_passes = checked(compressed_outputs, reference, "onnxruntime on the source model")
        artifact_reference, reference_name = reference, "onnxruntime on the source model"
    else:
        section = "Quantization" if changed_by == "int8" else "Pruning"
        after_passes = not_verified(
            f"the {changed_by} model differs from the float source by design; see {section}",
            "onnxruntime on the source model",
        )
        artifact_reference = compressed_outputs
        reference_name = f"onnxruntime on the {changed_by} model.onnx"
    if compressed.quantization is not None:
        held_out = compressed.held_out
        count = min(a.shape[0] for a in held_out.values())
        with_fixed = {
            **held_out,
            **{k: np.broadcast_to(v, (count, *v.shape)) for k, v in loaded.fixed.items()},
        }
        compressed.quantization["fidelity"] = fidelity(
            outputs_over(model_path, held_out),
            outputs_over(loaded.reference_model, with_fixed),
            compressed.quantization.get("output_scales"),
        )
    runner = loaded.backend.runner(staging)
    if isinstance(runner, str):
        return not_verified(runner, reference_name), after_passes
    outputs = runner.run([inputs[s.name] for s in compressed.artifact_specs])
    got = {s.name: np.asarray(a) for s, a in zip(compressed.output_specs, outputs)}
    artifact_check = checked(got, artifact_reference, reference_name, steps)
    artifact_check.reference += f"; artifact run by {runner.description}"
    if compressed.quantization is not None:
        compressed.quantization["artifact_fidelity"] = _artifact_fidelity(
            runner, compressed, compressed.held_out, compressed.held_reference
        )
    return artifact_check, after_passes


def _artifact_fidelity(runner, compressed: _Compressed, held_out: dict, reference: dict):
    """The artifact's own fidelity on the held-out samples to the float model int8 started from
    (the source after the passes and any pruning, whose loss is by design and in its own
    section): its integer kernels round where onnxruntime running model.onnx does not, so this
    is what int8 costs the user (and what the fidelity floor is held to)."""
    specs = compressed.artifact_specs
    if any(s.name not in held_out for s in specs):
        return None
    count = min(held_out[s.name].shape[0] for s in specs)
    runs = [runner.run([held_out[s.name][i] for s in specs]) for i in range(count)]
    got = {
        s.name: np.stack([np.asarray(r[j]) for r in runs])
        for j, s in enumerate(compressed.output_specs)
    }
    return fidelity(
        {k: got[k] for k in reference if k in got},
        reference,
        compressed.quantization.get("output_scales"),
    )


def below_floor(quantization: dict | None) -> str | None:
    """Why an int8 artifact misses its fidelity floor on the held-out samples, or None."""
    floor = (quantization or {}).get("fidelity_floor")
    rows = (quantization or {}).get("artifact_fidelity")
    if not floor or not rows:
        return None
    least = min(r["min_cosine"] for r in rows)
    if least >= floor:
        return None
    reached = min(r["min_cosine"] for r in quantization.get("fidelity") or rows)
    return (
        f"the int8 artifact keeps a least cosine of {least:.4f} against the float model on "
        f"{quantization['fidelity_samples']} held-out sample(s), under the fidelity floor "
        f"{floor:g} (model.onnx in onnxruntime, against the source: {reached:.4f}; the integer "
        "kernels round differently)"
    )


def _report(opts, loaded: _Loaded, compressed: _Compressed, compiled, checks, staging) -> dict:
    artifact_check, after_passes = checks
    failed = artifact_check.failed or after_passes.failed
    failed = failed or below_floor(compressed.quantization) is not None
    status = "failed" if failed else ("ok" if artifact_check.ok else artifact_check.status)
    report = {
        "status": status,
        "config": opts.config,
        "source": {
            "path": str(loaded.source),
            "sha256": loaded.source_sha,
            "opset_upgrade": loaded.upgraded,
        },
        "target": {
            "name": loaded.backend.name,
            "tvm": compiled.target,
            "description": compiled.description.to_json(),
            "notes": compiled.notes,
        },
        "inputs": [s.to_json() for s in compressed.artifact_specs],
        "fixed_inputs": fixed_to_json(loaded.fixed),
        "outputs": [s.to_json() for s in compressed.output_specs],
        "verification_inputs": str(opts.verify_inputs)
        if opts.verify_inputs
        else f"random, seed {opts.seed}",
        "passes": [r.to_json() for r in compressed.pass_records],
        "pruning": compressed.pruning,
        "quantization": compressed.quantization,
        "int8_compute": compiled.int8,
        "float_conv": compiled.float_conv,
        "tuning": compiled.tuning,
        "kernels": compiled.kernels,
        "verification": {
            "artifact": artifact_check.to_json(),
            "passes": after_passes.to_json(),
        },
        "timings_s": loaded.timings,
    }
    report["sizes"] = _file_sizes(staging, loaded.source)
    return report
