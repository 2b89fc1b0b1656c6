"""Comparing an artifact's outputs with onnxruntime's, output by output.

An output passes when every element satisfies |got - ref| <= atol + rtol * |ref| (numpy's
allclose) and the cosine similarity of the flattened outputs is at least min_cosine. The
reported max relative error divides by max(|ref|, 1e-3 * max|ref|), so elements near zero are
measured against the output's scale instead of blowing up.

Some real models amplify fp32 rounding: a text detector's output on a photograph without text
is a field of sigmoids near 1e-6, where any reordering of the sums (folding BatchNorm into the
conv, onnxruntime's own graph optimizations) moves the cosine to 0.999; a model quantized
dynamically by another tool rounds every activation to 8 bits, and a one-ulp difference before
a rounding flips a level, which the next layers spread. An output outside the tolerance still
passes when its error is within NOISE_FACTOR x the reference's own sensitivity, measured on the
same inputs: onnxruntime's optimized run against its unoptimized one, and its unoptimized run on
the float inputs nudged by one ulp. Two correct fp32 implementations differ that much there; a
wrong lowering (a scale, a swapped channel, a dropped term) lands far beyond. The check says so,
with the figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

# fp32 defaults: TVM and onnxruntime sum in different orders, so deep nets differ by a few ulps
# of their largest activations; an element off by more than this is a real bug.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_MIN_COSINE = 0.9999
# An output outside tolerance passes within this factor of the reference's own fp32 noise
# (max abs error and 1 - cosine; see the module docstring).
NOISE_FACTOR = 2.0


@dataclass(frozen=True)
class Tolerance:
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    min_cosine: float = DEFAULT_MIN_COSINE


@dataclass
class OutputCheck:
    name: str
    ok: bool
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    cosine: float | None = None
    mismatched: int | None = None
    elements: int | None = None
    problem: str | None = None
    # int8 outputs (from a DequantizeLinear): the grid step, and how many elements sit one step
    # from the reference (a rounding boundary crossed in a different summation order)
    step: float | None = None
    off_by_one_step: int | None = None
    # set when the output passed within onnxruntime's own fp32 noise (see the module docstring)
    note: str | None = None


@dataclass
class Verification:
    """The result of one comparison; `status` is 'ok', 'failed' or 'not verified: <why>'."""

    status: str
    reference: str
    outputs: list[OutputCheck] = field(default_factory=list)
    tolerance: Tolerance | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_json(self) -> dict:
        return asdict(self)

    def broken_outputs(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]


def not_verified(reason: str, reference: str = "onnxruntime") -> Verification:
    return Verification(status=f"not verified: {reason}", reference=reference)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    # scaled first: float64 outputs near 1e200 overflow the dot product to inf (cosine NaN)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    if np.isfinite(scale) and scale > 0:
        a, b = a / scale, b / scale
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


# A sample whose reference output is this small against the largest sample's (L2 norms) has
# no direction worth a cosine: a text detector's probability map of a photo without text is
# 1e-6 noise, and int8 moving that noise by another 1e-6 gave cosine 0.976 on a map whose
# every pixel stays under the detection threshold.
LOW_SIGNAL = 1e-3


def sample_cosines(have: np.ndarray, want: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The cosine of each sample (leading axis) of `have` against `want`. A sample whose
    reference norm is under LOW_SIGNAL x `scale` (by default the largest sample's norm) is held
    instead to the cosine its error would give an output of that floor norm,
    1 - |have - want|^2 / (2 floor^2): its error is judged against the signal the output
    carries on other samples, not against its own noise."""
    count = have.shape[0]
    h = np.asarray(have, np.float64).reshape(count, -1)
    w = np.asarray(want, np.float64).reshape(count, -1)
    norms = np.linalg.norm(w, axis=1)
    if scale is None:
        scale = float(norms.max(initial=0.0))
    floor = LOW_SIGNAL * scale
    cosines = np.array([cosine_similarity(a, b) for a, b in zip(h, w)])
    if np.isfinite(floor) and floor > 0:
        low = norms < floor
        err = np.linalg.norm((h[low] - w[low]) / floor, axis=1)
        cosines[low] = np.maximum(-1.0, 1.0 - 0.5 * err**2)
    return cosines


def _max_rel_err(diff: np.ndarray, ref: np.ndarray) -> float:
    """Largest |got - ref| / max(|ref|, 1e-3 * max|ref|): near-zero elements are measured
    against the output's scale instead of blowing up."""
    scale = float(np.abs(ref).max(initial=0.0))
    rel = diff / np.maximum(np.abs(ref), max(1e-3 * scale, np.finfo(np.float64).tiny))
    return float(rel.max(initial=0.0))


