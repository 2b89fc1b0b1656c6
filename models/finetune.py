"""Fine-tuning a pruned ONNX graph in PyTorch, on labelled data (`compress --finetune`).

The graph itself is run as a torch module: each node maps to its torch function, the weights
and biases of Conv, Gemm and MatMul become parameters, and the trained values are written back
into the same initializers. This covers the ops of the CNNs in models/ (the digits CNN is the
example); a graph with another op gets an error naming the node. Only this optional step needs
torch: compressing a model does not.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}


def _ints(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints) if attr.ints else attr.i
    return default


def _float(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


def _pads(node: onnx.NodeProto) -> tuple[list[int], bool]:
    """(torch padding, symmetric): ONNX pads are begins then ends."""
    pads = _ints(node, "pads", [0, 0, 0, 0])
    half = len(pads) // 2
    return pads[:half], pads[:half] == pads[half:]


def unsupported(model: onnx.ModelProto) -> list[str]:
    return [
        f"node '{n.name}' ({n.op_type})"
        for n in model.graph.node
        if n.op_type not in _OPS or n.domain not in ("", "ai.onnx")
    ]


def _op_table():
    import torch
    from torch.nn import functional as F

    def conv(node, x, w, b=None):
        pads, symmetric = _pads(node)
        if not symmetric:
            ends = _ints(node, "pads", None)[len(pads) :]
            x = F.pad(x, [p for pair in zip(reversed(pads), reversed(ends)) for p in pair])
            pads = [0] * len(pads)
        return F.conv2d(
            x,
            w,
            b,
            _ints(node, "strides", 1),
            pads,
            _ints(node, "dilations", 1),
            _ints(node, "group", 1),
        )

    def gemm(node, a, b, c=None):
        b = b.t() if _ints(node, "transB", 0) else b
        y = _float(node, "alpha", 1.0) * (a @ b)
        return y if c is None else y + _float(node, "beta", 1.0) * c

    def pool(kind):
        def run(node, x):
            pads, _ = _pads(node)
            kernel, stride = _ints(node, "kernel_shape", None), _ints(node, "strides", 1)
            if kind == "max":
                return F.max_pool2d(
                    x, kernel, stride, pads, ceil_mode=bool(_ints(node, "ceil_mode", 0))
                )
            include = bool(_ints(node, "count_include_pad", 0))
            return F.avg_pool2d(x, kernel, stride, pads, count_include_pad=include)

        return run

    def clip(node, x, low=None, high=None):
        low = low if low is not None else _float(node, "min", -np.inf)
        high = high if high is not None else _float(node, "max", np.inf)
        return torch.clamp(x, low, high)

    def reshape(node, x, shape):
        dims = [int(d) for d in shape]
        dims[0] = x.shape[0]  # the exported batch size is fixed at 1; train in batches
        return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])

    def bn(node, x, scale, bias, mean, var):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, _float(node, "epsilon", 1e-5))

    return {
        "Conv": conv,
        "Gemm": gemm,
        "MatMul": lambda node, a, b: a @ b,
        "Relu": lambda node, x: F.relu(x),
        "Sigmoid": lambda node, x: torch.sigmoid(x),
        "HardSigmoid": lambda node, x: torch.clamp(
            _float(node, "alpha", 0.2) * x + _float(node, "beta", 0.5), 0, 1
        ),
        "HardSwish": lambda node, x: F.hardswish(x),
        "Clip": clip,
        "Add": lambda node, a, b: a + b,
        "Sub": lambda node, a, b: a - b,
        "Mul": lambda node, a, b: a * b,
        "Div": lambda node, a, b: a / b,
        "MaxPool": pool("max"),
        "AveragePool": pool("avg"),
        "GlobalAveragePool": lambda node, x: x.mean(dim=(2, 3), keepdim=True),
        "GlobalMaxPool": lambda node, x: x.amax(dim=(2, 3), keepdim=True),
        "Flatten": lambda node, x: x.flatten(_ints(node, "axis", 1)),
        "Reshape": reshape,
        "Concat": lambda node, *xs: torch.cat(xs, dim=_ints(node, "axis", 0)),
        "BatchNormalization": bn,
        "Identity": lambda node, x: x,
    }


_OPS = {
    "Conv", "Gemm", "MatMul", "Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Add", "Sub",
    "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
    "Reshape", "Concat", "BatchNormalization", "Identity",
}  # fmt: skip


def torch_graph(model: onnx.ModelProto):
    """(forward, parameters): `forward(x)` runs the graph in torch on a batch `x` (the model's
    single input, batch axis free) and returns its first output as [batch, -1]; `parameters`
    maps initializer names to the trainable weights and biases of Conv, Gemm and MatMul."""
    import torch

    if missing := unsupported(model):
        raise ValueError(f"--finetune cannot run {', '.join(missing)} in PyTorch")
    if len(model.graph.input) != 1:
        raise ValueError("--finetune supports models with one input")
    table = _op_table()
    consts = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    trainable = {
        node.input[i]
        for node in model.graph.node
        if node.op_type in TRAINABLE
        for i in TRAINABLE[node.op_type]
        if i < len(node.input) and node.input[i] in consts
    }
    params = {name: torch.nn.Parameter(consts[name].float()) for name in sorted(trainable)}
    consts.update(params)
    input_name = model.graph.input[0].name
    output_name = model.graph.output[0].name

    def forward(x):
        values = dict(consts)
        values[input_name] = x
        for node in model.graph.node:
            args = [values[n] if n else None for n in node.input]
            values[node.output[0]] = table[node.op_type](node, *args)
        return values[output_name].reshape(x.shape[0], -1)

    return forward, params


def finetune(
    model: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    epochs: int = 10,
    lr: float = 3e-3,
    batch: int = 64,
    seed: int = 0,
) -> tuple[onnx.ModelProto, dict]:
    """Train the weights of `model` (first output: logits) with cross-entropy on `inputs`
    (one input, samples on a leading axis in front of the batch-1 model shape) and `labels`;
    returns the model with the trained initializers and the loss history."""
    try:
        import torch
    except ImportError as err:
        raise RuntimeError("--finetune needs PyTorch (pip install torch)") from err
    torch.manual_seed(seed)
    forward, params = torch_graph(model)
    (array,) = inputs.values()
    x = torch.from_numpy(array.reshape(array.shape[0], *array.shape[2:]).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(len(y), generator=generator).split(batch):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(forward(x[index]), y[index])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(y))
    tuned = onnx.ModelProto()
    tuned.CopyFrom(model)
    for init in tuned.graph.initializer:
        if init.name in params:
            array = params[init.name].detach().numpy().astype(numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    log.info("fine-tuned %d epochs: loss %.4f -> %.4f", epochs, losses[0], losses[-1])
    return tuned, {"epochs": epochs, "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1]}
