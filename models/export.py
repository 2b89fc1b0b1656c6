"""torch -> ONNX export shared by the reference models (torch is imported here, nowhere else)."""

from __future__ import annotations

from pathlib import Path

import torch


def randomize_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial statistics, so BN folding is exercised for real."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = False,
    keep_batchnorm: bool = False,
) -> Path:
    """TorchScript-based export (dynamo=False): one self-contained file at the given opset.

    torch folds BatchNorm into the Conv before it when exporting in eval mode; keep_batchnorm
    leaves it as BatchNormalization nodes (TrainingMode.PRESERVE on an eval model), as other
    exporters do, for the fusion passes' benchmarks.
    """
    model.eval()
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes,
            training=(
                torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
            ),
        )
    return path
