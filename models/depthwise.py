"""A depthwise-separable CNN whose channel ranges are spread over four orders of magnitude.

BatchNorm folding does this to real networks: a channel with a tiny BN scale gets tiny weights
in the conv before it and the depthwise conv after it reads it at its own scale. Per-tensor
int8 activations then spend their grid on the widest channel and flatten the others. The
spread here is planted exactly: conv channel i is multiplied by k_i and the depthwise channel i
divided by k_i, through a ReLU, which leaves the float function unchanged
(ReLU(k x) = k ReLU(x) for k > 0). The equalization benchmark's case.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgepress.models.export import export_onnx

SPREAD = 4.0  # decades between the two groups of channel scales


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        widths = [(3, 16, 2), (16, 32, 2), (32, 64, 2), (64, 64, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in widths:
            layers += [
                nn.Conv2d(cin, cout, 3, stride, 1),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, groups=cout),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def badly_scaled(seed: int = 0) -> DepthwiseSeparable:
    torch.manual_seed(seed)
    net = DepthwiseSeparable().eval()
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # He initialization and no biases, so the signal (not the biases) carries through the
        # depth, as in a trained network, and a flattened channel shows at the output.
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=generator)
            conv.bias.zero_()
        for conv, depthwise in zip(convs[0::2], convs[1::2]):
            n = conv.out_channels
            # Half the channels at 10^-2, half at 10^+2: the small half falls below one step
            # of a per-tensor grid sized for the large half.
            k = 10 ** (SPREAD * (torch.randperm(n, generator=generator) % 2 - 0.5))
            conv.weight.mul_(k[:, None, None, None])
            conv.bias.mul_(k)
            depthwise.weight.div_(k[:, None, None, None])
    return net


def write_depthwise(folder: Path, size: int = 64) -> Path:
    return export_onnx(badly_scaled(), torch.zeros(1, 3, size, size), folder / "dwsep.onnx")
