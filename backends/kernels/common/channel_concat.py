"""Concatenation along the NHWC channel axis as a written copy kernel, and its interleaving
form (a channel shuffle of a concatenation).

In NHWC the channels are the innermost axis, so TVM's concatenate chooses its source per
element (`if c < C0: a else b`) and one untimed schedule of it copied 387 KB in 0.2 ms
(SqueezeNet's fire modules: 12% of its int8 time). Here each pixel copies each input's channel
run in a plain loop of its own, which LLVM turns into vector moves: 0.02 ms for the same copy.
The kernel is written, not scheduled: nothing fuses into it and no schedule is searched for it.

ShuffleNet concatenates its grouped conv's G outputs and then shuffles the channels (channel
j of group g goes to j * G + g): channel_interleave does both in one copy, each pixel's
output written in order from G runs read in step.
"""

from __future__ import annotations

OPAQUE = 8  # relax's OpPatternKind kOpaque
WRITTEN = "edgepress.written"  # PrimFunc attribute: a kernel written here, scheduled as it is
# PrimFunc attribute: a written kernel's FLOPs, where TVM's estimate cannot see them (the AMX
# conv's tile intrinsics); relax/pipeline reports them and the profile's rates use them
FLOPS_ATTR = "edgepress.flops"
CONCAT_NAME = "concat_channels"  # the name its functions are added under (a number may follow)


def channel_concat(shapes: list[tuple[int, int, int, int]], dtype: str):
    """The PrimFunc concatenating NHWC tensors of `shapes` (same N, H, W) along C."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    n, h, w, _ = shapes[0]
    total = sum(shape[3] for shape in shapes)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_attr(
                {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE, WRITTEN: True}
            )
            inputs = [T.arg(f"x{i}", T.Buffer(shape, dtype)) for i, shape in enumerate(shapes)]
            out = T.arg("out", T.Buffer((n, h, w, total), dtype))
            with T.sblock("root"):
                with T.parallel(0, n * h) as row:
                    with T.serial(0, w) as col:
                        start = 0
                        for i, (x, shape) in enumerate(zip(inputs, shapes, strict=True)):
                            with T.serial(0, shape[3]) as c:
                                with T.sblock(f"copy{i}"):
                                    vn = T.axis.spatial(n, row // h)
                                    vh = T.axis.spatial(h, row % h)
                                    vw = T.axis.spatial(w, col)
                                    vc = T.axis.spatial(shape[3], c)
                                    T.reads(x[vn, vh, vw, vc])
                                    T.writes(out[vn, vh, vw, start + vc])
                                    T.buffer_store(out, x[vn, vh, vw, vc], [vn, vh, vw, start + vc])
                            start += shape[3]
    return builder.get()


def channel_interleave(shape: tuple[int, int, int, int], groups: int, dtype: str):
    """The PrimFunc writing `groups` NHWC tensors of `shape` interleaved along C: output
    channel j * groups + g is input g's channel j."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    n, h, w, c = shape
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_attr(
                {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE, WRITTEN: True}
            )
            inputs = [T.arg(f"x{i}", T.Buffer(shape, dtype)) for i in range(groups)]
            out = T.arg("out", T.Buffer((n, h, w, c * groups), dtype))
            with T.sblock("root"):
                with T.parallel(0, n * h) as row:
                    with T.serial(0, w) as col:
                        with T.serial(0, c) as j:
                            for g, x in enumerate(inputs):
                                with T.sblock(f"interleave{g}"):
                                    vn = T.axis.spatial(n, row // h)
                                    vh = T.axis.spatial(h, row % h)
                                    vw = T.axis.spatial(w, col)
                                    vj = T.axis.spatial(c, j)
                                    T.reads(x[vn, vh, vw, vj])
                                    T.writes(out[vn, vh, vw, vj * groups + g])
                                    T.buffer_store(
                                        out, x[vn, vh, vw, vj], [vn, vh, vw, vj * groups + g]
                                    )
    return builder.get()


def _static_shapes(fields) -> list[tuple[int, ...]] | None:
    shapes = []
    for field in fields:
        dims = getattr(getattr(field.ty, "shape", None), "values", None)
        try:
            shapes.append(tuple(int(d) for d in dims))
        except TypeError:  # no shape, or a symbolic dimension
            return None
    return shapes


def emit_channel_interleave(builder, fields):
    """The call of channel_interleave on `fields` (NHWC Relax values of one static shape and
    dtype), or None where they are not such."""
    from tvm import relax

    shapes = _static_shapes(fields)
    dtypes = {str(field.ty.dtype) for field in fields}
    if shapes is None or len(dtypes) != 1 or len(set(shapes)) != 1 or len(shapes[0]) != 4:
        return None
    (dtype,), (shape,) = dtypes, set(shapes)
    n, h, w, c = shape
    out = relax.TensorType((n, h, w, c * len(fields)), dtype)
    gv = builder.add_func(channel_interleave(shape, len(fields), dtype), "interleave_channels")
    return relax.call_tir(gv, relax.Tuple(list(fields)), out)


def emit_channel_concat(builder, fields):
    """The call of channel_concat on `fields` (NHWC Relax values of static shapes and one
    dtype), or None where they are not such."""
    from tvm import relax

    shapes = _static_shapes(fields)
    dtypes = {str(field.ty.dtype) for field in fields}
    if shapes is None or len(dtypes) != 1:
        return None
    if any(len(s) != 4 or s[:3] != shapes[0][:3] for s in shapes):
        return None
    (dtype,) = dtypes
    n, h, w, _ = shapes[0]
    out = relax.TensorType((n, h, w, sum(s[3] for s in shapes)), dtype)
    gv = builder.add_func(channel_concat(shapes, dtype), CONCAT_NAME)
    return relax.call_tir(gv, relax.Tuple(list(fields)), out)
