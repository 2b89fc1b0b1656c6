"""`compress`: the command line, a thin layer over edgepress's API (compiler/api.py). Errors are
caught here once and become a message and an exit code.

compress build MODEL.onnx --target TARGET -o OUTDIR [--config build.toml] [...]
compress MODEL.onnx --target TARGET -o OUTDIR      (the same: build is the default command)
compress run OUTDIR --inputs in.npz -o out.npz
compress bench OUTDIR [--threads N] [--repeat N] [--json] [--profile] [--device URL]
compress verify OUTDIR [--device URL] [--inputs in.npz]
compress inspect MODEL.onnx
compress example NAME -o DIR | --list
compress passes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edgepress.backends.runtime.threads import size_pool_to_all_cores
from edgepress.compiler import __version__
from edgepress.compiler.errors import EdgepressError, UsageError

log = logging.getLogger("edgepress")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help that shows each flag's default where it has one (choices show in the usage)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and default not in (None, False, [], "", argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress: a build prints only its summary line, other commands only errors",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the full report after a build"
    )


COMMON = ("debug", "quiet", "verbose")


def _build_arguments(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    from edgepress.compiler import options

    options.add_to_parser(parser, suppress_defaults=suppress_defaults)


def cmd_build(args: argparse.Namespace, argv: list[str]) -> int:
    from edgepress.compiler import api, config
    from edgepress.compiler.errors import VerificationError
    from edgepress.compiler.progress import Console

    # What the command line gave, apart from the defaults: it overrides the config file.
    explicit = _Parser(prog="compress build", add_help=False)
    _build_arguments(explicit, suppress_defaults=True)
    _common(explicit)
    given = vars(explicit.parse_args(argv))
    for key in COMMON:
        given.pop(key, None)
    # an absent optional positional is set to the SUPPRESS marker itself (argparse's way)
    given = {k: v for k, v in given.items() if str(v) != argparse.SUPPRESS}
    from_file = config.load_config(args.config) if args.config else {}
    given.pop("config", None)
    settings = config.resolve(from_file, config.check(given, "the command line"))
    progress = None if args.quiet else Console()
    try:
        artifact = api.build_from_settings(settings, progress=progress)
    except VerificationError:
        if (Path(settings["output"]) / "report.json").is_file():
            _print_summary(api.load(settings["output"]), args.verbose)
        raise
    _print_summary(artifact, args.verbose)
    return 0


def _print_summary(artifact, verbose: bool) -> None:
    if verbose:
        print((artifact.path / "report.md").read_text())
    print(artifact.summary())


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    import numpy as np

    from edgepress.compiler import api
    from edgepress.compiler.inputs import load_npz

    artifact = api.load(args.artifact)
    inputs = load_npz(args.inputs, artifact.input_specs, "--inputs")
    out = args.output
    if out.resolve() == args.inputs.resolve():
        raise UsageError(f"-o {out}: would overwrite the inputs file")
    if out.exists() and not args.force:
        raise UsageError(f"-o {out}: exists; pass --force to replace it")
    outputs, description = artifact.run_with(inputs)
    with open(out, "wb") as f:
        np.savez(f, **outputs)
    if not args.quiet:
        for name, array in outputs.items():
            print(f"{name}: {array.dtype} {list(array.shape)}")
        print(f"wrote {out} ({description})")
    return 0


def cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from edgepress.compiler import api

    if args.device:
        return _bench_on_device(args)
    artifact = api.load(args.artifact)
    result, profile = artifact.bench(
        threads=args.threads, repeat=args.repeat, warmup=args.warmup, profile=args.profile
    )
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
        print(f"written to {artifact.path / 'bench.json'}")
    return 0


def _bench_on_device(args: argparse.Namespace) -> int:
    from edgepress.compiler.device_check import DEVICE_BENCH, bench_on_device, describe

    if args.profile:
        raise UsageError("--profile times kernels in this process; it cannot go with --device")
    entry = bench_on_device(args.artifact, args.device, threads=args.threads,
                            repeat=args.repeat, ssh_config=args.ssh_config)  # fmt: skip
    if args.json:
        print(json.dumps(entry))
    elif not args.quiet:
        lines = [
            f"device       {args.device} ({describe(entry['identity'])})",
            f"median       {entry['median_ms']:10.3f} ms (p90 {entry['p90_ms']:.3f}, std "
            f"{entry['std_ms']:.3f}; {entry['repeat']} runs, {entry['threads']} thread(s))",
            f"init         {entry['init_ms']:10.3f} ms (first run {entry['first_run_ms']:.3f} ms)",
        ]
        if entry["peak_rss_kib"] is not None:
            lines.append(f"peak memory  {entry['peak_rss_kib'] / 1024:10.1f} MiB")
        lines.append(
            f"written to {args.artifact / DEVICE_BENCH}"
            + ("" if entry["pushed"] else " (the folder was on the device already)")
        )
        print("\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace, argv: list[str]) -> int:
    from edgepress.compiler.device_check import DEVICE_VERIFY, verify_on_device
    from edgepress.compiler.errors import VerificationError

    result = verify_on_device(args.artifact, args.device, inputs=args.inputs,
                              ssh_config=args.ssh_config)  # fmt: skip
    if not args.quiet:
        for check in result.outputs:
            print(
                f"{check.name}: {'ok' if check.ok else 'FAILED'} (max abs error "
                f"{check.max_abs_err:.3g}, cosine {check.cosine:.6f})"
                if check.max_abs_err is not None
                else f"{check.name}: {check.problem}"
            )
        print(f"{result.status}: against {result.reference}; written to "
              f"{args.artifact / DEVICE_VERIFY}")  # fmt: skip
    if result.failed:
        broken = ", ".join(f"'{o.name}' ({o.problem})" for o in result.broken_outputs())
        raise VerificationError(f"{args.artifact}: outside tolerance: output {broken}")
    return 0


def cmd_inspect(args: argparse.Namespace, argv: list[str]) -> int:
    from edgepress.compiler.inspect_model import render, summarize
    from edgepress.compiler.shapes import parse_input_shapes

    info = summarize(args.model, parse_input_shapes(args.input_shape))
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def cmd_example(args: argparse.Namespace, argv: list[str]) -> int:
    from edgepress.models import EXAMPLES

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
    example = EXAMPLES[args.name]
    if not args.quiet:
        print(f"compress: writing {args.name} ({example.summary}) ...", file=sys.stderr, flush=True)
    for path in example.write(args.output):
        if not args.quiet:
            print(path)
    return 0


def cmd_passes(args: argparse.Namespace, argv: list[str]) -> int:
    from edgepress.passes import DEFAULT_PIPELINE, PASSES

    for name, fn in PASSES.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        default = " (default)" if name in DEFAULT_PIPELINE else ""
        print(f"{name:<20} {doc}{default}")
    return 0


def _device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        metavar="URL",
        help="run on a device: ssh://user@host[:port] (the folder's runtime/edgepress-run) or "
        "tvm-rpc://host:port (TVM's RPC server)",
    )
    parser.add_argument(
        "--ssh-config", type=Path, metavar="FILE", help="an ssh_config for ssh:// (ssh -F)"
    )


def _parser() -> _Parser:
    parser = _Parser(
        prog="compress",
        description=f"edgepress {__version__}: compile ONNX models to verified native artifacts.",
        epilog="'compress COMMAND --help' shows a command's options; 'compress MODEL.onnx ...' "
        "is 'compress build MODEL.onnx ...'.",
        formatter_class=_Help,
    )
    parser.add_argument("-V", "--version", action="version", version=f"edgepress {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, function, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, formatter_class=_Help)
        sub.set_defaults(function=function)
        return sub

    build = command("build", cmd_build, "Compile an ONNX model to a verified native artifact.")
    _build_arguments(build)
    _common(build)

    run = command("run", cmd_run, "Run a built artifact on inputs from an .npz.")
    run.add_argument("artifact", type=Path, metavar="OUTDIR")
    run.add_argument("--inputs", required=True, type=Path, metavar="IN.npz")
    run.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.npz")
    run.add_argument("--force", action="store_true", help="replace an existing OUT.npz")
    _common(run)

    bench = command(
        "bench",
        cmd_bench,
        "Time an artifact against onnxruntime (same inputs and threads); the figures go to "
        "OUTDIR/bench.json, the artifact's own files are left as they are.",
    )
    bench.add_argument("artifact", type=Path, metavar="OUTDIR")
    bench.add_argument("--threads", type=int, default=1, help="threads for both")
    bench.add_argument("--repeat", type=int, default=50, help="timed runs of each")
    bench.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also time each kernel: share of the run, GFLOP/s, fraction of the CPU's peak",
    )
    _device_arguments(bench)
    _common(bench)

    verify = command(
        "verify",
        cmd_verify,
        "Run an artifact (on a device with --device) and check it against onnxruntime on its "
        "model.onnx here; the result goes to OUTDIR/device-verify.json.",
    )
    verify.add_argument("artifact", type=Path, metavar="OUTDIR")
    verify.add_argument("--inputs", type=Path, metavar="IN.npz", help="default: random, seed 0")
    _device_arguments(verify)
    _common(verify)

    inspect = command("inspect", cmd_inspect, "Describe an ONNX model.")
    inspect.add_argument("model", type=Path)
    inspect.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    _common(inspect)

    example = command("example", cmd_example, "Write a bundled reference model.")
    example.add_argument("name", nargs="?", help="the example (see --list)")
    example.add_argument("-o", "--output", type=Path, metavar="DIR")
    example.add_argument("--list", action="store_true", help="list the examples")
    example.add_argument("--force", action="store_true", help="replace files already in DIR")
    _common(example)

    passes = command("passes", cmd_passes, "List the graph passes.")
    _common(passes)
    return parser


COMMANDS = ("build", "run", "bench", "verify", "inspect", "example", "passes")


def _configure_logging(args: argparse.Namespace) -> None:
    # Libraries (onnxscript, TVM) log chattily at INFO: only edgepress's own progress shows.
    debug, quiet = getattr(args, "debug", False), getattr(args, "quiet", False)
    ours = logging.DEBUG if debug else (logging.ERROR if quiet else logging.INFO)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("edgepress").setLevel(ours)
    # MetaSchedule prints a task table per round at INFO: the progress bar says enough.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(
        logging.DEBUG if debug else logging.WARNING
    )
    # onnx-ir logs a failed shape inference as a warning with its traceback; the build goes on
    # without the shapes, and what it cannot do then is reported as an error of its own.
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if debug else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    size_pool_to_all_cores()
    if not argv:
        argv = ["--help"]
    if argv[0] in ("-V", "--version"):  # without building the parser (it imports the passes)
        print(f"edgepress {__version__}")
        return 0
    if argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["build", *argv]  # compress MODEL.onnx ... is a build
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as done:  # --help and --version print and exit 0
            return int(done.code or 0)
        if args.command is None:
            _parser().print_help()
            return 0
        _configure_logging(args)
        return args.function(args, argv[1:])
    except EdgepressError as err:
        if debug:
            log.exception("failed")
        print(f"compress: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("compress: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `compress bench OUT | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
