"""A small CNN trained on scikit-learn's bundled 8x8 digits: real labels, real accuracy.

The 1,797 images are split once, by a seeded permutation, into disjoint train (60%),
calibration (20%) and eval (20%) parts; the model never sees the last two in training.
"""

from __future__ import annotations

import functools

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepress.models.export import export_onnx

log = logging.getLogger(__name__)

SEED = 0
EPOCHS = 40
BATCH = 64


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def digits_splits(seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train' | 'calibration' | 'eval': (images N x 1 x 8 x 8 float32 in [0, 1], labels)}."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train, n_cal = int(0.6 * len(order)), int(0.2 * len(order))
    parts = {
        "train": order[:n_train],
        "calibration": order[n_train : n_train + n_cal],
        "eval": order[n_train + n_cal :],
    }
    return {name: (images[idx], labels[idx]) for name, idx in parts.items()}


@functools.lru_cache(maxsize=2)
def train_digits(seed: int = SEED) -> tuple[DigitsCNN, float]:
    """Train on the train split; return the model and its top-1 accuracy on the eval split.

    Deterministic for a seed, so cached per process (tests and benchmarks write it often);
    callers must not change the returned model."""
    torch.manual_seed(seed)
    splits = digits_splits(seed)
    x, y = map(torch.from_numpy, splits["train"])
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    log.info("training the digits CNN on scikit-learn's digits: %d epochs", EPOCHS)
    for epoch in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(BATCH):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
        if (epoch + 1) % 10 == 0:
            loss_value = loss.item()
            log.info("digits CNN: epoch %d/%d, last batch loss %.3f", epoch + 1, EPOCHS, loss_value)
    model.eval()
    ex, ey = map(torch.from_numpy, splits["eval"])
    with torch.no_grad():
        accuracy = float((model(ex).argmax(1) == ey).float().mean())
    return model, accuracy


def write_digits(folder: Path) -> list[Path]:
    model, accuracy = train_digits()
    log.info("digits CNN: eval top-1 %.4f", accuracy)
    splits = digits_splits()
    path = export_onnx(model, torch.zeros(1, 1, 8, 8), folder / "digits.onnx")
    calibration = folder / "calibration.npz"
    np.savez(calibration, input=splits["calibration"][0])
    evaluation = folder / "eval.npz"
    np.savez(evaluation, input=splits["eval"][0], label=splits["eval"][1])
    train = folder / "train.npz"  # for --finetune after pruning
    np.savez(train, input=splits["train"][0], label=splits["train"][1])
    return [path, calibration, evaluation, train]
