"""`compress`: the command line. Errors are caught here once and become a message and an exit code.

compress MODEL.onnx --target TARGET -o OUTDIR [--input-shape NAME=1,3,224,224 ...]
compress run OUTDIR --inputs in.npz -o out.npz
compress bench OUTDIR [--threads N] [--repeat N] [--json]
compress inspect MODEL.onnx
compress example NAME -o DIR | --list
compress passes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path

from edgepress.backends.runtime.threads import size_pool_to_all_cores
from edgepress.compiler import __version__
from edgepress.compiler.errors import EdgepressError, UsageError

log = logging.getLogger("edgepress")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def _build_parser() -> argparse.ArgumentParser:
    from edgepress.backends.options import FloatConv, Int8Compute
    from edgepress.backends.targets import TARGETS
    from edgepress.compiler.verify import DEFAULT_ATOL, DEFAULT_MIN_COSINE, DEFAULT_RTOL

    p = _Parser(prog="compress", description="Compile an ONNX model to a verified native artifact.")
    p.add_argument("model", type=Path, help="the ONNX model (never modified)")
    p.add_argument(
        "--target", required=True, metavar="TARGET", help=f"one of: {', '.join(TARGETS)}"
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUTDIR",
        help="artifact folder to create",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="fix an input's shape (repeat for each dynamic input)",
    )
    p.add_argument(
        "--input-value",
        action="append",
        default=[],
        metavar="NAME=V[,V...]",
        help="fix an input's value at build time (a sample rate, a flag): it becomes a constant, "
        "what depends on it folds, and the artifact no longer takes it",
    )
    p.add_argument("--mcpu", help="CPU to generate code for (x86_64: default this machine's)")
    p.add_argument("--mattr", default="", help="extra CPU features, e.g. +dotprod,+i8mm (arm64)")
    p.add_argument("--arch", default="sm_80", help="CUDA architecture (cuda target)")
    p.add_argument(
        "--num-cores",
        type=int,
        metavar="N",
        help="cores the code is parallelized for (x86_64: default this machine's; arm64: 4)",
    )
    p.add_argument("--passes", help="comma-separated pass list (see 'compress passes')")
    p.add_argument(
        "--verify-inputs",
        type=Path,
        metavar="X.npz",
        help="verification inputs, one array per model input (default: random)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE)
    p.add_argument(
        "--tune-trials",
        type=int,
        default=0,
        metavar="N",
        help="MetaSchedule trials for the tasks the tuning database lacks",
    )
    p.add_argument("--tune-minutes", type=float, metavar="M", help="tuning time budget")
    p.add_argument(
        "--tuning-db",
        type=Path,
        metavar="PATH",
        help="tuning database folder, for one target (default: a folder per target "
        "under $EDGEPRESS_TUNING_DB, else under the cache)",
    )
    p.add_argument(
        "--retune",
        action="store_true",
        help="with --tune-trials/--tune-minutes: tune tasks that already have records too "
        "(the database keeps the best record of every run)",
    )
    p.add_argument(
        "--untuned",
        choices=("sampled", "loops"),
        default="sampled",
        help="CPU kernels no tuning record covers: one untimed sample of MetaSchedule's default "
        "schedules (default), or TVM's plain loops (faster build, much slower code)",
    )
    p.add_argument(
        "--winograd",
        action="store_true",
        help="CPU targets: 3x3 stride-1 convolutions as Winograd F(4x4, 3x3) (4x fewer "
        "multiplications; new kernels, so records tuned for direct convolution do not apply)",
    )
    p.add_argument(
        "--float-conv",
        choices=[c.value for c in FloatConv],
        default="edgepress",
        help="CPU targets: float Conv/Gemm/MatMul as edgepress's register-tiled NHWC kernels, "
        "3x3 stride-1 convs with enough 2x2 tiles as Winograd F(2x2, 3x3) (default); the same "
        "kernels without Winograd (direct); or TVM's own NCHW kernels (tvm)",
    )
    p.add_argument(
        "--no-shipped-records",
        action="store_true",
        help="do not apply the tuning records shipped with edgepress for this target",
    )
    q = p.add_argument_group("quantization")
    q.add_argument("--quantize", choices=("int8",), help="post-training quantization")
    q.add_argument(
        "--int8-compute",
        choices=[c.value for c in Int8Compute],
        default="integer",
        help="how a QDQ model's Conv/Gemm/MatMul are compiled: int8 x int8 -> int32 kernels "
        "with int8 weights (default; CPU targets), or TVM's own float arithmetic with rounding",
    )
    q.add_argument(
        "--calibration",
        type=Path,
        metavar="PATH",
        help="calibration data for --quantize and --prune: a folder of images, an .npz (an array "
        "per input, leading sample axis), or a folder of .npz/.npy samples",
    )
    q.add_argument(
        "--calibration-method",
        default="minmax",
        help="minmax (default), percentile, entropy or mse",
    )
    q.add_argument(
        "--percentile",
        type=float,
        default=99.999,
        help="for --calibration-method percentile (default 99.999)",
    )
    q.add_argument("--calibration-samples", type=int, metavar="N", help="use at most N samples")
    q.add_argument(
        "--activations",
        choices=("uint8", "int8"),
        default="uint8",
        help="activation type (weights are always int8, symmetric, per channel)",
    )
    q.add_argument(
        "--resize",
        type=int,
        metavar="PIXELS",
        help="images: shorter side before the center crop (default: the input's larger side)",
    )
    q.add_argument(
        "--mean",
        metavar="R,G,B",
        help="images: per-channel mean after scaling (default ImageNet's 0.485,0.456,0.406)",
    )
    q.add_argument("--std", metavar="R,G,B", help="images: per-channel std (default ImageNet's)")
    q.add_argument(
        "--scale",
        type=float,
        default=255.0,
        help="images: divide pixels by this first (default 255)",
    )
    q.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        help="images: the input's layout (default: NCHW when dim 1 is 1 or 3)",
    )
    q.add_argument("--channel-order", choices=("RGB", "BGR"), default="RGB")
    q.add_argument(
        "--equalize",
        action="store_true",
        help="cross-layer equalization before calibration (Conv -> Relu -> Conv channel "
        "rescaling, float outputs unchanged; for depthwise-separable nets)",
    )
    q.add_argument(
        "--bias-correction",
        action="store_true",
        help="empirical bias correction: each layer's mean int8 output shift, measured on the "
        "calibration data, removed from its bias (helps where clipping skews outputs)",
    )
    q.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="X",
        help="keep the most sensitive layers in float until the drop is at most X: top-1 "
        "points with --eval, else --fidelity-metric on held-out calibration samples; exit 7 "
        "when it cannot be met",
    )
    q.add_argument(
        "--eval",
        type=Path,
        metavar="DATA.npz",
        help="labelled evaluation data: an array per input (leading sample axis) and 'label'",
    )
    q.add_argument(
        "--fidelity-metric",
        choices=("cosine", "top1", "max-error"),
        default="cosine",
        help="without --eval, what --max-accuracy-drop measures: 1 - cosine (default), top-1 "
        "disagreement in points, or max abs error, against the float model",
    )
    r = p.add_argument_group("pruning (structured: whole channels; before --quantize)")
    r.add_argument(
        "--prune",
        type=float,
        metavar="RATIO",
        help="remove this fraction of the prunable channels",
    )
    r.add_argument(
        "--prune-flops",
        type=float,
        metavar="F",
        help="instead of --prune: remove channels until at most this fraction of the MACs is left",
    )
    r.add_argument(
        "--prune-importance",
        help="how channels are ranked: l1, l2 (filter norms), bn (BatchNorm scale, needs BN "
        "left unfolded) or activation (contribution on --calibration data; the default with it)",
    )
    r.add_argument(
        "--prune-recovery",
        help="none, bias (compensate the mean of removed channels) or lstsq (least-squares "
        "reconstruction of each layer from --calibration data; the default with it)",
    )
    r.add_argument(
        "--prune-uniform",
        action="store_true",
        help="the same ratio in every channel group (default with --calibration: ratios chosen "
        "from each group's measured sensitivity)",
    )
    r.add_argument(
        "--prune-min-keep",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="every channel group keeps at least this fraction (default 0.1)",
    )
    r.add_argument(
        "--prune-multiple",
        type=int,
        default=8,
        metavar="N",
        help="round kept channel counts up to a multiple of N in groups of 8N or more (default 8)",
    )
    r.add_argument(
        "--prune-config",
        type=Path,
        metavar="FILE",
        help="JSON or TOML: 'exclude' (layer names never pruned) and 'layers' (name -> ratio)",
    )
    r.add_argument(
        "--finetune",
        type=Path,
        metavar="DATA.npz",
        help="fine-tune the pruned model in PyTorch on labelled data (an array per input and "
        "'label'); needs torch",
    )
    r.add_argument("--finetune-epochs", type=int, default=10, metavar="N")
    p.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    _common(p)
    return p


def _floats(flag: str, text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None:
        return default
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected numbers separated by commas") from None


def _preprocess(args: argparse.Namespace):
    from edgepress.compiler.calibration_data import Preprocess

    defaults = Preprocess()
    return Preprocess(
        resize=args.resize,
        mean=_floats("--mean", args.mean, defaults.mean),
        std=_floats("--std", args.std, defaults.std),
        scale=args.scale,
        layout=args.layout,
        channel_order=args.channel_order,
    )


def _prune_options(args: argparse.Namespace):
    from edgepress.compiler.prune_step import PruneOptions

    if args.prune is None and args.prune_flops is None:
        flags = ("prune_importance", "prune_recovery", "prune_config", "finetune")
        _refuse_without(args, flags, "--prune or --prune-flops")
        return None
    options = PruneOptions(
        ratio=args.prune,
        flops=args.prune_flops,
        importance=args.prune_importance,
        recovery=args.prune_recovery,
        uniform=args.prune_uniform,
        min_keep=args.prune_min_keep,
        multiple=args.prune_multiple,
        config=args.prune_config,
        calibration=args.calibration,
        preprocess=_preprocess(args),
        samples=args.calibration_samples,
        eval_data=args.eval,
        finetune=args.finetune,
        finetune_epochs=args.finetune_epochs,
    )
    options.check()
    return options


def _refuse_without(args: argparse.Namespace, flags: tuple[str, ...], needed: str) -> None:
    """A flag that only means something with another option is an error without it."""
    for flag in flags:
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} is given without {needed}")


def _quantize_options(args: argparse.Namespace):
    from edgepress.compiler.quantize_step import QuantizeOptions

    pruning = args.prune is not None or args.prune_flops is not None
    if args.quantize is None:
        shared = () if pruning else ("calibration", "eval")  # pruning reads them too
        _refuse_without(args, (*shared, "max_accuracy_drop"), "--quantize int8")
        return None
    if args.calibration is None:
        raise UsageError("--quantize int8 needs --calibration PATH (images, .npz or .npy files)")
    options = QuantizeOptions(
        calibration=args.calibration,
        method=args.calibration_method,
        activations=args.activations,
        percentile=args.percentile,
        samples=args.calibration_samples,
        preprocess=_preprocess(args),
        max_drop=args.max_accuracy_drop,
        eval_data=args.eval,
        fidelity_metric=args.fidelity_metric,
        bias_correction=args.bias_correction,
        equalize=args.equalize,
    )
    options.check()
    return options


def cmd_build(argv: list[str]) -> int:
    from edgepress.backends.options import LoweringOptions, TuningOptions
    from edgepress.backends.targets.base import TargetOptions
    from edgepress.compiler.build import BuildOptions, build
    from edgepress.compiler.errors import VerificationError
    from edgepress.compiler.input_values import parse_input_values
    from edgepress.compiler.pipeline import parse_pass_list
    from edgepress.compiler.shapes import parse_input_shapes
    from edgepress.compiler.verify import Tolerance
    from edgepress.passes import DEFAULT_PIPELINE

    args = _build_parser().parse_args(argv)
    _configure_logging(args)
    for flag in ("atol", "rtol"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must not be negative")
    if not -1.0 <= args.min_cosine <= 1.0:
        raise UsageError("--min-cosine must lie in [-1, 1]")
    if args.num_cores is not None and args.num_cores < 1:
        raise UsageError("--num-cores must be at least 1")
    if args.tune_trials < 0 or (args.tune_minutes is not None and args.tune_minutes <= 0):
        raise UsageError("--tune-trials must not be negative and --tune-minutes must be positive")
    opts = BuildOptions(
        model=args.model,
        target=args.target,
        outdir=args.output,
        input_shapes=parse_input_shapes(args.input_shape),
        input_values=parse_input_values(args.input_value),
        target_options=TargetOptions(
            mcpu=args.mcpu,
            arch=args.arch,
            mattr=tuple(a for a in args.mattr.split(",") if a),
            num_cores=args.num_cores,
        ),
        passes=parse_pass_list(args.passes) if args.passes is not None else list(DEFAULT_PIPELINE),
        verify_inputs=args.verify_inputs,
        seed=args.seed,
        tolerance=Tolerance(args.atol, args.rtol, args.min_cosine),
        force=args.force,
        quantize=_quantize_options(args),
        prune=_prune_options(args),
        tuning=TuningOptions(
            args.tune_trials,
            args.tune_minutes,
            args.tuning_db,
            shipped=not args.no_shipped_records,
            retune=args.retune,
        ),
        lowering=LoweringOptions(
            int8_compute=args.int8_compute,
            float_conv=args.float_conv,
            winograd=args.winograd,
            untuned=args.untuned,
        ),
    )
    try:
        result = build(opts)
    except VerificationError:
        if not args.quiet and (args.output / "report.md").exists():
            print((args.output / "report.md").read_text())
        raise
    if not args.quiet:
        print((result.outdir / "report.md").read_text())
    return 0


def cmd_run(argv: list[str]) -> int:
    import numpy as np

    from edgepress.backends.targets import get_backend
    from edgepress.compiler.inputs import load_npz
    from edgepress.compiler.manifest import read_manifest
    from edgepress.compiler.shapes import TensorSpec

    p = _Parser(prog="compress run", description="Run a built artifact on inputs from an .npz.")
    p.add_argument("artifact", type=Path, metavar="OUTDIR")
    p.add_argument("--inputs", required=True, type=Path, metavar="IN.npz")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.npz")
    p.add_argument("--force", action="store_true", help="replace an existing OUT.npz")
    _common(p)
    args = p.parse_args(argv)
    _configure_logging(args)
    manifest = read_manifest(args.artifact)
    specs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
    inputs = load_npz(args.inputs, specs, "--inputs")
    out = args.output
    if out.resolve() == args.inputs.resolve():
        raise UsageError(f"-o {out}: would overwrite the inputs file")
    if out.exists() and not args.force:
        raise UsageError(f"-o {out}: exists; pass --force to replace it")
    backend = get_backend(manifest["target"]["name"])
    runner = backend.runner(args.artifact)
    if isinstance(runner, str):
        raise UsageError(f"{args.artifact}: cannot run a {backend.name} artifact here: {runner}")
    outputs = runner.run([inputs[s.name] for s in specs])
    names = [o["name"] for o in manifest["outputs"]]
    with open(out, "wb") as f:
        np.savez(f, **dict(zip(names, outputs)))
    if not args.quiet:
        for name, array in zip(names, outputs):
            print(f"{name}: {array.dtype} {list(array.shape)}")
        print(f"wrote {out} ({runner.description})")
    return 0


def cmd_bench(argv: list[str]) -> int:
    from edgepress.compiler.bench import bench, profile_kernels, record_in_report

    p = _Parser(
        prog="compress bench",
        description="Time an artifact against onnxruntime, same inputs and threads.",
    )
    p.add_argument("artifact", type=Path, metavar="OUTDIR")
    p.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
    p.add_argument("--repeat", type=int, default=50, help="timed runs of each (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also time each kernel: share of the run, GFLOP/s, fraction of the CPU's peak",
    )
    _common(p)
    args = p.parse_args(argv)
    _configure_logging(args)
    result = bench(args.artifact, threads=args.threads, repeat=args.repeat, warmup=args.warmup)
    profile = (
        profile_kernels(args.artifact, threads=args.threads, repeat=max(1, args.repeat // 5))
        if args.profile
        else None
    )
    record_in_report(args.artifact, result, profile)
    if args.json:
        out = result.to_json()
        if profile is not None:
            out["kernel_profile"] = {k: v for k, v in profile.items() if k != "markdown"}
        print(json.dumps(out))
    elif not args.quiet:
        print(
            f"artifact     {result.artifact_ms:10.3f} ms (p90 {result.artifact_p90_ms:.3f})\n"
            f"onnxruntime  {result.onnxruntime_ms:10.3f} ms (p90 {result.onnxruntime_p90_ms:.3f})\n"
            f"speedup      {result.speedup:10.3f}x (onnxruntime / artifact; {result.threads} "
            f"thread(s), median of {result.repeat})"
        )
        if result.onnxruntime_int8_ms is not None:
            print(
                f"onnxruntime on the int8 model.onnx {result.onnxruntime_int8_ms:.3f} ms: "
                f"artifact speedup against it {result.speedup_vs_onnxruntime_int8:.3f}x"
            )
        if profile is not None:
            print("\n" + profile["markdown"])
    return 0


def cmd_inspect(argv: list[str]) -> int:
    from edgepress.compiler.inspect_model import render, summarize
    from edgepress.compiler.shapes import parse_input_shapes

    p = _Parser(prog="compress inspect", description="Describe an ONNX model.")
    p.add_argument("model", type=Path)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)
    args = p.parse_args(argv)
    _configure_logging(args)
    info = summarize(args.model, parse_input_shapes(args.input_shape))
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def cmd_example(argv: list[str]) -> int:
    from edgepress.models import EXAMPLES

    p = _Parser(prog="compress example", description="Write a bundled reference model.")
    p.add_argument("name", nargs="?", help=f"one of: {', '.join(EXAMPLES)}")
    p.add_argument("-o", "--output", type=Path, metavar="DIR")
    p.add_argument("--list", action="store_true", help="list the examples")
    p.add_argument("--force", action="store_true", help="replace files already in DIR")
    _common(p)
    args = p.parse_args(argv)
    _configure_logging(args)
    if args.list:
        for example in EXAMPLES.values():
            print(f"{example.name:<12} {example.summary}")
        return 0
    if args.name is None or args.output is None:
        raise UsageError("compress example: give NAME and -o DIR, or --list")
    if args.name not in EXAMPLES:
        raise UsageError(
            f"compress example: unknown example {args.name!r}; known: {', '.join(EXAMPLES)}"
        )
    target = args.output / f"{args.name}.onnx"
    if target.exists() and not args.force:
        raise UsageError(f"-o {args.output}: {target} exists; pass --force to replace it")
    args.output.mkdir(parents=True, exist_ok=True)
    for path in EXAMPLES[args.name].write(args.output):
        if not args.quiet:
            print(path)
    return 0


def cmd_passes(argv: list[str]) -> int:
    from edgepress.passes import DEFAULT_PIPELINE, PASSES

    p = _Parser(prog="compress passes", description="List the graph passes.")
    _common(p)
    p.parse_args(argv)
    for name, fn in PASSES.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        default = " (default)" if name in DEFAULT_PIPELINE else ""
        print(f"{name:<20} {doc}{default}")
    return 0


COMMANDS = {
    "build": cmd_build,
    "run": cmd_run,
    "bench": cmd_bench,
    "inspect": cmd_inspect,
    "example": cmd_example,
    "passes": cmd_passes,
}


def _configure_logging(args: argparse.Namespace) -> None:
    # Libraries (onnxscript, TVM) log chattily at INFO: only edgepress's own progress shows.
    ours = logging.DEBUG if args.debug else (logging.ERROR if args.quiet else logging.INFO)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("edgepress").setLevel(ours)
    # MetaSchedule prints a task table per round at INFO: the progress bar says enough.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(
        logging.DEBUG if args.debug else logging.WARNING
    )
    # onnx-ir logs a failed shape inference as a warning with its traceback; the build goes on
    # without the shapes, and what it cannot do then is reported as an error of its own.
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if args.debug else logging.ERROR)


def _print_help() -> None:
    print(
        textwrap.dedent(f"""\
        edgepress {__version__}: compile ONNX models to verified native artifacts.

        usage:
          compress MODEL.onnx --target {{x86_64,arm64,cuda}} -o OUTDIR [--input-shape NAME=D1,...]
          compress run OUTDIR --inputs IN.npz -o OUT.npz
          compress bench OUTDIR [--threads N] [--repeat N] [--json]
          compress inspect MODEL.onnx [--input-shape NAME=D1,...] [--json]
          compress example NAME -o DIR | compress example --list
          compress passes

        'compress build --help' (or any subcommand with --help) shows its options.""")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    size_pool_to_all_cores()
    if not argv or argv[0] in ("-h", "--help"):
        _print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"edgepress {__version__}")
        return 0
    command, rest = (argv[0], argv[1:]) if argv[0] in COMMANDS else ("build", argv)
    try:
        return COMMANDS[command](rest)
    except EdgepressError as err:
        if debug:
            log.exception("failed")
        print(f"compress: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("compress: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in edgepress or a library: say so, keep the trace on --debug
        if debug:
            raise
        print(
            f"compress: internal error: {type(err).__name__}: {err} (run with --debug for the "
            "traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
