"""The comparison behind every build, against figures computed here with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from edgepress.compiler.verify import (
    LOW_SIGNAL,
    Noise,
    Tolerance,
    compare,
    cosine_similarity,
    sample_cosines,
)


def test_figures_match_numpy():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 10)).astype(np.float32)
    got = ref + rng.normal(0, 1e-6, ref.shape).astype(np.float32)
    v = compare({"y": got}, {"y": ref}, Tolerance(), "test")
    (o,) = v.outputs
    assert v.ok and o.ok
    diff = np.abs(got.astype(np.float64) - ref)
    assert o.max_abs_err == diff.max()
    a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    assert abs(o.cosine - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 1e-12


def test_one_bad_element_fails_and_is_counted():
    ref = np.ones((3, 3), np.float32)
    got = ref.copy()
    got[1, 2] += 0.01
    v = compare({"y": got}, {"y": ref}, Tolerance(atol=1e-4, rtol=1e-3), "test")
    assert v.failed and v.outputs[0].mismatched == 1
    assert "1 of 9 elements" in v.outputs[0].problem


def test_shape_mismatch_nan_and_missing_output_fail():
    ref = {"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float32), "c": np.zeros(2, np.float32)}
    got = {"a": np.zeros(4, np.float32), "b": np.array([0, np.nan, 0], np.float32)}
    v = compare(got, ref, Tolerance(), "test")
    problems = {o.name: o.problem for o in v.outputs}
    assert "shape" in problems["a"] and "NaN" in problems["b"] and "missing" in problems["c"]
    assert v.failed


def test_integer_outputs_must_match_exactly():
    ref = np.arange(5)
    v = compare({"i": ref + np.array([0, 0, 1, 0, 0])}, {"i": ref}, Tolerance(), "test")
    assert v.failed and v.outputs[0].mismatched == 1


def test_int8_outputs_pass_within_one_grid_step_and_count_the_off_by_one():
    from edgepress.compiler.verify import Tolerance, compare

    step = 0.05
    ref = np.arange(-20, 20, dtype=np.float32) * step
    got = ref.copy()
    got[[3, 7]] += step  # a rounding boundary crossed: one level up
    got[11] -= step
    check = compare({"y": got}, {"y": ref}, Tolerance(min_cosine=0.99), "r", {"y": step})
    (y,) = check.outputs
    assert check.ok and y.off_by_one_step == 3 and y.mismatched == 0 and y.step == step
    got[5] += 2 * step
    check = compare({"y": got}, {"y": ref}, Tolerance(min_cosine=0.99), "r", {"y": step})
    assert check.failed and check.outputs[0].mismatched == 1
    assert "more than one int8 step" in check.outputs[0].problem


def _ill_conditioned(seed: int = 0):
    """A detector's output on an input without its objects: sigmoids near 1e-6, and the noise
    of a second onnxruntime run (its graph optimizations on) off by a few percent of that."""
    rng = np.random.default_rng(seed)
    ref = (rng.uniform(0.5, 1.5, 1000) * 1e-6).astype(np.float32)
    other = ref * (1 + rng.normal(0, 0.03, ref.shape)).astype(np.float32)
    diff = np.abs(other.astype(np.float64) - ref).max()
    return rng, ref, {"y": Noise(float(diff), cosine_similarity(other, ref))}


def test_an_error_within_onnxruntimes_own_noise_passes_and_says_so():
    rng, ref, noise = _ill_conditioned()
    got = ref * (1 + rng.normal(0, 0.03, ref.shape)).astype(np.float32)
    plain = compare({"y": got}, {"y": ref}, Tolerance(), "test")
    assert plain.failed and "cosine" in plain.outputs[0].problem
    v = compare({"y": got}, {"y": ref}, Tolerance(), "test", noise=noise)
    assert v.ok and "own fp32 noise" in v.outputs[0].note


def test_an_error_beyond_onnxruntimes_own_noise_still_fails():
    rng, ref, noise = _ill_conditioned()
    tenfold = ref * (1 + rng.normal(0, 0.3, ref.shape)).astype(np.float32)
    for got in (tenfold, ref[::-1].copy(), np.zeros_like(ref)):  # noisier, swapped, dropped
        v = compare({"y": got}, {"y": ref}, Tolerance(), "test", noise=noise)
        assert v.failed and v.outputs[0].note is None
    # no noise at all (the runs agree exactly): nothing is excused
    v = compare({"y": ref[::-1].copy()}, {"y": ref}, Tolerance(), "test", noise={"y": Noise(0.0, 1.0)})
    assert v.failed


def test_sample_cosines_judge_a_sample_without_signal_by_its_error():
    """A detector's map of a photo without text is 1e-6 noise: its own cosine says nothing, so
    it is held to its error against the largest sample's norm; a sample with signal keeps its
    plain cosine (numpy's)."""
    rng = np.random.default_rng(0)
    signal = rng.uniform(0, 1, (2, 64))
    noise = rng.uniform(0, 1e-6, (1, 64))
    want = np.concatenate([signal, noise])
    have = want.copy()
    have[0] += rng.normal(0, 0.05, 64)
    have[2] = rng.uniform(0, 1e-6, 64)  # the noise moved by its own size: cosine about 0.75
    got = sample_cosines(have, want)
    plain = [float(h @ w / np.linalg.norm(h) / np.linalg.norm(w)) for h, w in zip(have, want)]
    assert got[0] == pytest.approx(plain[0]) and got[1] == pytest.approx(1.0)
    assert plain[2] < 0.9 and got[2] > 0.999999
    floor = LOW_SIGNAL * np.linalg.norm(want, axis=1).max()
    assert got[2] == pytest.approx(1 - 0.5 * (np.linalg.norm(have[2] - want[2]) / floor) ** 2)
    # the same error on a noise sample as large as the floor counts fully
    have[2] = want[2] + 30 * floor / 8  # |err| = 30 floors: cosine clamps at -1
    assert sample_cosines(have, want)[2] == -1.0
