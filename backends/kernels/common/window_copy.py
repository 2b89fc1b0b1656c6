"""Zero-padding and cropping of a [batch, rows, columns] tensor as one written copy kernel.

batch_matmul pads its operands to whole register tiles and crops its result; TVM's pad and
strided_slice (behind reshapes) with an untimed sample took 0.6 ms and 1.0 ms a call on a
ViT-Tiny's 3 x 197 x 197 attention scores, more than the matmul. Here each row copies the
columns both shapes have and zero-fills the rest in plain loops, which LLVM vectorizes.
"""

from __future__ import annotations

from edgepress.backends.kernels.common.channel_concat import OPAQUE, WRITTEN


def window_copy(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int], dtype: str):
    """The PrimFunc out[b, i, j] = x[b, i, j] inside both shapes, 0 outside x."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    batch, rows, columns = out_shape
    in_rows, in_columns = in_shape[1:]
    shared = min(columns, in_columns)
    zero = T.Cast(dtype, 0)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_attr(
                {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE, WRITTEN: True}
            )
            x = T.arg("x", T.Buffer(in_shape, dtype))
            out = T.arg("out", T.Buffer(out_shape, dtype))

            def store(name: str, b, i, first: int, last: int, copy: bool) -> None:
                """out[b, i, first:last] = x's values (copy) or zeros, in a plain loop."""
                with T.serial(first, last) as j:
                    with T.sblock(name):
                        vb = T.axis.spatial(batch, b)
                        vi = T.axis.spatial(rows, i)
                        vj = T.axis.spatial(columns, j)
                        T.buffer_store(out, x[vb, vi, vj] if copy else zero, [vb, vi, vj])

            with T.sblock("root"):
                with T.parallel(0, batch * rows) as row:
                    b, i = row // rows, row % rows
                    with T.If(i < in_rows):
                        with T.Then():
                            store("copy", b, i, 0, shared, copy=True)
                            if columns > shared:
                                store("zero_columns", b, i, shared, columns, copy=False)
                        with T.Else():
                            store("zero_rows", b, i, 0, columns, copy=False)
    return builder.get()


def emit_window_copy(builder, x, out_shape: tuple[int, int, int]):
    """The call of window_copy taking `x` ([batch, rows, columns], static) to `out_shape`."""
    from tvm import relax

    in_shape = tuple(int(d) for d in x.ty.shape)
    dtype = str(x.ty.dtype)
    gv = builder.add_func(window_copy(in_shape, tuple(out_shape), dtype), "window_copy")
    return relax.call_tir(gv, relax.Tuple([x]), relax.TensorType(tuple(out_shape), dtype))
