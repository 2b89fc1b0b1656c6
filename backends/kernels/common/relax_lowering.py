"""What both lowerings (float/lowering, int8/lowering) share on the Relax side: the layer
record of the report, the reason an op stays with TVM, constants, opaque TE calls, and max
pooling on NHWC values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepress.backends.kernels.common.nhwc_compute import max_pool2d
from edgepress.backends.kernels.common.nhwc_rewriter import op_name


class Bindings:
    """A function's bindings, indexed once: var -> bound value, var -> the vars whose values
    read it (in binding order), and var -> number of uses (the function's result counts)."""

    def __init__(self, func) -> None:
        from tvm import relax

        self.value: dict = {}
        self.users: dict = {}
        self.uses: dict = {}

        def read(var, user) -> None:
            if isinstance(var, relax.Var):
                self.uses[var] = self.uses.get(var, 0) + 1
                if user is not None:
                    self.users.setdefault(var, []).append(user)

        for block in func.body.blocks:
            for binding in block.bindings:
                self.value[binding.var] = binding.value
                for arg in getattr(binding.value, "args", ()):
                    for used in arg.fields if isinstance(arg, relax.Tuple) else (arg,):
                        read(used, binding.var)
        body = func.body.body
        for var in body.fields if isinstance(body, relax.Tuple) else (body,):
            read(var, None)

    def producer(self, expr, op: str):
        """The call bound to `expr` if it is a call of `op`, else None."""
        value = self.value.get(expr)
        return value if value is not None and op_name(value) == op else None

    def consumers(self, var) -> list:
        """The vars whose values read `var` (once each)."""
        return list(dict.fromkeys(self.users.get(var, [])))


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


@dataclass(frozen=True)
class LayerLowering:
    """One float-compute op of the module: how it was lowered, or why not."""

    index: int  # its place among the module's conv2d/conv2d_transpose/matmul calls
    op: str  # "conv2d", "conv2d_transpose", "matmul"
    kernel: str | None  # "dot-product", "depthwise" or None (stayed float)
    reason: str | None = None
    node: str | None = None  # the ONNX node it was imported from (relax/importer.py)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "node": self.node,
            "op": self.op,
            "kernel": self.kernel,
            "reason": self.reason,
        }


class NotLowered(Exception):
    """Why an op keeps TVM's kernel (the message goes into the report)."""


def constant(expr, what: str) -> np.ndarray:
    value = getattr(expr, "value", None)
    if value is None or not hasattr(value, "numpy"):
        raise NotLowered(f"{what} is not a constant")
    return value.numpy()


OPAQUE = 8  # relax's OpPatternKind kOpaque


def opaque_call_te(builder, compute, *args, **kwargs):
    """builder.call_te, with the kernel kept out of operator fusion. The max-pool kernel is an
    elementwise loop nest to FuseOps, which would fuse the next conv's activation packing into
    it; the fused function loses the kernel's schedule (3-5x slower, measured on the same
    kernel shape for depthwise convs)."""
    call = builder.call_te(compute, *args, **kwargs)
    func = builder.get()[call.args[0]]
    builder.update_func(call.args[0], func.with_attr("op_pattern", OPAQUE))
    return call


def nhwc_pool(call) -> bool:
    """Whether nhwc_compute.max_pool2d (NHWC, any dtype) takes this call: TOPI's pool ran 6x
    slower. Any binding value may be asked (a TupleGetItem has no attrs)."""
    if op_name(call) != "relax.nn.max_pool2d":
        return False
    attrs = call.attrs
    return (
        str(attrs.layout) == str(attrs.out_layout) == "NCHW"
        and not attrs.ceil_mode
    )


def emit_pool(builder, call, x_nhwc):
    """NCHW max pooling as nhwc_compute.max_pool2d on the NHWC input (8-bit or float)."""
    attrs = call.attrs
    return opaque_call_te(
        builder,
        max_pool2d,
        x_nhwc,
        pool_size=tuple(int(v) for v in attrs.pool_size),
        strides=tuple(int(v) for v in attrs.strides),
        padding=tuple(int(v) for v in attrs.padding),
        dilation=tuple(int(v) for v in attrs.dilation),
        primfunc_name_hint=f"max_pool2d_{'float' if 'float' in _dtype(x_nhwc) else 'int8'}",
    )
