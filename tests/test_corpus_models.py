"""The smaller real exported models of the corpus (edgepress.models.corpus) build for x86_64 with
only their input flags, verify on a realistic input, and match onnxruntime on the source model on
another one; one of them also for arm64 under qemu. Two build int8 on photographs and keep the
fidelity floor on photographs calibration never saw. The bigger ones are benchmarks/corpus.py's.

A model whose package cannot be fetched (no registry reachable) is skipped, saying so."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgepress.models.corpus import (
    EVAL_PHOTOS,
    build_flags,
    calibration_photos,
    fetch,
    input_dtypes,
    load_corpus,
    match,
    photo_samples,
    realistic_inputs,
)

SMALL = [
    "magika", "ppocrv5-cls", "silero-vad-lstm", "silero-vad-if", "onnx-light-squeezenet",
    "onnx-light-shufflenet", "onnx-light-inception_v1", "onnx-light-inception_v2",
    "onnx-light-resnet50", "onnx-light-densenet121", "onnx-light-bvlc_alexnet",
    "onnx-light-zfnet512", "onnx-light-vgg19",
]  # fmt: skip
CORPUS = load_corpus()


def _fetched(name: str):
    """(the corpus entry, its model file), or the test skipped where it cannot be fetched."""
    entry = CORPUS[name]
    try:
        return entry, fetch(entry)
    except Exception as err:  # no registry here: nothing to build
        pytest.skip(f"{name}: cannot fetch {entry.package or entry.file}: {err}")


def _build_and_match(cli, name: str, target: str, tmp_path) -> dict:
    entry, source = _fetched(name)
    dtypes = input_dtypes(source)
    verify, further = (realistic_inputs(entry, dtypes, i) for i in (0, 1))
    fixed = set(entry.values)
    np.savez(tmp_path / "verify.npz", **{k: v for k, v in verify.items() if k not in fixed})
    np.savez(tmp_path / "further.npz", **{k: v for k, v in further.items() if k not in fixed})
    out = tmp_path / "out"
    r = cli(source, "--target", target, "-o", out, "--verify-inputs", tmp_path / "verify.npz",
            *build_flags(entry), "-q")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["artifact"]["status"] == "ok"
    r = cli("run", out, "--inputs", tmp_path / "further.npz", "-o", tmp_path / "o.npz", "-q")
    assert r.code == 0, r.err
    with np.load(tmp_path / "o.npz") as got:
        result = match(source, further, [got[k] for k in got.files])
    assert result.ok, f"{name}: max |error| {result.worst:.3g} x max |reference| (noise {result.noise})"
    return report


@pytest.mark.parametrize("name", SMALL)
def test_corpus_model_builds_and_matches_onnxruntime(cli, tmp_path, name):
    """(The suite runs with EDGEPRESS_STRICT=1: a kernel that would fall back, or a pass that
    would be skipped, fails it.) No convolution of edgepress's is left as plain loops: the
    PP-OCR classifier's seven convs with a HardSwish and the next layer's padding behind them
    were (their pad was unrolled into every register tile, and the sampler refused it)."""
    report = _build_and_match(cli, name, "x86_64", tmp_path)
    loops = [k["name"] for k in report["kernels"]
             if "conv2d_float" in k["name"] and k["schedule"] == "loops"]  # fmt: skip
    assert not loops, f"{name}: convolutions left as plain loops: {loops}"


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None, reason="qemu-aarch64 is not installed")
def test_corpus_model_under_qemu(cli, tmp_path):
    """The LSTM detector (unrolled), cross-compiled for arm64 and run under qemu."""
    report = _build_and_match(cli, "silero-vad-lstm", "arm64", tmp_path)
    assert "qemu" in report["verification"]["artifact"]["reference"]


INT8 = ["onnx-light-squeezenet", "ppocrv5-cls"]  # a plain CNN; a MobileNetV3 that needs float
INT8_EVAL = 3  # photographs of EVAL_PHOTOS the artifact is judged on


@pytest.mark.parametrize("name", INT8)
def test_corpus_model_quantizes_on_photographs(cli, tmp_path, name):
    """`--quantize int8 --calibration` on scikit-image's photographs with the model's own
    normalization and nothing else: the build verifies, and the artifact keeps a least cosine
    of 0.99 against onnxruntime on the fp32 source on photographs not used for calibration
    (ppocrv5-cls gets there only with layers kept in float)."""
    import edgepress
    from edgepress.compiler.verify import run_onnxruntime, sample_cosines

    entry, source = _fetched(name)
    dtypes = input_dtypes(source)
    np.savez(tmp_path / "cal.npz", **photo_samples(entry, dtypes, calibration_photos(entry)))
    np.savez(tmp_path / "verify.npz", **realistic_inputs(entry, dtypes, 0))
    out = tmp_path / "out"
    r = cli(source, "--target", "x86_64", "-o", out, "--verify-inputs", tmp_path / "verify.npz",
            *build_flags(entry), "--quantize", "int8", "--calibration", tmp_path / "cal.npz",
            "-q")  # fmt: skip
    assert r.code == 0, r.err
    artifact = edgepress.load(out)
    assert artifact.report["verification"]["artifact"]["status"] == "ok"
    photos = photo_samples(entry, dtypes, EVAL_PHOTOS[:INT8_EVAL])
    runs = [(artifact.run(f), run_onnxruntime(source, f))
            for f in ({k: v[i] for k, v in photos.items()} for i in range(INT8_EVAL))]  # fmt: skip
    for j, name_ in enumerate(runs[0][1]):
        cosines = sample_cosines(np.stack([np.asarray(list(g.values())[j]) for g, _ in runs]),
                                 np.stack([w[name_] for _, w in runs]))  # fmt: skip
        i = int(cosines.argmin())
        assert cosines[i] >= 0.99, f"{name}: {name_} on {EVAL_PHOTOS[i]}: cosine {cosines[i]:.4f}"
