"""The Relax rewriter that lets kernels pass NHWC activations from one to the next.

TVM imports ONNX as NCHW. The kernels edgepress emits for convolutions (int8_lowering's
integer ones, float/lowering's float ones) read and write NHWC: channels innermost are what
their register tiles vectorize. Each rewritten binding stays NCHW (a transpose of the kernel's
result) for whatever else reads it; `nhwc` maps it to the NHWC value, which the next kernel
reads instead, and transposes that nothing reads are dead code afterwards. Between kernels,
elementwise ops (a residual add, relu, clip, sigmoid, an int8 residual's dequantize and
quantize), concat, split, resize, slices, pooling and a global average pool run on the NHWC
values too, so that no transpose sits between two kernels.

What a lowering rewrites is its own (`lower`); this module holds what both share.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgepress.backends.kernels.common.nhwc_schedules import MEAN_VECTOR

# Elementwise ops between the kernels that run on the NHWC values where their tensor operands
# all have them (the others per tensor, so that broadcasting means the same in both layouts).
ELEMENTWISE_OPS = (
    "relax.dequantize",
    "relax.quantize",
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.maximum",
    "relax.minimum",
    "relax.divide",
    "relax.nn.relu",
    "relax.nn.leakyrelu",
    "relax.nn.silu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.clip",
    # unary activations: SiLU's sigmoid (a YOLO detector's every layer), HardSwish's divide;
    # left NCHW, each cost two transposes around it between int8 kernels
    "relax.sigmoid",
    "relax.tanh",
    "relax.exp",
    "relax.erf",
    "relax.negative",
    "relax.abs",
    "relax.sqrt",
    # a dynamic quantization's rounding and casts (onnxruntime's quantize_dynamic before every
    # conv): left NCHW, they put two transposes around each conv
    "relax.astype",
    "relax.round",
    "relax.floor",
    "relax.ceil",
)
# Binary ops that broadcast: an operand of rank 4 the kernels do not have in NHWC (a bias of
# shape [1, C, 1, 1] added after a conv without one) is transposed like the others (folded,
# where it is a constant), which keeps broadcasting the same; lower ranks are first reshaped
# to rank 4, as NumPy broadcasting reads them.
BROADCASTING_OPS = frozenset(
    {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
     "relax.minimum"}
)  # fmt: skip
# Activations between a grouped conv's concatenation and a channel shuffle, applied to each
# group's output instead, so that the shuffle interleaves the groups (channel_interleave).
SHUFFLED_ACTIVATIONS = frozenset({"relax.nn.relu", "relax.clip", "relax.nn.leakyrelu"})
# Reductions over every axis: the same in any layout.
FULL_REDUCTIONS = frozenset({"relax.max", "relax.min", "relax.sum", "relax.mean"})
# TVM's ONNX importer emits Clip (opset 11+, bounds as inputs) as call_tir of TOPI's maximum
# and minimum PrimFuncs, named so: they run as the Relax ops of the same name.
ELEMENTWISE_PRIMFUNCS = ("maximum", "minimum")
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
# A sequence model's 1-D conv (conv_along_width's reshapes around a 2-D one) leaves rank-3
# [N, C, L] values between kernels; the kernels have them as [N, 1, L, C], a row of L pixels:
# the bytes of the conv's own NHWC output, so what follows it fuses into it.
CHANNELS_LAST_RANKS = (3, 4)
# DepthToSpace as TVM's importer writes it: a reshape to rank 6, a transpose with one of these
# axes orders, a reshape back to rank 4 (depth_to_space_in_nhwc).
DEPTH_TO_SPACE_AXES = {(0, 3, 4, 1, 5, 2): "DCR", (0, 1, 4, 2, 5, 3): "CRD"}
# Reshapes whose channels-last value is a reshape too, where they keep N and C in front.
RESHAPE_OPS = frozenset({"relax.reshape", "relax.squeeze", "relax.expand_dims"})
# Reductions over the spatial axes of a channels-last value (a global max pool, a global
# average pool), as edgepress's per-channel-vector kernel (nhwc_compute.column_reduce).
SPATIAL_REDUCTIONS = {"relax.max": "max", "relax.min": "min", "relax.sum": "sum"}
# A reduction over middle axes of any float value whose kept inner axes hold this many floats
# or more runs as that kernel too, over [outer, reduced, inner]: the inner axes as a row of
# vectors (magika's LayerNorm over 512 positions of 256 channels: 0.42 ms in TVM's sample at
# 0.7 GFLOP/s, which summed along the strided axis one element at a time).
COLUMN_MIN_INNER = 16
# A full reduction of a float value this large goes through column_reduce as rows of
# MEAN_VECTOR floats (one AVX-512 register; four NEON ones), then reduces those.
FULL_MIN_SIZE = 4096


def channels_last_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the kernels have an [N, C, H, W] or [N, C, L] value in: [N, H, W, C] or
    [N, 1, L, C]."""
    if len(shape) == 3:
        n, c, length = shape
        return (n, 1, length, c)
    n, c, h, w = shape
    return (n, h, w, c)


