"""The build's quantization step: calibration data -> statistics -> quantize_int8, with the
accuracy budget enforced and the per-layer picture measured.

It runs after the float passes (BN folded, shapes fixed), on the model they leave, so the
calibrated tensors are the ones the quantizer sees. A fifth of the calibration samples is held
out of calibration: the report's fidelity is measured on it, and so is the budget (the
fidelity floor, or --max-accuracy-drop without --eval) where that leaves at least 4 samples,
else on every calibration sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from edgepress.compiler.calibration_data import (
    Preprocess,
    load_calibration,
    read_npz,
    stacked_samples,
)
from edgepress.compiler.errors import BudgetError, UsageError
from edgepress.compiler.pipeline import PassRecord, run_optional_pipeline, run_pipeline
from edgepress.compiler.shapes import TensorSpec, model_inputs, tensor_specs
from edgepress.compiler.verify import sample_cosines
from edgepress.passes.quantization.bias_correction import correct_biases
from edgepress.passes.quantization.calibration import (
    METHODS,
    CalibrationStats,
    calibrate,
    channel_ranges,
)
from edgepress.passes.quantization.equalize_depthwise_inputs import depthwise_inputs
from edgepress.passes.quantization.mixed_precision import keep_sensitive_layers_float
from edgepress.passes.quantization.quantize_int8 import quantize_int8
from edgepress.passes.quantization.sensitivity import layer_groups, layer_sqnr, run_samples

FIDELITY_METRICS = ("cosine", "top1", "max-error")
HELD_OUT_FRACTION = 5  # 1 in 5 samples (when there are 5 or more) is held out of calibration
MIN_BUDGET_SAMPLES = 4  # fewer held out: a budget is measured on the calibration samples too
RANK_SAMPLES = 4  # layer sensitivity (a run per layer) looks at the samples all-int8 is worst on
# The default floor: below 0.99 a classifier's top-5 and a detector's boxes visibly move
# (an orientation classifier kept 0.962 with all layers int8, and its build said ok).
DEFAULT_FIDELITY_FLOOR = 0.99
# The layers kept in float are searched for a floor 0.3 of the way from 1 to the one asked
# (0.997 for 0.99): the calibration samples it is measured on are easier than photographs int8
# has not seen (a recognizer searched to 0.9932 kept 0.978 on an unseen photo, a layout
# detector searched to 0.9925 kept 0.972; half the distance left an AlexNet at 0.986), and the
# artifact's integer kernels round otherwise than onnxruntime running model.onnx (0.9911 in
# onnxruntime, 0.9890 in the artifact). The artifact is held to the floor itself on the
# held-out samples.
FLOOR_MARGIN = 0.3


@dataclass(frozen=True)
class QuantizeOptions:
    calibration: Path
    method: str = "minmax"
    activations: str = "uint8"
    percentile: float = 99.999
    samples: int | None = None  # use at most this many calibration samples
    preprocess: Preprocess = field(default_factory=Preprocess)
    max_drop: float | None = None  # --max-accuracy-drop
    eval_data: Path | None = None  # --eval: inputs and labels; the budget is in top-1 points
    fidelity_metric: str = "cosine"  # without --eval: what the budget measures
    # Without --max-accuracy-drop: the least cosine against the float model on any sample and
    # output (budget_samples) a build keeps (layers go back to float until it holds); 0: off.
    fidelity_floor: float = DEFAULT_FIDELITY_FLOOR
    bias_correction: bool = False  # --bias-correction
    equalize: bool = False  # --equalize: cross-layer equalization before calibration

    def check(self) -> None:
        if self.method not in METHODS:
            raise UsageError(
                f"--calibration-method {self.method!r}: expected one of {', '.join(METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError("--percentile must lie in (50, 100]")
        if self.samples is not None and self.samples < 1:
            raise UsageError("--calibration-samples must be at least 1")
        if self.max_drop is not None and self.max_drop < 0:
            raise UsageError("--max-accuracy-drop must not be negative")
        if not 0.0 <= self.fidelity_floor < 1.0:
            raise UsageError(
                f"--fidelity-floor {self.fidelity_floor:g}: expected 0 (off) up to below 1"
            )
        if self.fidelity_metric not in FIDELITY_METRICS:
            raise UsageError(
                f"--fidelity-metric {self.fidelity_metric!r}: expected one of "
                f"{', '.join(FIDELITY_METRICS)}"
            )
        self.preprocess.check()


def split_held_out(
    data: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """(calibration part, held-out part, whether the two are disjoint)."""
    count = min(a.shape[0] for a in data.values())
    if count < HELD_OUT_FRACTION:
        return data, data, False
    held = max(1, count // HELD_OUT_FRACTION)
    return (
        {k: v[: count - held] for k, v in data.items()},
        {k: v[count - held : count] for k, v in data.items()},
        True,
    )


def load_eval(
    path: Path, specs: list[TensorSpec], flag: str = "--eval"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A labelled .npz (--eval, --finetune): an array per input name (leading sample axis) and
    `label` (or `labels`)."""
    arrays = read_npz(path, flag)
    label_key = next((k for k in ("label", "labels") if k in arrays), None)
    if label_key is None:
        raise UsageError(f"{flag} {path}: no 'label' array (it holds {', '.join(sorted(arrays))})")
    labels = arrays.pop(label_key)
    inputs = stacked_samples(arrays, specs, f"{flag} {path}")
    count = min(a.shape[0] for a in inputs.values())
    if labels.shape[0] != count:
        raise UsageError(f"{flag} {path}: {labels.shape[0]} labels for {count} samples")
    return inputs, labels


