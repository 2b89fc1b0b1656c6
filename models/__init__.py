"""Reference models (PyTorch definitions + ONNX export) for examples, tests and benchmarks.

Importing this package does not import torch; building an example does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    name: str
    summary: str
    # Writes DIR/<name>.onnx (and any data files) and returns the paths written.
    write: Callable[[Path], list[Path]]


def _resnet18(folder: Path) -> list[Path]:
    from edgepress.models.resnet import write_resnet18

    return write_resnet18(folder)


def _mobilenetv2(folder: Path) -> list[Path]:
    from edgepress.models.mobilenetv2 import write_mobilenetv2

    return write_mobilenetv2(folder)


def _vit_tiny(folder: Path) -> list[Path]:
    from edgepress.models.vit import write_vit_tiny

    return write_vit_tiny(folder)


def _digits(folder: Path) -> list[Path]:
    from edgepress.models.digits import write_digits

    return write_digits(folder)


EXAMPLES: dict[str, Example] = {
    e.name: e
    for e in (
        Example(
            "resnet18", "ResNet-18, 1x3x224x224, random weights (speed and fidelity)", _resnet18
        ),
        Example(
            "mobilenetv2",
            "MobileNetV2, 1x3x224x224, random weights (speed and fidelity)",
            _mobilenetv2,
        ),
        Example(
            "vit_tiny",
            "vision transformer (ViT-Tiny width, 4 layers), 1x3x224x224, random weights "
            "(MatMul, attention, LayerNorm, GELU)",
            _vit_tiny,
        ),
        Example(
            "digits",
            "small CNN trained on scikit-learn's 8x8 digits, with calibration.npz, eval.npz "
            "and train.npz",
            _digits,
        ),
    )
}