def op_name(expr) -> str | None:
    op = getattr(expr, "op", None)
    return getattr(op, "name", None)


def static_shape(expr) -> tuple[int, ...] | None:
    """The tensor's shape, if every dimension is a constant."""
    dims = getattr(getattr(expr.ty, "shape", None), "values", None)
    try:
        return None if dims is None else tuple(int(d) for d in dims)
    except TypeError:  # a symbolic dimension
        return None


def is_scalar(expr) -> bool:
    """A per-tensor operand: a value that is not a tensor (clip's bounds) or a tensor of one
    element (a scale, a zero point), which broadcasts the same in any layout."""
    import tvm

    if isinstance(expr.ty, tvm.ir.PrimType):
        return True
    dims = getattr(getattr(expr.ty, "shape", None), "values", None)
    try:
        return dims is not None and all(int(d) == 1 for d in dims)
    except TypeError:  # a symbolic dimension
        return False


def _elementwise_call(value):
    """(Relax op, args, attrs) of an elementwise binding the rewriter may move to NHWC, else
    None."""
    import tvm
    from tvm import relax

    name = op_name(value)
    if name in ELEMENTWISE_OPS:
        return value.op, list(value.args), value.attrs
    if name == "relax.call_tir" and isinstance(value.args[1], relax.Tuple):
        callee = value.args[0].name_hint.rstrip("0123456789")
        if callee in ELEMENTWISE_PRIMFUNCS and len(value.args[1].fields) == 2:
            return tvm.ir.Op.get(f"relax.{callee}"), list(value.args[1].fields), None
    return None