def top1(outputs: dict[str, np.ndarray]) -> np.ndarray:
    first = next(iter(outputs.values()))
    return first.reshape(first.shape[0], -1).argmax(-1)


def budget_samples(
    data: dict[str, np.ndarray], held_out: dict[str, np.ndarray], disjoint: bool
) -> tuple[dict[str, np.ndarray], str]:
    """The samples a budget is measured on, and what they are: the held-out ones when there
    are at least MIN_BUDGET_SAMPLES, else those and the calibration samples too (8 photos hold
    out one: a floor met on one photo said nothing of the others)."""
    count = min(a.shape[0] for a in held_out.values())
    if not disjoint:
        return held_out, "the calibration samples themselves (fewer than 5 given)"
    if count >= MIN_BUDGET_SAMPLES:
        return held_out, f"{count} held-out calibration samples"
    both = {k: np.concatenate([held_out[k], data[k]]) for k in held_out}
    total = min(a.shape[0] for a in both.values())
    return both, f"all {total} calibration samples ({count} held out of calibration)"


def _drop_function(
    opts: QuantizeOptions, float_model, samples, described: str, specs, scales: dict
):
    """(drop(model) in the budget's units, rank(model): the same on the RANK_SAMPLES samples the
    all-int8 model does worst on (sensitivity runs once per layer), what the units and data are).
    Without --max-accuracy-drop, the floor's: 1 - the least per-sample cosine, a sample
    whose output is noise next to `scales` (output_scales) judged by its error."""
    if opts.eval_data is not None and opts.max_drop is not None:
        inputs, labels = load_eval(opts.eval_data, specs)
        float_acc = float(np.mean(top1(run_samples(float_model, inputs)) == labels))

        def accuracy_drop(model) -> float:
            return 100.0 * (float_acc - float(np.mean(top1(run_samples(model, inputs)) == labels)))

        units = f"top-1 points on {labels.shape[0]} labelled --eval samples"
        return accuracy_drop, accuracy_drop, units
    reference = run_samples(float_model, samples)
    metric = opts.fidelity_metric if opts.max_drop is not None else "cosine"
    worst: list[np.ndarray] = []  # the samples all-int8 (the first model measured) is worst on

    def per_sample(outputs: dict, ref: dict) -> np.ndarray:
        if metric == "cosine":
            return np.max(
                [1.0 - sample_cosines(outputs[k], want, scales[k]) for k, want in ref.items()],
                axis=0,
            )
        rows = [fidelity({k: v[i : i + 1] for k, v in outputs.items()},
                         {k: v[i : i + 1] for k, v in ref.items()})
                for i in range(next(iter(ref.values())).shape[0])]  # fmt: skip
        if metric == "top1":
            return np.array([max(100.0 * (1.0 - (x["top1_agreement"] or 0.0)) for x in r)
                             for r in rows])  # fmt: skip
        return np.array([max(x["max_abs_err"] for x in r) for r in rows])

    def drop(model) -> float:
        drops = per_sample(run_samples(model, samples), reference)
        if not worst:
            worst.append(np.sort(np.argsort(drops)[::-1][:RANK_SAMPLES]))
        return float(drops.mean() if metric == "top1" else drops.max())

    def rank(model) -> float:
        if metric == "top1" or not worst:
            return drop(model)
        few = {k: v[worst[0]] for k, v in samples.items()}
        drops = per_sample(run_samples(model, few), {k: v[worst[0]] for k, v in reference.items()})
        return float(drops.max())

    units = {
        "cosine": "1 - the least cosine of any sample",
        "top1": "top-1 disagreement in points",
        "max-error": "max abs error",
    }[metric]
    return drop, rank, f"{units} on {described}"


