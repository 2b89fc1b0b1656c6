"""Calibration data for quantization: a user's images, .npz or .npy files, as arrays per input.

Accepted `--calibration PATH`:
- an .npz file: one array per model input name, with a leading sample axis: (N, *input shape),
  or (N, *input shape without its batch dim) when the batch dim is 1;
- a folder of .npz files (one sample each: an array per input name, the input's shape) or of
  .npy files (one sample each; single-input models only);
- a folder of images (jpg, jpeg, png, bmp; single image input only), decoded by Pillow and
  preprocessed as `Preprocess` says: resize the shorter side, center-crop to the input's size,
  divide by `scale`, subtract `mean` and divide by `std` per channel, RGB or BGR, NCHW or NHWC.

Every problem names the file (and the input): a missing or empty folder, a file that is not
an image or array, a corrupt image, an array of the wrong shape or dtype, a missing input name.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepress.compiler.errors import UsageError
from edgepress.compiler.shapes import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_SUFFIXES = (".npz", ".npy")


@dataclass(frozen=True)
class Preprocess:
    """How images become input tensors (the defaults are ImageNet's, as torchvision uses)."""

    resize: int | None = None  # shorter side before the crop; None: the crop size (no margin)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: float = 255.0  # pixel values are divided by this first
    layout: str | None = None  # "NCHW" or "NHWC"; None: NCHW when dim 1 is 1 or 3, else NHWC
    channel_order: str = "RGB"  # or "BGR"

    def check(self) -> None:
        if self.layout not in (None, "NCHW", "NHWC"):
            raise UsageError(f"--layout {self.layout!r}: expected NCHW or NHWC")
        if self.channel_order not in ("RGB", "BGR"):
            raise UsageError(f"--channel-order {self.channel_order!r}: expected RGB or BGR")
        if self.scale <= 0 or any(s <= 0 for s in self.std):
            raise UsageError("--scale and every --std value must be positive")
        if len(self.mean) != len(self.std):
            raise UsageError(
                f"--mean has {len(self.mean)} values and --std {len(self.std)}; "
                "give one per channel"
            )
        if self.resize is not None and self.resize < 1:
            raise UsageError("--resize must be a positive number of pixels")


def load_calibration(
    path: Path, specs: list[TensorSpec], preprocess: Preprocess | None = None
) -> dict[str, np.ndarray]:
    """Arrays per input name, each (N, *input shape)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--calibration {path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".npz":
            raise UsageError(
                f"--calibration {path}: expected an .npz file or a folder of images, .npz or "
                ".npy files"
            )
        return _from_npz(path, specs)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    arrays = [p for p in files if p.suffix.lower() in ARRAY_SUFFIXES]
    if not images and not arrays:
        raise UsageError(
            f"--calibration {path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}) "
            "and no .npz or .npy files"
        )
    if images and arrays:
        raise UsageError(
            f"--calibration {path}: the folder mixes images and arrays; keep one kind "
            f"(e.g. {images[0].name} and {arrays[0].name})"
        )
    if images:
        return _from_images(images, specs, preprocess or Preprocess())
    return _from_array_files(arrays, specs)


def _sample_shape_ok(array: np.ndarray, spec: TensorSpec) -> np.ndarray | None:
    """`array` as (N, *spec.shape) when it is a stack of samples of that input, else None."""
    shape = tuple(spec.shape)
    if array.ndim == len(shape) + 1 and tuple(array.shape[1:]) == shape:
        return array
    if shape and shape[0] == 1 and tuple(array.shape[1:]) == shape[1:]:
        return array[:, None]
    return None


def _checked(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    if np.dtype(array.dtype) != np.dtype(spec.dtype):
        raise UsageError(
            f"{where}: input '{spec.name}' is {array.dtype}, the model takes {spec.dtype}"
        )
    return array


def _read_npz(path: Path, flag: str = "--calibration") -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise UsageError(f"{flag} {path}: not a readable .npz file ({err})") from err


def read_npz(path: Path, flag: str) -> dict[str, np.ndarray]:
    """Every array of an .npz, or a message naming `flag` and the file."""
    if not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return _read_npz(Path(path), flag)


def _from_npz(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    return stacked_samples(_read_npz(path), specs, f"--calibration {path}")


def stacked_samples(
    data: dict[str, np.ndarray], specs: list[TensorSpec], where: str
) -> dict[str, np.ndarray]:
    """Arrays with a leading sample axis, one per input name, checked and shaped (N, *shape);
    `where` starts every message (the flag and the file)."""
    out = {}
    for spec in specs:
        if spec.name not in data:
            raise UsageError(
                f"{where}: no array for input '{spec.name}' (it holds "
                f"{', '.join(sorted(data)) or 'nothing'})"
            )
        stacked = _sample_shape_ok(data[spec.name], spec)
        if stacked is None:
            raise UsageError(
                f"{where}: input '{spec.name}' has shape {list(data[spec.name].shape)}"
                f"; expected samples of shape {list(spec.shape)} with a leading sample axis, "
                f"i.e. [N, {', '.join(map(str, spec.shape))}]"
            )
        out[spec.name] = _checked(stacked, spec, where)
    counts = {name: a.shape[0] for name, a in out.items()}
    if len(set(counts.values())) > 1:
        raise UsageError(f"{where}: inputs have different sample counts {counts}")
    if any(n == 0 for n in counts.values()):
        raise UsageError(f"{where}: no samples")
    return out


def _from_array_files(files: list[Path], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    samples: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    for file in files:
        if file.suffix == ".npy":
            if len(specs) != 1:
                raise UsageError(
                    f"--calibration {file}: an .npy file holds one array, but the model has "
                    f"{len(specs)} inputs; use .npz files with an array per input name"
                )
            try:
                data = {specs[0].name: np.load(file, allow_pickle=False)}
            except (ValueError, OSError, EOFError) as err:
                raise UsageError(f"--calibration {file}: not a readable .npy file ({err})") from err
        else:
            data = _read_npz(file)
        for spec in specs:
            if spec.name not in data:
                raise UsageError(f"--calibration {file}: no array for input '{spec.name}'")
            array = data[spec.name]
            if tuple(array.shape) != tuple(spec.shape):
                raise UsageError(
                    f"--calibration {file}: input '{spec.name}' has shape {list(array.shape)}, "
                    f"the model takes {list(spec.shape)}"
                )
            samples[spec.name].append(_checked(array, spec, f"--calibration {file}"))
    return {name: np.stack(arrays) for name, arrays in samples.items()}


def _image_geometry(spec: TensorSpec, layout: str | None) -> tuple[str, int, int, int]:
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[0] != 1:
        raise UsageError(
            f"--calibration: images need one input of shape [1, C, H, W] or [1, H, W, C]; "
            f"input '{spec.name}' has {list(shape)}"
        )
    layout = layout or ("NCHW" if shape[1] in (1, 3) else "NHWC")
    channels, height, width = (
        (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    )
    if channels not in (1, 3):
        raise UsageError(
            f"--calibration: input '{spec.name}' {list(shape)} in {layout} has {channels} "
            "channels; images give 1 (grey) or 3 (colour)"
        )
    return layout, channels, height, width


def image_to_tensor(image, spec: TensorSpec, preprocess: Preprocess) -> np.ndarray:
    """One decoded Pillow image -> the input tensor (1, ...) as `preprocess` says."""
    from PIL import Image

    layout, channels, height, width = _image_geometry(spec, preprocess.layout)
    image = image.convert("RGB" if channels == 3 else "L")
    shorter = preprocess.resize or max(height, width)
    w, h = image.size
    factor = shorter / min(w, h)
    size = (max(width, round(w * factor)), max(height, round(h * factor)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels)
    if channels == 3 and preprocess.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    mean = np.asarray(preprocess.mean[:channels], np.float32)
    std = np.asarray(preprocess.std[:channels], np.float32)
    pixels = (pixels / preprocess.scale - mean) / std
    if layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return pixels[None].astype(np.dtype(spec.dtype))


def _from_images(
    files: list[Path], specs: list[TensorSpec], preprocess: Preprocess
) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    preprocess.check()
    if len(specs) != 1:
        raise UsageError(
            f"--calibration {files[0].parent}: images calibrate a model with one input; this "
            f"model has {len(specs)} ({', '.join(s.name for s in specs)}); use .npz files"
        )
    (spec,) = specs
    tensors = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                tensors.append(image_to_tensor(image, spec, preprocess))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise UsageError(f"--calibration {file}: cannot decode the image ({err})") from err
    return {spec.name: np.stack(tensors)}
