"""scikit-image's sample photographs, split once into calibration and evaluation sets, for the
benchmarks that need real images (no model hub or data set is reachable here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIBRATION_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "moon", "coins", "brick", "grass",
)  # fmt: skip
EVAL_PHOTOS = ("gravel", "colorwheel", "page", "text", "cat", "horse", "logo")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def photo(name: str):
    """The named sample photograph as an RGB Pillow image."""
    import skimage.data
    from PIL import Image

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def write_photos(folder: Path) -> tuple[Path, Path]:
    """PNG folders `photos-calibration` and `photos-eval` under `folder`."""
    calibration, evaluation = folder / "photos-calibration", folder / "photos-eval"
    for sub, names in ((calibration, CALIBRATION_PHOTOS), (evaluation, EVAL_PHOTOS)):
        sub.mkdir(parents=True, exist_ok=True)
        for name in names:
            photo(name).save(sub / f"{name}.png")
    return calibration, evaluation


def photo_crops(names: tuple[str, ...], per_photo: int, seed: int) -> np.ndarray:
    """Random square crops (half to all of the shorter side) resized to 224, ImageNet-normalized,
    as [samples, 1, 3, 224, 224]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    crops = []
    for name in names:
        image = photo(name)
        width, height = image.size
        for _ in range(per_photo):
            side = int(min(width, height) * rng.uniform(0.5, 1.0))
            x, y = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
            crop = image.crop((x, y, x + side, y + side)).resize((224, 224), Image.BILINEAR)
            pixels = (np.asarray(crop, np.float32) / 255.0 - MEAN) / STD
            crops.append(pixels.transpose(2, 0, 1)[None].astype(np.float32))
    return np.stack(crops)
