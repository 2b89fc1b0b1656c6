"""A small vision transformer (ViT-Tiny's width, 4 layers): the MatMul-heavy model of the
examples, where the bundled CNNs are convolution-heavy.

Patch embedding (a 16x16 stride-16 conv: 196 tokens of 192), a class token and learned
positions, then 4 pre-norm blocks of multi-head attention (3 heads of 64: Q, K, V and output
projections, Q K^T, softmax, times V) and an MLP (192 -> 768 -> 192, GELU), a final
LayerNorm and a 1000-way head on the class token. Attention is written out as MatMuls (no
fused attention op), as PyTorch exporters emit it for most real transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgepress.models.export import export_onnx

DIM, DEPTH, HEADS, MLP, PATCH, IMAGE = 192, 4, 3, 768, 16, 224


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, DIM))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(DIM, MLP), nn.GELU(), nn.Linear(MLP, DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, PATCH, PATCH)
        tokens = (IMAGE // PATCH) ** 2 + 1
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens, DIM))
        self.blocks = nn.Sequential(*(Block() for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny(seed: int = 0) -> VisionTransformer:
    """Seeded random weights (LayerNorms with non-trivial scales and shifts), in eval mode."""
    torch.manual_seed(seed)
    model = VisionTransformer()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
    return model.eval()


def write_vit_tiny(folder: Path, seed: int = 0) -> list[Path]:
    return [
        export_onnx(vit_tiny(seed), torch.zeros(1, 3, IMAGE, IMAGE), folder / "vit_tiny.onnx")
    ]