def rewrite(mod, lower: Callable, *, layouts: bool = True):
    """`mod` with its `main` rewritten: `lower(rewriter, binding) -> bool` emits a lowering's
    kernels for the bindings it takes (using the rewriter's `nhwc`, `to_nhwc`, `bind`); the
    rest go to NHWC where they can (elementwise ops, spatial means, nhwc_layout_ops' concat,
    split, resize, slice and pooling) or stay as they are. Dead code is removed.

    Without `layouts` the rest stay as they are: for a lowering that runs before another
    (int8/integer_matmul's), whose rewrite then sees the reductions and layout ops whole (a
    full reduction rewritten here would read the NCHW value the next rewrite's kernels
    make NHWC, through a transpose back)."""
    from tvm import relax

    from edgepress.backends.kernels.common import nhwc_layout_ops
    from edgepress.backends.kernels.common.channel_concat import (
        CONCAT_NAME,
        emit_channel_interleave,
    )
    from edgepress.backends.kernels.common.nhwc_compute import (
        column_reduce,
        depth_to_space,
        full_reduce,
        spatial_mean,
    )

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod) -> None:
            super().__init__(mod)
            self.nhwc: dict = {}
            self.nhwc_tuples: dict = {}  # a split's NCHW tuple -> its NHWC tuple
            self.reshaped: dict = {}  # an NHWC reshape (reshape_in_nhwc's) -> what it reshapes
            self.original: dict = {}  # the function's own bindings seen so far: var -> value

        def to_nhwc(self, x):
            if x not in self.nhwc:
                self.nhwc[x] = self.builder_.emit(relax.op.permute_dims(x, TO_NHWC))
            return self.nhwc[x]

        def emit_as(self, var, value):
            """`value` bound to a new var of `var`'s kind: a dataflow var, or one the function
            may return (a model output bound inside the dataflow block)."""
            if isinstance(var, relax.DataflowVar):
                return self.builder_.emit(value)
            return self.builder_.emit_output(value)

        def bind(self, var, value_nhwc):
            """`var` is now the NCHW transpose of `value_nhwc` (an NHWC kernel's call, or a
            value bound already); for a rank-3 `var`, reshaped from [N, C, 1, L]. Returns the
            NHWC var."""
            nhwc = value_nhwc
            if not isinstance(nhwc, relax.Var):
                nhwc = self.builder_.emit(value_nhwc)
            nchw = relax.op.permute_dims(nhwc, TO_NCHW)
            shape = static_shape(var)
            if shape is not None and len(shape) == 3:
                nchw = relax.op.reshape(self.builder_.emit(nchw), shape)
            nchw = self.emit_as(var, nchw)
            self.nhwc[nchw] = nhwc
            self.set_var_remap(var, nchw)
            return nhwc

        def elementwise_in_nhwc(self, binding) -> bool:
            shape = getattr(binding.var.ty, "shape", None)
            found = _elementwise_call(binding.value)
            ndim = len(shape or ())
            if found is None or ndim not in CHANNELS_LAST_RANKS:
                return False
            if ndim == 3 and static_shape(binding.var) is None:  # bind reshapes it to that
                return False
            op, args, attrs = found
            args = [self.visit_expr(a) for a in args]
            if not any(a in self.nhwc for a in args):
                return False
            if any(a in self.nhwc and int(a.ty.ndim) != ndim for a in args):
                return False
            if op.name in BROADCASTING_OPS:
                args = [self.broadcast_nhwc(a, ndim) for a in args]
                if any(a is None for a in args):
                    return False
            elif not all(a in self.nhwc or is_scalar(a) for a in args):
                return False
            args = [self.nhwc.get(a, a) for a in args]
            self.bind(binding.var, relax.Call(op, args, attrs))
            return True

        def broadcast_nhwc(self, x, ndim: int = 4):
            """An operand of a broadcasting op of rank `ndim` as the kernels have it: as it
            is (NHWC already, or one element), else reshaped to rank `ndim` as NumPy reads it
            (and a rank-3 [a, b, c] to [a, b, 1, c]) and transposed; None for a shape that is
            not static."""
            if x in self.nhwc or is_scalar(x):
                return x
            shape = static_shape(x)
            if shape is None or len(shape) > ndim:
                return None
            shape = (1,) * (ndim - len(shape)) + shape
            if ndim == 3:
                shape = (*shape[:2], 1, shape[2])
            if shape != static_shape(x):
                x = self.builder_.emit(relax.op.reshape(x, shape))
            return self.builder_.emit(relax.op.permute_dims(x, TO_NHWC))

        def full_reduction(self, binding) -> bool:
            """max, min, sum or mean over every axis (a dynamic quantization's range) of a
            value the kernels have in NHWC: the same reduction of the NHWC value. Of a float
            value of FULL_MIN_SIZE elements or more (NHWC or not) in whole vectors: full_reduce
            of it as [1, size / 16, 16] (one vector per row: column_reduce, then the 16 lanes;
            of 16 equal groups, the mean is the mean of their means). TVM's sample of a full
            max ran at 2.5 GFLOP/s, 1 ms of ddddocr's LSTM model."""
            value = binding.value
            name = op_name(value)
            if name not in FULL_REDUCTIONS:
                return False
            x = self.visit_expr(value.args[0])
            axes = value.attrs.axis
            ndim = getattr(x.ty, "ndim", -1)
            if ndim < 1:
                return False
            if axes is not None and sorted(int(a) % ndim for a in axes) != list(range(ndim)):
                return False
            source = self.nhwc.get(x, x)
            shape = static_shape(source)
            size = int(np.prod(shape, dtype=np.int64)) if shape is not None else 0
            vector = MEAN_VECTOR
            if str(x.ty.dtype) == "float32" and size >= FULL_MIN_SIZE and size % vector == 0:
                rows = self.builder_.emit(relax.op.reshape(source, (1, size // vector, vector)))
                kind = name.rsplit(".", 1)[-1]
                call = self.builder_.call_te(
                    full_reduce, rows, kind=kind, shape=static_shape(binding.var),
                    primfunc_name_hint=f"all_{kind}",
                )  # fmt: skip
            elif x in self.nhwc and ndim in CHANNELS_LAST_RANKS:
                call = relax.Call(value.op, [source], value.attrs)
            else:
                return False
            self.set_var_remap(binding.var, self.emit_as(binding.var, call))
            return True

        def spatial_reduction_in_nhwc(self, binding) -> bool:
            """A global average or max pool (mean, max, min or sum over every spatial axis)
            of a value the kernels have channels-last: the reduction over its pixels, channels
            innermost (nhwc_compute's spatial_mean, column_reduce), no transpose. With
            keepdims, [N, 1, ..., C] and [N, C, 1, ...] are the same bytes, so the NCHW value
            is a reshape."""
            value = binding.value
            name = op_name(value)
            if name != "relax.mean" and name not in SPATIAL_REDUCTIONS:
                return False
            if value.attrs.axis is None:
                return False
            x = self.visit_expr(value.args[0])
            ndim = getattr(x.ty, "ndim", -1)
            if x not in self.nhwc or ndim not in CHANNELS_LAST_RANKS:
                return False
            if sorted(int(a) % ndim for a in value.attrs.axis) != list(range(2, ndim)):
                return False
            keepdims = bool(value.attrs.keepdims)
            if name == "relax.mean":  # [N, 1, 1, C] with keepdims: rank 3's [N, C, 1] too
                call = self.builder_.call_te(
                    spatial_mean, self.nhwc[x], keepdims=keepdims, primfunc_name_hint="mean"
                )
            else:
                n, h, w, c = (int(d) for d in self.nhwc[x].ty.shape)
                pixels = self.builder_.emit(relax.op.reshape(self.nhwc[x], (n, h * w, c)))
                kind = SPATIAL_REDUCTIONS[name]
                call = self.builder_.call_te(
                    column_reduce, pixels, kind=kind, primfunc_name_hint=f"column_{kind}"
                )
            reduced = self.builder_.emit(call)
            n, c = int(reduced.ty.shape[0]), int(reduced.ty.shape[-1])
            if not keepdims:  # [N, C] either way
                self.set_var_remap(binding.var, self.emit_as(binding.var, reduced))
                return True
            if int(reduced.ty.ndim) != 4:
                reduced = self.builder_.emit(relax.op.reshape(reduced, (n, 1, 1, c)))
            nchw = relax.op.reshape(reduced, (n, c, *(1,) * (ndim - 2)))
            nchw = self.emit_as(binding.var, nchw)
            self.nhwc[nchw] = reduced
            self.set_var_remap(binding.var, nchw)
            return True

        def column_reduction(self, binding) -> bool:
            """A mean, max, min or sum over contiguous middle axes of a float value with at
            least COLUMN_MIN_INNER elements inside them: column_reduce of the value as
            [outer, reduced, inner], which reduces whole vectors of the inner axes per reduced
            row, then reshaped to the result's shape."""
            value = binding.value
            name = op_name(value)
            if name != "relax.mean" and name not in SPATIAL_REDUCTIONS:
                return False
            x = self.visit_expr(value.args[0])
            shape, result = static_shape(x), static_shape(binding.var)
            if value.attrs.axis is None or shape is None or result is None:
                return False
            if str(getattr(x.ty, "dtype", "")) != "float32" or not shape:
                return False
            axes = sorted({int(a) % len(shape) for a in value.attrs.axis})
            if not axes or axes != list(range(axes[0], axes[-1] + 1)):
                return False
            if axes[-1] == len(shape) - 1:  # along the innermost axis: TVM's row reduction
                return False
            outer = int(np.prod(shape[: axes[0]], dtype=np.int64))
            reduced = int(np.prod(shape[axes[0] : axes[-1] + 1], dtype=np.int64))
            inner = int(np.prod(shape[axes[-1] + 1 :], dtype=np.int64))
            if inner < COLUMN_MIN_INNER:
                return False
            if shape != (outer, reduced, inner):  # else as it is: what made it fuses in
                x = self.builder_.emit(relax.op.reshape(x, (outer, reduced, inner)))
            kind = "mean" if name == "relax.mean" else SPATIAL_REDUCTIONS[name]
            call = self.builder_.call_te(
                column_reduce, x, kind=kind, primfunc_name_hint=f"column_{kind}"
            )
            out = relax.op.reshape(self.builder_.emit(call), result)
            self.set_var_remap(binding.var, self.emit_as(binding.var, out))
            return True

        def reshape_in_nhwc(self, binding) -> bool:
            """A reshape, squeeze or unsqueeze of a value the kernels have NHWC that keeps N
            and C in front and only relabels the spatial axes (a 1-D conv's [N, C, 1, L] <->
            [N, C, L], conv_along_width's): the same pixels in the same order, so a reshape of
            the NHWC value, or that value itself where the shapes agree (the conv's output,
            whose epilogue then fuses into it)."""
            value = binding.value
            if op_name(value) not in RESHAPE_OPS:
                return False
            x = self.visit_expr(value.args[0])
            before, after = static_shape(x), static_shape(binding.var)
            if x not in self.nhwc or before is None or after is None:
                return False
            if len(before) not in CHANNELS_LAST_RANKS or len(after) not in CHANNELS_LAST_RANKS:
                return False
            if before[:2] != after[:2]:
                return False
            origin = self.reshaped.get(self.nhwc[x], self.nhwc[x])
            target = channels_last_shape(after)
            same = static_shape(origin) == target
            nhwc = self.bind(binding.var, origin if same else relax.op.reshape(origin, target))
            self.reshaped[nhwc] = origin
            return True

        def layout_op_in_nhwc(self, binding) -> bool:
            """Concat, split (and its items), resize, slice and pooling of values the
            kernels have in NHWC, as the same op on the NHWC values (nhwc_layout_ops)."""
            value = binding.value
            if isinstance(value, relax.TupleGetItem):
                items = self.nhwc_tuples.get(self.visit_expr(value.tuple_value))
                # a batch norm's running mean and variance are read from its NCHW tuple
                if items is None or getattr(binding.var.ty, "ndim", -1) != 4:
                    return False
                self.bind(binding.var, relax.TupleGetItem(items, value.index))
                return True
            name = op_name(value)
            if name == "relax.concat":
                if not isinstance(value.args[0], relax.Tuple):
                    return False
                fields = [self.visit_expr(f) for f in value.args[0].fields]
                if not any(f in self.nhwc for f in fields):
                    return False
                if any(getattr(f.ty, "ndim", -1) != 4 for f in fields):
                    return False
                fields = [self.to_nhwc(f) for f in fields]
                self.bind(binding.var, nhwc_layout_ops.concat(self.builder_, value, fields))
                return True
            if name != "relax.split" and name not in nhwc_layout_ops.SINGLE_INPUT:
                return False
            x = self.visit_expr(value.args[0])
            if x not in self.nhwc or getattr(x.ty, "ndim", -1) != 4:
                return False
            if name == "relax.split":
                items = self.builder_.emit(
                    nhwc_layout_ops.split(self.builder_, value, self.nhwc[x])
                )
                nchw = self.emit_as(
                    binding.var, relax.Call(value.op, [x, *value.args[1:]], value.attrs)
                )
                self.nhwc_tuples[nchw] = items
                self.set_var_remap(binding.var, nchw)
                return True
            call = nhwc_layout_ops.SINGLE_INPUT[name](self.builder_, value, self.nhwc[x])
            if call is None:
                return False
            self.bind(binding.var, call)
            return True

        def batch_norm_in_nhwc(self, binding) -> bool:
            """An inference batch norm over the channels of a value the kernels have in NHWC
            (one that no conv before it could absorb: DenseNet's after each concatenation):
            the same batch norm over axis 3 of the NHWC value. Left NCHW, it ran between two
            transposes at 5% of the CPU's peak: 11 of DenseNet-121's 28 ms in int8."""
            value = binding.value
            if op_name(value) != "relax.nn.batch_norm" or bool(value.attrs.training):
                return False
            x = self.visit_expr(value.args[0])
            if x not in self.nhwc or getattr(x.ty, "ndim", -1) != 4:
                return False
            if int(value.attrs.axis) % 4 != 1:
                return False
            rest = [self.visit_expr(a) for a in value.args[1:]]
            a = value.attrs
            items = self.builder_.emit(relax.op.nn.batch_norm(
                self.nhwc[x], *rest, axis=3, epsilon=float(a.epsilon), center=bool(a.center),
                scale=bool(a.scale), momentum=float(a.momentum), training=False,
            ))  # fmt: skip
            nchw = self.emit_as(binding.var, relax.Call(value.op, [x, *rest], value.attrs))
            self.nhwc_tuples[nchw] = items
            self.set_var_remap(binding.var, nchw)
            return True

        def tokens_of_channels_last(self, binding) -> bool:
            """permute_dims(x, [0, 2, 1]) of an [N, C, L] value the kernels have as [N, 1,
            L, C] (a ViT's patch embedding, flattened and transposed to tokens): [N, L, C] is
            those bytes, so a reshape, not a transpose back and forth."""
            value = binding.value
            if op_name(value) != "relax.permute_dims" or value.attrs.axes is None:
                return False
            if [int(a) for a in value.attrs.axes] != [0, 2, 1]:
                return False
            x = self.visit_expr(value.args[0])
            result = static_shape(binding.var)
            if x not in self.nhwc or getattr(x.ty, "ndim", -1) != 3 or result is None:
                return False
            tokens = relax.op.reshape(self.nhwc[x], result)
            self.set_var_remap(binding.var, self.emit_as(binding.var, tokens))
            return True

        def channel_shuffle_in_nhwc(self, binding) -> bool:
            """reshape(permute_dims(reshape(x, [N, G, C/G, H, W]), [0, 2, 1, 3, 4]),
            [N, C, H, W]) (ShuffleNet's channel shuffle) of a value the kernels have in NHWC,
            as the same shuffle of its channels in NHWC: [N, H, W, G, C/G] swapped to
            [N, H, W, C/G, G]. The NCHW chain is dead code afterwards."""
            value = binding.value
            if op_name(value) != "relax.reshape" or len(static_shape(binding.var) or ()) != 4:
                return False
            swap = self.original.get(value.args[0])
            if op_name(swap) != "relax.permute_dims" or swap.attrs.axes is None:
                return False
            if [int(a) for a in swap.attrs.axes] != [0, 2, 1, 3, 4]:
                return False
            split = self.original.get(swap.args[0])
            if op_name(split) != "relax.reshape":
                return False
            x = self.visit_expr(split.args[0])
            grouped = static_shape(swap.args[0])
            if x not in self.nhwc or grouped is None or static_shape(x) is None:
                return False
            n, groups, per_group, h, w = grouped
            want = (n, groups * per_group, h, w)
            if static_shape(x) != want or static_shape(binding.var) != want:
                return False
            fields = self.concatenated(self.nhwc[x], groups, per_group)
            if fields is not None:
                call = emit_channel_interleave(self.builder_, fields)
                if call is not None:
                    self.bind(binding.var, call)
                    return True
            y = self.builder_.emit(relax.op.reshape(self.nhwc[x], (n, h, w, groups, per_group)))
            y = self.builder_.emit(relax.op.permute_dims(y, (0, 1, 2, 4, 3)))
            self.bind(binding.var, relax.op.reshape(y, (n, h, w, groups * per_group)))
            return True

        def depth_to_space_in_nhwc(self, binding) -> bool:
            """DepthToSpace (reshape(permute_dims(reshape(x, rank 6), DCR's or CRD's axes),
            [N, C, H*s, W*s]), as TVM imports it) of a value the kernels have in NHWC, as
            nhwc_compute.depth_to_space of the NHWC value. Left NCHW, ppocrv5-det's upsampling
            head (conv_transpose_as_depth_to_space's) ran between two transposes, gathering
            every element through five index divisions."""
            value = binding.value
            result = static_shape(binding.var)
            if op_name(value) != "relax.reshape" or result is None or len(result) != 4:
                return False
            moved = self.original.get(value.args[0])
            if op_name(moved) != "relax.permute_dims" or moved.attrs.axes is None:
                return False
            mode = DEPTH_TO_SPACE_AXES.get(tuple(int(a) for a in moved.attrs.axes))
            split = self.original.get(moved.args[0])
            if mode is None or op_name(split) != "relax.reshape":
                return False
            x = self.visit_expr(split.args[0])
            blocks, shape = static_shape(moved.args[0]), static_shape(x)
            if x not in self.nhwc or blocks is None or shape is None:
                return False
            if len(shape) != 4 or len(blocks) != 6:
                return False
            n, c, h, w = shape
            s = blocks[2]
            inner = (s, s, c // (s * s)) if mode == "DCR" else (c // (s * s), s, s)
            if c % (s * s) or blocks != (n, *inner, h, w):  # the importer's split of x
                return False
            if result != (n, c // (s * s), h * s, w * s):
                return False
            call = self.builder_.call_te(
                depth_to_space, self.nhwc[x], block=s, mode=mode,
                primfunc_name_hint="depth_to_space",
            )  # fmt: skip
            self.bind(binding.var, call)
            return True

        def concatenated(self, y, groups: int, per_group: int):
            """The NHWC values whose channel concatenation `y` is (through an activation,
            applied here to each), where there are `groups` of `per_group` channels each: a
            grouped conv's outputs (ShuffleNet's, before its shuffle). Else None."""
            value = self.builder_.lookup_binding(y)
            activation = None
            if op_name(value) in SHUFFLED_ACTIVATIONS:
                activation, value = value, self.builder_.lookup_binding(value.args[0])
            if op_name(value) != "relax.call_tir" or not isinstance(value.args[1], relax.Tuple):
                return None
            if not value.args[0].name_hint.startswith(CONCAT_NAME):
                return None
            fields = list(value.args[1].fields)
            if len(fields) != groups or any(
                (static_shape(f) or (0,))[-1] != per_group for f in fields
            ):
                return None
            if activation is not None:
                rest = list(activation.args[1:])
                fields = [
                    self.builder_.emit(relax.Call(activation.op, [f, *rest], activation.attrs))
                    for f in fields
                ]
            return fields

        def visit_var_binding_(self, binding) -> None:
            self.original[binding.var] = binding.value
            if not (lower(self, binding) or (layouts and self.in_channels_last(binding))):
                super().visit_var_binding_(binding)

        def layout_transpose(self, binding) -> bool:
            """A transpose between the two layouts: permute_dims(v, [0, 3, 1, 2]) of a rank-4
            value has v as its NHWC value (an earlier rewrite's NCHW view of its kernel's
            output: the int8 lowering runs before the float one), and permute_dims(v, [0, 2,
            3, 1]) of a value held in NHWC is that value. Without this, every boundary between
            an int8 and a float layer kept a transpose pair (a text detector with 49 layers
            kept float: 28 ms of its 100)."""
            value = binding.value
            if op_name(value) != "relax.permute_dims" or value.attrs.axes is None:
                return False
            axes = tuple(int(a) for a in value.attrs.axes)
            x = self.visit_expr(value.args[0])
            if getattr(x.ty, "ndim", -1) != 4 or axes not in (TO_NHWC, TO_NCHW):
                return False
            if axes == TO_NHWC:
                if x not in self.nhwc:
                    return False
                self.set_var_remap(binding.var, self.emit_as(binding.var, self.nhwc[x]))
                return True
            nchw = self.emit_as(binding.var, relax.op.permute_dims(x, TO_NCHW))
            self.nhwc[nchw] = x
            self.set_var_remap(binding.var, nchw)
            return True

        def in_channels_last(self, binding) -> bool:
            return (
                self.layout_transpose(binding)
                or self.elementwise_in_nhwc(binding)
                or self.spatial_reduction_in_nhwc(binding)
                or self.full_reduction(binding)
                or self.column_reduction(binding)
                or self.layout_op_in_nhwc(binding)
                or self.batch_norm_in_nhwc(binding)
                or self.channel_shuffle_in_nhwc(binding)
                or self.depth_to_space_in_nhwc(binding)
                or self.reshape_in_nhwc(binding)
                or self.tokens_of_channels_last(binding)
            )

    rewriter = Rewriter(mod)
    gv = mod.get_global_var("main")
    rewriter.builder_.update_func(gv, rewriter.visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
