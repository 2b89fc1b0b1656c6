"""Every build option, once: the CLI's flags, the keys of a build config file and the keyword
arguments of edgepress.build() are all made from this table, so they have the same names
(`--calibration-method` is `calibration_method = "..."` in build.toml), defaults and checks.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepress.backends.options import FloatConv, Int8Compute, Untuned
from edgepress.backends.targets import TARGETS
from edgepress.compiler.verify import DEFAULT_ATOL, DEFAULT_MIN_COSINE, DEFAULT_RTOL
from edgepress.passes.quantization.calibration import METHODS


@dataclass(frozen=True)
class Option:
    name: str  # the flag without its dashes ("input-shape"); its key is name with "_"
    help: str
    kind: Callable = str  # str, int, float, Path, or bool (a switch)
    default: object = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    group: str = "build"
    repeat: bool = False  # may be given several times (a list)
    short: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"


_BUILD = "build"
_TARGET = "target and code generation"
_VERIFY = "verification"
_TUNING = "tuning"
_QUANT = "quantization"
_PRUNE = "pruning (structured: whole channels; before --quantize)"

OPTIONS: tuple[Option, ...] = (
    Option("model", "the ONNX model (never modified)", Path, metavar="MODEL.onnx"),
    Option("target", f"what to compile for: {', '.join(TARGETS)}", metavar="TARGET"),
    Option("output", "artifact folder to create (an empty one may exist)", Path,
           metavar="OUTDIR", short="-o"),
    Option("config", "a build config file (TOML; keys named as these flags, flags win), or an "
           "artifact's report.json to repeat its build", Path, metavar="FILE"),
    Option("input-shape", "fix an input's shape (repeat for each dynamic input)",
           repeat=True, metavar="NAME=D1,D2,..."),
    Option("input-value", "fix an input's value at build time (a sample rate, a flag): it "
           "becomes a constant, what depends on it folds, and the artifact no longer takes it",
           repeat=True, metavar="NAME=V[,V...]"),
    Option("passes", "comma-separated pass list (see 'compress passes'); default: the "
           "default pipeline", metavar="P1,P2,..."),
    Option("force", "replace an existing, non-empty artifact folder", bool, False),
    Option("mcpu", "CPU to generate code for (x86_64: this machine's; arm64: generic)",
           group=_TARGET),
    Option("mattr", "extra CPU features, e.g. +dotprod,+i8mm (arm64)", default="",
           group=_TARGET),
    Option("arch", "CUDA architecture (cuda target)", default="sm_80", group=_TARGET),
    Option("num-cores", "cores the code is parallelized for (x86_64: this machine's; arm64: 4)",
           int, metavar="N", group=_TARGET),
    Option("float-conv", "CPU: float Conv/Gemm/MatMul as edgepress's NHWC kernels with "
           "Winograd F(2x2, 3x3) where it qualifies (edgepress), the same without Winograd "
           "(direct), or TVM's own NCHW kernels (tvm)", default=FloatConv.EDGEPRESS.value,
           choices=tuple(c.value for c in FloatConv), group=_TARGET),
    Option("winograd", "CPU: 3x3 stride-1 convs as TOPI's Winograd F(4x4, 3x3) (4x fewer "
           "multiplications; records tuned for direct convs do not apply)", bool, False,
           group=_TARGET),
    Option("untuned", "CPU kernels no tuning record covers: one untimed sample of "
           "MetaSchedule's default schedules, or TVM's plain loops (faster build, slower code)",
           default=Untuned.SAMPLED.value, choices=tuple(c.value for c in Untuned), group=_TARGET),
    Option("verify-inputs", "verification inputs, one array per model input (default: random)",
           Path, metavar="X.npz", group=_VERIFY),
    Option("seed", "seed of the random verification inputs", int, 0, group=_VERIFY),
    Option("atol", "absolute tolerance of the artifact's outputs against onnxruntime", float,
           DEFAULT_ATOL, group=_VERIFY),
    Option("rtol", "relative tolerance, of each output element's reference value", float,
           DEFAULT_RTOL, group=_VERIFY),
    Option("min-cosine", "least cosine similarity of each output to the reference", float,
           DEFAULT_MIN_COSINE, group=_VERIFY),
    Option("tune-trials", "MetaSchedule trials for the tasks no tuning database covers", int, 0,
           metavar="N", group=_TUNING),
    Option("tune-minutes", "tuning time budget", float, metavar="M", group=_TUNING),
    Option("tuning-db", "tuning database folder, for one target (default: a folder per target "
           "under $EDGEPRESS_TUNING_DB, else under the cache)", Path, metavar="PATH",
           group=_TUNING),
    Option("retune", "with --tune-trials/--tune-minutes: tune tasks that already have records "
           "too (the database keeps the best record of every run)", bool, False, group=_TUNING),
    Option("no-shipped-records", "do not apply the tuning records shipped with edgepress for "
           "this target", bool, False, group=_TUNING),
    Option("quantize", "post-training quantization", choices=("int8",), group=_QUANT),
    Option("int8-compute", "how a QDQ model's Conv/Gemm/MatMul are compiled: int8 x int8 -> "
           "int32 kernels with int8 weights (CPU targets), or TVM's float arithmetic",
           default=Int8Compute.INTEGER.value, choices=tuple(c.value for c in Int8Compute),
           group=_QUANT),
    Option("calibration", "calibration data for --quantize and --prune: a folder of images, an "
           ".npz (an array per input, leading sample axis), or a folder of .npz/.npy samples",
           Path, metavar="PATH", group=_QUANT),
    Option("calibration-method", f"how activation ranges are chosen: {', '.join(METHODS)}",
           default="minmax", group=_QUANT),
    Option("percentile", "for --calibration-method percentile", float, 99.999, group=_QUANT),
    Option("calibration-samples", "use at most N samples", int, metavar="N", group=_QUANT),
    Option("activations", "activation type (weights are always int8, symmetric, per channel)",
           default="uint8", choices=("uint8", "int8"), group=_QUANT),
    Option("resize", "images: shorter side before the center crop (default: the input's "
           "larger side)", int, metavar="PIXELS", group=_QUANT),
    Option("mean", "images: per-channel mean after scaling (default ImageNet's "
           "0.485,0.456,0.406)", metavar="R,G,B", group=_QUANT),
    Option("std", "images: per-channel std (default ImageNet's 0.229,0.224,0.225)",
           metavar="R,G,B", group=_QUANT),
    Option("scale", "images: divide pixels by this first", float, 255.0, group=_QUANT),
    Option("layout", "images: the input's layout (default: NCHW when dim 1 is 1 or 3)",
           choices=("NCHW", "NHWC"), group=_QUANT),
    Option("channel-order", "images: the order of the input's color channels", default="RGB",
           choices=("RGB", "BGR"), group=_QUANT),
    Option("equalize", "cross-layer equalization before calibration (Conv -> Relu -> Conv "
           "channel rescaling, float outputs unchanged; for depthwise-separable nets)", bool,
           False, group=_QUANT),
    Option("bias-correction", "empirical bias correction: each layer's mean int8 output shift, "
           "measured on the calibration data, removed from its bias", bool, False, group=_QUANT),
    Option("max-accuracy-drop", "keep the most sensitive layers in float until the drop is at "
           "most X: top-1 points with --eval, else --fidelity-metric on held-out calibration "
           "samples; exit 7 when it cannot be met", float, metavar="X", group=_QUANT),
    Option("fidelity-floor", "without --max-accuracy-drop: the least cosine against the float "
           "model on any held-out calibration sample; layers are kept in float until it holds "
           "(default 0.99; 0 turns it off)", float, metavar="C", group=_QUANT),
    Option("eval", "labelled evaluation data: an array per input (leading sample axis) and "
           "'label'", Path, metavar="DATA.npz", group=_QUANT),
    Option("fidelity-metric", "without --eval, what --max-accuracy-drop measures against the "
           "float model: 1 - cosine, top-1 disagreement in points, or max abs error",
           default="cosine", choices=("cosine", "top1", "max-error"), group=_QUANT),
    Option("prune", "remove this fraction of the prunable channels", float, metavar="RATIO",
           group=_PRUNE),
    Option("prune-flops", "instead of --prune: remove channels until at most this fraction of "
           "the MACs is left", float, metavar="F", group=_PRUNE),
    Option("prune-importance", "how channels are ranked: l1, l2 (filter norms), bn (BatchNorm "
           "scale) or activation (contribution on --calibration data; the default with it)",
           group=_PRUNE),
    Option("prune-recovery", "none, bias (compensate the removed channels' mean) or lstsq "
           "(least-squares reconstruction from --calibration data; the default with it)",
           group=_PRUNE),
    Option("prune-uniform", "the same ratio in every channel group (default with "
           "--calibration: ratios from each group's measured sensitivity)", bool, False,
           group=_PRUNE),
    Option("prune-min-keep", "every channel group keeps at least this fraction", float, 0.1,
           metavar="FRACTION", group=_PRUNE),
    Option("prune-multiple", "round kept channel counts up to a multiple of N in groups of 8N "
           "or more", int, 8, metavar="N", group=_PRUNE),
    Option("prune-config", "JSON or TOML: 'exclude' (layer names never pruned) and 'layers' "
           "(name -> ratio)", Path, metavar="FILE", group=_PRUNE),
    Option("finetune", "fine-tune the pruned model in PyTorch on labelled data (an array per "
           "input and 'label'); needs torch", Path, metavar="DATA.npz", group=_PRUNE),
    Option("finetune-epochs", "epochs of --finetune", int, 10, metavar="N", group=_PRUNE),
)
BY_KEY = {o.key: o for o in OPTIONS}
# Given on the command line only: where the configuration comes from, not part of it.
NOT_IN_CONFIG = ("config",)
REQUIRED = ("model", "target", "output")


def add_to_parser(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    """Every option as a flag (the model as the positional argument). With `suppress_defaults`
    the parsed namespace holds only what the command line gave (config files fill the rest)."""
    groups: dict[str, argparse._ArgumentGroup | argparse.ArgumentParser] = {_BUILD: parser}
    for option in OPTIONS:
        where = groups.get(option.group)
        if where is None:
            where = groups[option.group] = parser.add_argument_group(option.group)
        default = argparse.SUPPRESS if suppress_defaults else option.default
        if option.key == "model":
            where.add_argument("model", nargs="?", type=Path, help=option.help, default=default)
            continue
        names = [option.short, option.flag] if option.short else [option.flag]
        if option.kind is bool:
            where.add_argument(*names, action="store_true", help=option.help, default=default)
        elif option.repeat:
            where.add_argument(*names, action="append", metavar=option.metavar,
                               help=option.help, default=argparse.SUPPRESS if suppress_defaults
                               else [])
        else:
            where.add_argument(*names, type=option.kind, choices=option.choices,
                               metavar=option.metavar, help=option.help, default=default)


def defaults() -> dict:
    return {o.key: ([] if o.repeat else o.default) for o in OPTIONS}