def check_output(name: str, got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> OutputCheck:
    if got.shape != ref.shape:
        return OutputCheck(name, False, problem=f"shape {got.shape}, expected {ref.shape}")
    if ref.dtype.kind in "biu" or got.dtype.kind in "biu":
        mismatched = int(np.count_nonzero(got != ref))
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        return OutputCheck(
            name,
            mismatched == 0,
            float(diff.max(initial=0.0)),
            None,
            cosine_similarity(got, ref),
            mismatched,
            int(ref.size),
        )
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    if not np.all(np.isfinite(got64) == np.isfinite(ref64)):
        return OutputCheck(name, False, problem="non-finite values differ (NaN or Inf)")
    finite = np.isfinite(ref64)
    diff = np.abs(got64[finite] - ref64[finite])
    mismatched = int(np.count_nonzero(diff > tol.atol + tol.rtol * np.abs(ref64[finite])))
    cosine = cosine_similarity(got64[finite], ref64[finite])
    ok = mismatched == 0 and cosine >= tol.min_cosine
    problem = None
    if not ok:
        problem = (
            f"{mismatched} of {ref.size} elements outside atol={tol.atol:g} rtol={tol.rtol:g}"
            if mismatched
            else f"cosine {cosine:.6f} < {tol.min_cosine}"
        )
    return OutputCheck(
        name,
        ok,
        float(diff.max(initial=0.0)),
        _max_rel_err(diff, ref64[finite]),
        cosine,
        mismatched,
        int(ref.size),
        problem,
    )


@dataclass(frozen=True)
class Noise:
    """How far two correct fp32 runs of the reference drift apart on one output."""

    max_abs_err: float
    cosine: float


def reference_noise(model_path: Path | bytes, feeds: dict[str, np.ndarray]) -> dict[str, Noise]:
    """Per output, the larger drift of onnxruntime optimized vs unoptimized, and of unoptimized
    on the float inputs nudged up by one ulp vs as given (see the module docstring)."""
    reference = run_onnxruntime(model_path, feeds)
    nudged = {
        k: np.nextafter(v, np.inf).astype(v.dtype) if v.dtype.kind == "f" else v
        for k, v in feeds.items()
    }
    others = [
        run_onnxruntime(model_path, feeds, optimize=True),
        run_onnxruntime(model_path, nudged),
    ]
    noise = {}
    for name, ref in reference.items():
        errors, cosines = [], []
        for other in others:
            a, b = np.asarray(other[name], np.float64), np.asarray(ref, np.float64)
            if a.shape != b.shape:
                continue
            finite = np.isfinite(a) & np.isfinite(b)
            errors.append(float(np.abs(a[finite] - b[finite]).max(initial=0.0)))
            cosines.append(cosine_similarity(a[finite], b[finite]))
        if errors:
            noise[name] = Noise(max(errors), min(cosines))
    return noise


FP32_NOISE = (
    "the reference's own fp32 noise (onnxruntime optimized vs not, or inputs nudged by one ulp)"
)
INT8_NOISE = (
    "the int8 reference's own rounding noise (onnxruntime on model.onnx with a tenth of each "
    "quantized activation moved by one step)"
)


def within_noise(check: OutputCheck, noise: Noise, source: str = FP32_NOISE) -> None:
    """Pass a failed float `check` whose error is within NOISE_FACTOR x the reference's noise
    (`source` says which noise, for the report)."""
    if check.ok or check.max_abs_err is None or check.cosine is None or noise.max_abs_err == 0:
        return
    if check.max_abs_err <= NOISE_FACTOR * noise.max_abs_err and (
        1 - check.cosine
    ) <= NOISE_FACTOR * (1 - noise.cosine):
        check.note = (
            f"outside atol/rtol/cosine ({check.problem}) but within {NOISE_FACTOR:g}x {source}: "
            f"max abs {noise.max_abs_err:.3g}, cosine {noise.cosine:.6f}"
        )
        check.ok, check.problem = True, None


def check_quantized_output(
    name: str, got: np.ndarray, ref: np.ndarray, step: float, tol: Tolerance
) -> OutputCheck:
    """An output on an int8 grid of `step`: every element within one step of the reference
    (two implementations may round one intermediate value to neighbouring levels), and the
    cosine at least tol.min_cosine. Counts the elements one step off."""
    if got.shape != ref.shape:
        return OutputCheck(name, False, problem=f"shape {got.shape}, expected {ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    steps = np.rint(diff / step)
    off_by_one = int(np.count_nonzero(steps == 1))
    beyond = int(np.count_nonzero(diff > step * (1 + 1e-3) + tol.atol))
    cosine = cosine_similarity(got, ref)
    ok = beyond == 0 and cosine >= tol.min_cosine
    problem = None
    if not ok:
        problem = (
            f"{beyond} of {ref.size} elements more than one int8 step ({step:g}) off"
            if beyond
            else f"cosine {cosine:.6f} < {tol.min_cosine}"
        )
    return OutputCheck(
        name, ok, float(diff.max(initial=0.0)), _max_rel_err(diff, ref), cosine, beyond,
        int(ref.size), problem, step, off_by_one,
    )


def compare(
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    tol: Tolerance,
    reference: str,
    steps: dict[str, float] | None = None,
    noise: dict[str, Noise] | None = None,
    noise_source: str = FP32_NOISE,
) -> Verification:
    """Output by output; an output named in `steps` (an int8 grid step) is checked to within
    one step (check_quantized_output), the others with the float tolerance; either, failing
    that, within the reference's own noise where `noise` is given (reference_noise, or for an
    int8 model quant_noise: float ops between int8 tensors, a YOLO head's sigmoid and box
    decoding, turn one step at their input into several at the output grid)."""
    checks = []
    for name, ref_array in ref.items():
        if name not in got:
            checks.append(OutputCheck(name, False, problem="output missing from the artifact"))
            continue
        if steps and name in steps:
            check = check_quantized_output(
                name, np.asarray(got[name]), np.asarray(ref_array), steps[name], tol
            )
        else:
            check = check_output(name, np.asarray(got[name]), np.asarray(ref_array), tol)
        if noise and name in noise:
            within_noise(check, noise[name], noise_source)
        checks.append(check)
    status = "ok" if all(c.ok for c in checks) else "failed"
    return Verification(status=status, reference=reference, outputs=checks, tolerance=tol)


def compare_within_noise(
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    tol: Tolerance,
    reference: str,
    steps: dict[str, float] | None,
    noise: Callable[[], dict[str, Noise]],
    noise_source: str,
) -> Verification:
    """compare(); when an output is outside tolerance, compared again within the reference's
    own noise, which `noise()` measures (only then: it runs the reference several times)."""
    verification = compare(got, ref, tol, reference, steps)
    if not verification.failed:
        return verification
    return compare(got, ref, tol, reference, steps, noise(), noise_source)


def run_onnxruntime(
    model_path: Path | bytes,
    inputs: dict[str, np.ndarray],
    *,
    optimize: bool = False,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Outputs of `model_path` in onnxruntime's CPU provider, by output name.

    Graph optimizations are off by default so the reference is the model as written. Feeds the
    model does not take are left out (a pass may have removed an unused input).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # its errors come back in the exception, said once below
    source = model_path if isinstance(model_path, bytes) else str(model_path)
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        outputs = session.run(names, {k: v for k, v in inputs.items() if k in wanted})
    except Exception as err:  # onnxruntime's own exception types share no base but Exception
        from edgepress.compiler.errors import ModelError

        where = "the model" if isinstance(model_path, bytes) else str(model_path)
        raise ModelError(
            f"{where}: onnxruntime, the reference, fails to run it on the verification inputs: "
            f"{' '.join(str(err).split())[:400]}"
        ) from err
    return dict(zip(names, outputs))


def check_reference_loads(model, source: str) -> None:
    """Fail early, and clearly, when onnxruntime (the reference every build is checked against)
    cannot load `model` (a ModelProto with its input shapes fixed): an op it does not know (exit
    3, naming every node of an unknown domain), an op it has no kernel for at that opset (exit
    3), or a malformed graph (a type or shape that does not infer, a missing tensor: exit 2)."""
    from edgepress.backends.relax.importer import all_nodes
    from edgepress.compiler.errors import ModelError, UnsupportedOpError, first_line, node_label

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types, not a common base
        text = " ".join(str(err).split())
        if "is not a registered function/op" in text:
            opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
            custom = [
                f"{path}{node_label(node, index)} in opset {node.domain} "
                f"{opsets.get(node.domain, '?')}"
                for path, index, node in all_nodes(model.graph)
                if node.domain not in ("", "ai.onnx", "com.microsoft")
            ]
            raise UnsupportedOpError(
                f"{source}: neither onnxruntime (the reference) nor TVM knows "
                + ("; ".join(custom) if custom else text[-300:])
                + ". Replace these operators before compiling."
            ) from err
        if "Could not find an implementation" in text or "NOT_IMPLEMENTED" in text:
            raise UnsupportedOpError(
                f"{source}: onnxruntime, the reference edgepress verifies against, has no kernel "
                f"for an op of this model at its opset: {text[-400:]}. Convert the model to a "
                "newer opset (onnx.version_converter) and build that."
            ) from err
        raise ModelError(
            f"{source}: onnxruntime cannot load the model with its inputs fixed: "
            f"{first_line(err, 400) if len(text) > 400 else text}. Fix the exporter's output "
            "or the --input-shape/--input-value flags."
        ) from err
