"""Calibration data: images, .npz and .npy files become (N, *input shape) arrays; every bad input
gets a message naming the file and the input. Preprocessing is checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from edgepress.compiler.calibration_data import Preprocess, load_calibration
from edgepress.compiler.errors import UsageError
from edgepress.compiler.shapes import TensorSpec

IMAGE = TensorSpec("images", (1, 3, 4, 6), "float32")


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def test_images_are_cropped_scaled_and_normalized_as_numpy_says(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 10, 3), dtype=np.uint8)  # already 4 high: no resize
    _png(tmp_path / "a.png", pixels)
    pre = Preprocess(resize=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    (got,) = load_calibration(tmp_path, [IMAGE], pre).values()
    crop = pixels[:, 2:8].astype(np.float32)  # center 6 of 10 columns
    want = ((crop / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]).transpose(2, 0, 1)
    assert got.shape == (1, 1, 3, 4, 6)
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-6, atol=1e-6)
    bgr = load_calibration(
        tmp_path,
        [IMAGE],
        Preprocess(resize=4, channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1), scale=1.0),
    )
    np.testing.assert_allclose(bgr["images"][0, 0], crop[..., ::-1].transpose(2, 0, 1))


def test_nhwc_and_grey_inputs(tmp_path):
    _png(tmp_path / "a.png", np.full((8, 8, 3), 51, np.uint8))
    nhwc = TensorSpec("x", (1, 4, 4, 3), "float32")
    got = load_calibration(tmp_path, [nhwc], Preprocess(mean=(0,) * 3, std=(1,) * 3))["x"]
    assert got.shape == (1, 1, 4, 4, 3) and np.allclose(got, 0.2)
    grey = TensorSpec("x", (1, 1, 4, 4), "float32")
    got = load_calibration(tmp_path, [grey], Preprocess(mean=(0,), std=(1,)))["x"]
    assert got.shape == (1, 1, 1, 4, 4) and np.allclose(got, 0.2, atol=1e-2)


def test_npz_with_a_sample_axis_and_folders_of_npz_and_npy(tmp_path):
    spec = TensorSpec("x", (1, 2, 3), "float32")
    stack = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=stack)
    got = load_calibration(tmp_path / "cal.npz", [spec])["x"]
    assert got.shape == (5, 1, 2, 3) and np.array_equal(got[:, 0], stack)
    (tmp_path / "npy").mkdir()
    (tmp_path / "npz").mkdir()
    for i in range(3):
        np.save(tmp_path / "npy" / f"{i}.npy", stack[i][None])
        np.savez(tmp_path / "npz" / f"{i}.npz", x=stack[i][None])
    for folder in ("npy", "npz"):
        got = load_calibration(tmp_path / folder, [spec])["x"]
        assert np.array_equal(got[:, 0], stack[:3])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "no such file or folder"),
        (lambda d: d.joinpath("empty").mkdir() or d / "empty", "holds no images"),
        (lambda d: _write(d / "bad.png", b"not a png"), "bad.png: cannot decode the image"),
        (lambda d: _write(d / "cal.txt", b"x"), "expected an .npz file or a folder"),
        (
            lambda d: _npz(d / "cal.npz", y=np.zeros((2, 3, 4, 6), np.float32)),
            "no array for input 'images'",
        ),
        (
            lambda d: _npz(d / "cal.npz", images=np.zeros((2, 3, 5, 6), np.float32)),
            "input 'images' has shape [2, 3, 5, 6]",
        ),
        (
            lambda d: _npz(d / "cal.npz", images=np.zeros((2, 3, 4, 6), np.float64)),
            "input 'images' is float64, the model takes float32",
        ),
        (lambda d: _write(d / "cal.npz", b"PK broken"), "not a readable .npz file"),
    ],
)
def test_bad_calibration_inputs_are_named(tmp_path, make, message):
    with pytest.raises(UsageError) as err:
        load_calibration(make(tmp_path), [IMAGE])
    assert message in str(err.value)


def test_a_corrupt_image_among_good_ones_is_named(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "good.png", np.zeros((4, 6, 3), np.uint8))
    data = (tmp_path / "imgs" / "good.png").read_bytes()
    (tmp_path / "imgs" / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated.png: cannot decode the image"):
        load_calibration(tmp_path / "imgs", [IMAGE])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path if path.suffix != ".png" else path.parent


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path