def output_scales(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Each output's largest per-sample L2 norm over the calibration samples: what its signal
    looks like, against which a sample with next to none is judged (verify.sample_cosines)."""
    return {
        name: float(np.linalg.norm(v.reshape(v.shape[0], -1).astype(np.float64), axis=1).max())
        for name, v in outputs.items()
        if v.shape[0] > 0
    }


def quantize(
    model: ir.Model, opts: QuantizeOptions, done: list[str]
) -> tuple[ir.Model, list[PassRecord], dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Calibrate on `opts.calibration` and quantize (keeping layers in float when a budget asks
    for it); returns the model, the pass record, facts for the report, the held-out samples
    and the float model's outputs on them.

    Raises BudgetError, with the per-layer table, when even an all-float fallback misses the
    budget.
    """
    opts.check()
    start = time.perf_counter()
    specs = tensor_specs(model_inputs(model))
    data = load_calibration(opts.calibration, specs, opts.preprocess)
    if opts.samples is not None:
        data = {name: array[: opts.samples] for name, array in data.items()}
    data, held_out, disjoint = split_held_out(data)
    # Layers are named in reports, budgets and bias correction: give unnamed nodes names.
    common_passes.NameFixPass()(model)
    equalized = 0
    eq_records: list[PassRecord] = []
    if opts.equalize:
        model, eq_records = run_pipeline(model, ["equalize_cross_layer"], done=done)
        equalized = eq_records[0].changes
    # each depthwise input's channels on one int8 grid (a float Mul, weights rescaled): the
    # ranges come from the calibration samples only. An optimization: where it crashes, the
    # build goes on without it (a warning, and the pass's record says why).
    proto = ir.to_proto(model)
    ranges = channel_ranges(proto, data, depthwise_inputs(model))
    model, dw_records = run_optional_pipeline(
        proto, ["equalize_depthwise_inputs"], f"int8 on {opts.calibration}",
        {"equalize_depthwise_inputs": {"ranges": ranges}},
    )  # fmt: skip
    eq_records += dw_records
    float_model = ir.to_proto(model)
    stats = calibrate(float_model, data, method=opts.method, percentile=opts.percentile)
    # the float model on every sample, the held-out ones first: their outputs are what int8's
    # own loss is measured against (after the passes and any pruning, whose loss is by design
    # and reported apart), and the largest output tells a sample without signal
    every = data if not disjoint else {k: np.concatenate([held_out[k], data[k]]) for k in data}
    float_outputs = run_samples(float_model, every)
    held = min(a.shape[0] for a in held_out.values())
    held_reference = {k: v[:held] for k, v in float_outputs.items()}
    scales = output_scales(float_outputs)
    facts = {
        "calibration": str(opts.calibration),
        "method": opts.method,
        "samples": stats.samples,
        "activations": opts.activations,
        "weights": "int8, symmetric, per channel",
        "calibrated_tensors": len(stats.ranges),
        "fidelity_samples": min(a.shape[0] for a in held_out.values()),
        "fidelity_data": "held out of calibration"
        if disjoint
        else "the calibration samples themselves (fewer than 5 given)",
        "float_layers": [],
        "equalized_pairs": equalized if opts.equalize else None,
        "equalized_depthwise_inputs": dw_records[0].changes,
        # what the artifact's own fidelity on the held-out samples is held to (build.py)
        "fidelity_floor": opts.fidelity_floor
        if opts.max_drop is None and opts.fidelity_floor > 0
        else None,
        "output_scales": scales,
    }
    exclude: list[str] = []
    if opts.max_drop is not None or opts.fidelity_floor > 0:
        samples, described = budget_samples(data, held_out, disjoint)
        exclude = _enforce_budget(
            float_model, stats, opts, samples, described, specs, facts, scales
        )
    if opts.bias_correction:
        corrected, shifts = correct_biases(
            float_model,
            lambda m: ir.to_proto(
                quantize_int8(
                    ir.from_proto(m), stats=stats, activations=opts.activations, exclude=exclude
                ).model
            ),
            data,
        )
        model = ir.from_proto(corrected)
        facts["bias_correction"] = {
            "layers": len(shifts),
            "largest_shift": max(shifts.values(), default=0.0),
        }
    model, records = run_pipeline(
        model,
        ["quantize_int8"],
        {"quantize_int8": {"stats": stats, "activations": opts.activations, "exclude": exclude}},
        done=done,
    )
    quantized = ir.to_proto(model)
    facts["layer_sqnr_db"] = layer_sqnr(float_model, quantized, held_out)
    if opts.eval_data is not None:
        inputs, labels = load_eval(opts.eval_data, specs)
        facts["eval_top1"] = {
            "samples": int(labels.shape[0]),
            "float": float(np.mean(top1(run_samples(float_model, inputs)) == labels)),
            "int8": float(np.mean(top1(run_samples(quantized, inputs)) == labels)),
        }
    facts["seconds"] = time.perf_counter() - start
    records = eq_records + records
    return model, records, facts, held_out, held_reference


def excluded_nodes(groups: dict[str, list[str]], layers: list[str]) -> list[str]:
    """The nodes the quantizer leaves in float for `layers` kept in float (layer_groups)."""
    return [node for layer in layers for node in (layer, *groups[layer])]


def _enforce_budget(
    float_model, stats: CalibrationStats, opts, samples, described: str, specs, facts, scales
) -> list:
    """--max-accuracy-drop, or else the fidelity floor: the layers to keep in float."""
    drop, rank, units = _drop_function(opts, float_model, samples, described, specs, scales)
    groups = layer_groups(float_model)
    if opts.max_drop is not None:
        budget, what = opts.max_drop, f"accuracy drop at most {opts.max_drop:g}"
        flag = f"--max-accuracy-drop {opts.max_drop:g}"
    else:
        floor = opts.fidelity_floor
        # searched with a margin: the artifact is then held to the floor itself (build.py)
        budget = (1.0 - floor) * FLOOR_MARGIN
        what = f"least cosine at least {floor:g}, searched for {1.0 - budget:g}"
        flag = f"the fidelity floor (--fidelity-floor {floor:g}; 0 turns it off)"

    def quantize_excluding(excluded: list[str]) -> onnx.ModelProto:
        result = quantize_int8(
            ir.from_proto(float_model),
            stats=stats,
            activations=opts.activations,
            exclude=excluded_nodes(groups, excluded),
        )
        return ir.to_proto(result.model)

    result = keep_sensitive_layers_float(list(groups), quantize_excluding, drop, budget, rank)
    facts["budget"] = {
        "max_drop": budget,
        "what": what,
        "units": units,
        "all_int8_drop": result.all_int8_drop,
        "final_drop": result.final_drop,
        "met": result.met,
        "sensitivity": result.sensitivity,
        "steps": result.steps,
    }
    facts["float_layers"] = [
        {
            "layer": layer,
            "why": f"int8 here costs most: {drop_alone:.4g} with only it in int8 (all int8: "
            f"{result.all_int8_drop:.4g}; budget {budget:.4g}, {units})",
            "with": groups[layer],  # the ops after it, kept in float along with it
        }
        for layer, drop_alone in result.sensitivity
        if layer in result.float_layers
    ]
    if not result.met:
        table = "\n".join(
            f"  {layer:<40} drop with only it in int8: {d:.4g}" for layer, d in result.sensitivity
        )
        raise BudgetError(
            f"{flag} ({units}) cannot be met: all int8 drops {result.all_int8_drop:.4g}, and "
            f"with every compute layer in float {result.final_drop:.4g} (budget {budget:.4g}). "
            f"Per layer:\n{table}\nRelax it, calibrate on more representative data, or try "
            "another --calibration-method."
        )
    return excluded_nodes(groups, result.float_layers)


def output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Graph outputs produced by a DequantizeLinear with one constant scale: their grid step."""
    from onnx import numpy_helper

    constants = {i.name: i for i in model.graph.initializer}
    steps = {}
    for output in model.graph.output:
        producer = next((n for n in model.graph.node if output.name in n.output), None)
        if producer is None or producer.op_type != "DequantizeLinear":
            continue
        scale = constants.get(producer.input[1])
        if scale is not None and numpy_helper.to_array(scale).size == 1:
            steps[output.name] = float(numpy_helper.to_array(scale).reshape(-1)[0])
    return steps


def outputs_over(model_path, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs (graph optimizations off) for each sample, stacked on a leading
    axis; inputs a pass removed as unused are fed zeros."""
    import onnxruntime as ort

    from edgepress.compiler.inputs import complete_feeds

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    model = model_path if isinstance(model_path, bytes) else str(model_path)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    count = min(a.shape[0] for a in samples.values())
    runs = [
        session.run(
            None, complete_feeds(session, {k: v[i] for k, v in samples.items() if k in wanted})
        )
        for i in range(count)
    ]
    names = [o.name for o in session.get_outputs()]
    return {name: np.stack([r[j] for r in runs]) for j, name in enumerate(names)}


def fidelity(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray], scales: dict | None = None
) -> list[dict]:
    """How far the int8 model's outputs are from the float source's, per output (a leading
    sample axis): cosine over all samples and the least of any one sample, max and mean
    absolute error, and top-1 agreement (argmax over the last axis) for outputs
    with a class axis. `scales` (output_scales) tell a sample without signal."""
    from edgepress.compiler.verify import cosine_similarity, sample_cosines

    rows = []
    for name, want in ref.items():
        have = np.asarray(got[name], np.float64)
        want = np.asarray(want, np.float64)
        diff = np.abs(have - want)
        cosine = cosine_similarity(have, want)
        # per sample, where a sample's output has a direction (a scalar's cosine is its sign);
        # a sample whose output is noise next to the others' is judged by its error
        least = cosine
        if want.ndim >= 2 and want[0].size > 1:
            least = float(sample_cosines(have, want, (scales or {}).get(name)).min())
        row = {
            "name": name,
            "cosine": cosine,
            "min_cosine": least,
            "max_abs_err": float(diff.max(initial=0.0)),
            "mean_abs_err": float(diff.mean()) if diff.size else 0.0,
            "top1_agreement": None,
        }
        if want.ndim >= 2 and want.shape[-1] > 1:
            row["top1_agreement"] = float(np.mean(have.argmax(-1) == want.argmax(-1)))
        rows.append(row)
    return rows
