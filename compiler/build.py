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
from edgepress.compiler.errors import ModelError, VerificationError
from edgepress.compiler.input_values import fix_input_values, fixed_to_json
from edgepress.compiler.inputs import load_npz, random_inputs
from edgepress.compiler.manifest import write_manifest
from edgepress.compiler.model_io import load_model, sha256_file, to_ir, to_proto
from edgepress.compiler.opset_upgrade import upgrade_opset
from edgepress.compiler.pipeline import run_optional_pipeline
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
    Tolerance,
    check_reference_loads,
    compare,
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
    return _build(opts, progress, *loaded)


def _load(opts: BuildOptions):
    """TVM started, the output folder checked, the model loaded with its inputs fixed and
    onnxruntime able to run it: what every build needs before its passes."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    import tvm  # noqa: F401  (its start-up takes seconds: timed on its own)

    timings["start TVM"] = time.perf_counter() - started
    backend = get_backend(opts.target)
    backend.check_options(opts.target_options)
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
    return timings, started, backend, source, source_sha, upgraded, reference_model, fixed, \
        fixed_proto, input_specs


def _build(
    opts: BuildOptions,
    progress: Progress,
    timings: dict,
    started: float,
    backend,
    source: Path,
    source_sha: str,
    upgraded: dict | None,
    reference_model,
    fixed: dict,
    fixed_proto,
    input_specs: list,
) -> BuildResult:
    t = time.perf_counter()
    # The passes are optimizations: one that crashes is skipped, not the end of the build.
    with progress.stage("passes", f"{len(opts.passes)} graph passes"):
        model, pass_records = run_optional_pipeline(fixed_proto, opts.passes, str(source))
    pruning = None
    if opts.prune:
        with progress.stage("pruning"):
            model, records, pruning = prune(model, opts.prune, opts.passes)
        pass_records += records
    quantization = None
    if opts.quantize:
        done = [r.name for r in pass_records]
        with progress.stage("calibration", f"int8 on {opts.quantize.calibration}"):
            model, records, quantization, held_out = quantize(model, opts.quantize, done)
        pass_records += records
    check_shape_operands(model, str(source))
    compressed = ir.to_proto(model)
    # IR 3 lists every initializer among the graph inputs; the passes add initializers (folded
    # constants) that are not: model.onnx is written as IR 4, where that is not required.
    compressed.ir_version = max(compressed.ir_version, 4)
    try:
        onnx.checker.check_model(compressed)
    except onnx.checker.ValidationError as err:
        raise ModelError(
            f"{source}: the model after passes [{', '.join(r.name for r in pass_records)}] "
            "fails the "
            f"ONNX checker: {str(err).splitlines()[0]}"
        ) from err
    output_specs = tensor_specs(list(model.graph.outputs))
    # The artifact's inputs: a pass (remove_unused_inputs) may have dropped some of the source's.
    artifact_specs = tensor_specs(model_inputs(model))
    timings["passes"] = time.perf_counter() - t

    inputs = (
        load_npz(opts.verify_inputs, input_specs, "--verify-inputs")
        if opts.verify_inputs
        else random_inputs(input_specs, opts.seed)
    )
    staging = outdirs.staging_dir(Path(opts.outdir))
    try:
        model_path = staging / "model.onnx"
        onnx.save(compressed, model_path)
        if quantization is not None:
            write_sqnr_plot(
                quantization["layer_sqnr_db"],
                staging / "sqnr.png",
                f"int8 SQNR per layer against float ({quantization['fidelity_samples']} samples)",
            )

        t = time.perf_counter()
        with progress.stage("compile", f"for {backend.name}"):
            compiled = compile_model(
                compressed,
                str(source),
                backend,
                opts.target_options,
                opts.lowering,
                opts.tuning,
                staging,
                stage=progress.stage,
            )
        timings["compile"] = time.perf_counter() - t
        with progress.stage("verify", "against onnxruntime"):

            t = time.perf_counter()
            source_feeds = {**inputs, **fixed}
            reference = run_onnxruntime(reference_model, source_feeds)
            tolerance = opts.tolerance
            compressed_outputs = run_onnxruntime(model_path, inputs)
            # Outputs dequantized from int8 (an int8 build, or a QDQ model given as the source) are
            # checked to within one quantization step: integer kernels round where float does not.
            steps = output_steps(compressed) or None
            # Pruning and int8 change the numbers on purpose (their fidelity is in the report):
            # the artifact must then match the model.onnx it was compiled from.
            changed_by = "int8" if quantization is not None else "pruned" if pruning else None

            def checked(got, want, name, steps=None):
                """compare(); a float build's output outside tolerance is compared again within the
                reference's own fp32 noise (measured once, only when needed)."""
                verification = compare(got, want, tolerance, name, steps)
                if verification.failed and changed_by is None:
                    if "noise" not in measured:
                        measured["noise"] = reference_noise(reference_model, source_feeds)
                    verification = compare(got, want, tolerance, name, steps, measured["noise"])
                return verification

            measured: dict = {}
            if changed_by is None:
                after_passes = checked(
                    compressed_outputs, reference, "onnxruntime on the source model"
                )
                artifact_reference, reference_name = reference, "onnxruntime on the source model"
            else:
                section = "Quantization" if quantization is not None else "Pruning"
                after_passes = not_verified(
                    f"the {changed_by} model differs from the float source by design; "
                    f"see {section}",
                    "onnxruntime on the source model",
                )
                artifact_reference = compressed_outputs
                reference_name = f"onnxruntime on the {changed_by} model.onnx"
            if quantization is not None:
                count = min(a.shape[0] for a in held_out.values())
                with_fixed = {
                    **held_out,
                    **{k: np.broadcast_to(v, (count, *v.shape)) for k, v in fixed.items()},
                }
                quantization["fidelity"] = fidelity(
                    outputs_over(model_path, held_out), outputs_over(reference_model, with_fixed)
                )
            runner = backend.runner(staging)
            if isinstance(runner, str):
                artifact_check = not_verified(runner, reference_name)
            else:
                outputs = runner.run([inputs[s.name] for s in artifact_specs])
                got = {s.name: np.asarray(a) for s, a in zip(output_specs, outputs)}
                artifact_check = checked(got, artifact_reference, reference_name, steps)
                artifact_check.reference += f"; artifact run by {runner.description}"
            timings["verify"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - started

        failed = artifact_check.failed or after_passes.failed
        status = "failed" if failed else ("ok" if artifact_check.ok else artifact_check.status)
        report = {
            "status": status,
            "config": opts.config,
            "source": {"path": str(source), "sha256": source_sha, "opset_upgrade": upgraded},
            "target": {
                "name": backend.name,
                "tvm": compiled.target,
                "description": compiled.description.to_json(),
                "notes": compiled.notes,
            },
            "inputs": [s.to_json() for s in artifact_specs],
            "fixed_inputs": fixed_to_json(fixed),
            "outputs": [s.to_json() for s in output_specs],
            "verification_inputs": str(opts.verify_inputs)
            if opts.verify_inputs
            else f"random, seed {opts.seed}",
            "passes": [r.to_json() for r in pass_records],
            "pruning": pruning,
            "quantization": quantization,
            "int8_compute": compiled.int8,
            "float_conv": compiled.float_conv,
            "tuning": compiled.tuning,
            "kernels": compiled.kernels,
            "verification": {
                "artifact": artifact_check.to_json(),
                "passes": after_passes.to_json(),
            },
            "timings_s": timings,
        }
        report["sizes"] = _file_sizes(staging, source)
        reports.write_json(report, staging / "report.json")
        (staging / "report.md").write_text(reports.render_markdown(report))
        write_manifest(
            staging,
            source=source,
            source_sha256=source_sha,
            target=report["target"],
            inputs=report["inputs"],
            fixed_inputs=report["fixed_inputs"],
            outputs=report["outputs"],
            status=status,
            opset_upgrade=upgraded,
        )
        outdirs.commit(staging, Path(opts.outdir))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = BuildResult(Path(opts.outdir), report)
    if failed:
        broken = [
            f"'{o.name}' ({o.problem})"
            for v in (artifact_check, after_passes)
            for o in v.broken_outputs()
        ]
        raise VerificationError(
            f"{source}: the {backend.name} build is outside tolerance against onnxruntime: "
            f"output {', '.join(broken)}. The artifact and its report are in {opts.outdir}; "
            "loosen with --atol/--rtol/--min-cosine only if the error is expected."
        )
    return result
