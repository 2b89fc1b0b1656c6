"""A build's configuration: the option table's defaults, then a config file, then what the
command line or the API gave; checked with messages that name the key; turned into
BuildOptions. The resolved configuration goes into report.json, so that
`compress build --config OUTDIR/report.json` repeats a build.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tomllib
from pathlib import Path

from edgepress.compiler.errors import UsageError
from edgepress.compiler.options import BY_KEY, NOT_IN_CONFIG, REQUIRED, Option, defaults

# Tables a config file may group its keys in (their names are only for the reader).
SECTIONS = ("build", "target", "verification", "tuning", "quantization", "pruning")


def load_config(path: Path) -> dict:
    """The settings of a TOML build config, or of an artifact's report.json ("config"),
    checked; relative paths in it are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text()).get("config")
            if not isinstance(data, dict):
                raise UsageError(f"--config {path}: a JSON config is an artifact's report.json "
                                 "with a 'config' object; this one has none")
        else:
            with open(path, "rb") as f:
                data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--config {path}: not valid TOML or JSON: {err}") from None
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in SECTIONS:
            for inner, item in value.items():
                flat[_section_key(path, key, inner, flat)] = item
        else:
            flat[_section_key(path, None, key, flat)] = value
    return check(flat, str(path), base=path.parent)


def _section_key(path: Path, section: str | None, key: str, seen: dict) -> str:
    normal = key.replace("-", "_")
    if normal in seen:
        where = f"[{section}] " if section else ""
        raise UsageError(f"--config {path}: {where}'{key}' is given twice")
    return normal


def _unknown(key: str, where: str) -> UsageError:
    close = difflib.get_close_matches(key, [*BY_KEY, *SECTIONS], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; see 'compress build --help'"
    return UsageError(f"{where}: unknown key '{key}'{hint}")


def check(values: dict, where: str, *, base: Path | None = None) -> dict:
    """`values` (config keys or flags' names, "-" or "_") as the types the options take."""
    out = {}
    for raw, value in values.items():
        key = raw.replace("-", "_")
        option = BY_KEY.get(key)
        if option is None or (key in NOT_IN_CONFIG and base is not None):
            raise _unknown(raw, where)
        out[key] = _convert(option, value, f"{where}: '{raw}'", base)
    return out


def _convert(option: Option, value, what: str, base: Path | None):
    if option.repeat:
        return _repeated(option, value, what)
    if value is None:
        return None
    if option.key in ("passes", "mattr", "mean", "std") and isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    kind = option.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{what} must be true or false, not {value!r}")
        return value
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{what} must be an integer, not {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{what} must be a number, not {value!r}")
        return float(value)
    if kind is Path:
        if not isinstance(value, str | Path):
            raise UsageError(f"{what} must be a path (a string), not {value!r}")
        path = Path(value).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    if kind is str:
        if not isinstance(value, str):
            raise UsageError(f"{what} must be a string, not {value!r}")
        if option.choices and value not in option.choices:
            close = difflib.get_close_matches(value, option.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"{what}: {value!r} is not one of {', '.join(option.choices)}{hint}"
            )
    return value


def _repeated(option: Option, value, what: str) -> list[str]:
    """input_shape / input_value: a list of "NAME=..." strings, or a table NAME -> values."""
    if isinstance(value, dict):
        items = []
        for name, dims in value.items():
            dims = dims if isinstance(dims, list | tuple) else [dims]
            items.append(f"{name}={','.join(str(d) for d in dims)}")
        return items
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"{what} must be a table (name = [values]) or a list of 'NAME=...' strings")


def resolve(config: dict, given: dict) -> dict:
    """The build's settings: defaults, then the config file's, then `given` (flags, or the
    API's keyword arguments)."""
    settings = {**defaults(), **config, **given}
    settings.pop("config", None)
    missing = [k for k in REQUIRED if settings.get(k) is None]
    if missing:
        names = {"model": "MODEL.onnx", "target": "--target", "output": "-o/--output OUTDIR"}
        raise UsageError(
            "missing " + ", ".join(names[k] for k in missing)
            + " (on the command line, or as keys of --config FILE)"
        )
    return settings


def to_json(settings: dict) -> dict:
    """The settings as report.json keeps them (paths as strings, made absolute)."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, Path):
            value = str(value.resolve())
        out[key] = value
    return out


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
    from edgepress.compiler.quantize_step import DEFAULT_FIDELITY_FLOOR, QuantizeOptions

    pruning = args.prune is not None or args.prune_flops is not None
    if args.quantize is None:
        shared = () if pruning else ("calibration", "eval")  # pruning reads them too
        flags = (*shared, "max_accuracy_drop", "fidelity_floor")
        _refuse_without(args, flags, "--quantize int8")
        return None
    if args.calibration is None:
        raise UsageError("--quantize int8 needs --calibration PATH (images, .npz or .npy files)")
    if args.fidelity_floor is not None and args.max_accuracy_drop is not None:
        raise UsageError(
            "--fidelity-floor and --max-accuracy-drop are two budgets for one thing: give one"
        )
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
        fidelity_floor=(
            DEFAULT_FIDELITY_FLOOR if args.fidelity_floor is None else args.fidelity_floor
        ),
        bias_correction=args.bias_correction,
        equalize=args.equalize,
    )
    options.check()
    return options


def build_options(settings: dict):
    """The BuildOptions of resolved settings (every value checked here or by the option
    objects, with the flag's name in the message)."""
    from edgepress.backends.options import LoweringOptions, TuningOptions
    from edgepress.backends.targets.base import TargetOptions
    from edgepress.compiler.build import BuildOptions
    from edgepress.compiler.input_values import parse_input_values
    from edgepress.compiler.pipeline import parse_pass_list
    from edgepress.compiler.shapes import parse_input_shapes
    from edgepress.compiler.verify import Tolerance
    from edgepress.passes import DEFAULT_PIPELINE

    args = argparse.Namespace(**settings)
    for flag in ("atol", "rtol"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must not be negative")
    if not -1.0 <= args.min_cosine <= 1.0:
        raise UsageError("--min-cosine must lie in [-1, 1]")
    if args.num_cores is not None and args.num_cores < 1:
        raise UsageError("--num-cores must be at least 1")
    if args.tune_trials < 0 or (args.tune_minutes is not None and args.tune_minutes <= 0):
        raise UsageError("--tune-trials must not be negative and --tune-minutes must be positive")
    return BuildOptions(
        model=Path(args.model),
        target=args.target,
        outdir=Path(args.output),
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
        config=to_json(settings),
    )
