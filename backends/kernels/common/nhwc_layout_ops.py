"""The data-movement ops between kernels, re-emitted on NHWC values.

Real models put Concat (SqueezeNet's fire modules, Inception, every FPN), Resize (a detector's
upsampling), Slice and Split (YOLO's C2f blocks), and pooling between their convolutions. TVM
imports each as NCHW, so between two NHWC kernels each cost a transpose on the way in and one
on the way out (SqueezeNet int8: a fifth of its time). Each op here means the same on the NHWC
value with its channel/height/width axes renamed; nhwc_rewriter calls these where the op's
input already has an NHWC value.
"""

from __future__ import annotations

from edgepress.backends.kernels.common.channel_concat import emit_channel_concat
from edgepress.backends.kernels.common.nhwc_compute import avg_pool2d
from edgepress.backends.kernels.common.nhwc_rewriter import TO_NHWC
from edgepress.backends.kernels.common.relax_lowering import opaque_call_te


def nhwc_axis(axis: int) -> int:
    """The NHWC axis of an NCHW axis (negative ones counted from the end)."""
    return TO_NHWC.index(axis % 4)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def resize2d(builder, value, x):
    """An NCHW resize2d of `x` (NHWC): the same resize with layout NHWC (roi and size are in
    (H, W) either way)."""
    from tvm import relax

    attrs = value.attrs
    if str(attrs.layout) != "NCHW":
        return None
    return relax.op.image.resize2d(
        x,
        value.args[1],
        roi=tuple(float(r) for r in attrs.roi),
        layout="NHWC",
        method=str(attrs.method),
        coordinate_transformation_mode=str(attrs.coordinate_transformation_mode),
        rounding_method=str(attrs.rounding_method),
        cubic_alpha=float(attrs.cubic_alpha),
        cubic_exclude=int(attrs.cubic_exclude),
        extrapolation_value=float(attrs.extrapolation_value),
        out_dtype=str(attrs.out_dtype) if attrs.out_dtype is not None else None,
    )


def pool2d(builder, value, x):
    """An NCHW average or max pool of `x` (NHWC): a float average pool as nhwc_compute's
    avg_pool2d kernel, the rest (ceil mode, 8-bit averages, the max pools edgepress's max-pool
    kernel does not take) as TVM's pool with layout NHWC."""
    from tvm import relax

    attrs = value.attrs
    if not str(attrs.layout) == str(attrs.out_layout) == "NCHW":
        return None
    common = dict(
        pool_size=_ints(attrs.pool_size),
        strides=_ints(attrs.strides),
        padding=_ints(attrs.padding),
        dilation=_ints(attrs.dilation),
        ceil_mode=bool(attrs.ceil_mode),
        layout="NHWC",
        out_layout="NHWC",
    )
    if value.op.name == "relax.nn.avg_pool2d":
        if str(x.ty.dtype) == "float32" and not attrs.ceil_mode:
            return opaque_call_te(
                builder,
                avg_pool2d,
                x,
                pool_size=tuple(common["pool_size"]),
                strides=tuple(common["strides"]),
                padding=tuple(common["padding"]),
                dilation=tuple(common["dilation"]),
                count_include_pad=bool(attrs.count_include_pad),
                primfunc_name_hint="avg_pool2d_float",
            )
        return relax.op.nn.avg_pool2d(
            x, count_include_pad=bool(attrs.count_include_pad), **common
        )
    return relax.op.nn.max_pool2d(x, **common)


def strided_slice(builder, value, x):
    """A slice of `x` (NHWC) along the renamed axes; None unless its axes are constants."""
    from tvm import relax

    axes = value.args[1]
    if not isinstance(axes, relax.Tuple):
        return None
    try:
        renamed = [nhwc_axis(int(a.value)) for a in axes.fields]
    except (AttributeError, TypeError):
        return None
    return relax.op.strided_slice(
        x,
        renamed,
        value.args[2],
        value.args[3],
        value.args[4] if len(value.args) > 4 else None,
        assume_inbound=bool(value.attrs.assume_inbound),
    )


def split(builder, value, x):
    """A split of `x` (NHWC) along the renamed axis: a tuple of NHWC values."""
    from tvm import relax

    attrs = value.attrs
    sections = attrs.indices_or_sections  # a number of sections, or the indices to split at
    sections = _ints(sections) if hasattr(sections, "__len__") else int(sections)
    return relax.op.split(x, sections, axis=nhwc_axis(int(attrs.axis)))


def concat(builder, value, fields):
    """A concat of NHWC `fields` along the renamed axis: along the channels (the innermost
    axis), channel_concat's copy kernel where the shapes are static."""
    from tvm import relax

    axis = nhwc_axis(int(value.attrs.axis))
    call = emit_channel_concat(builder, fields) if axis == 3 else None
    return call if call is not None else relax.op.concat(fields, axis=axis)


# One-input ops: op name -> the NHWC call (None where this instance cannot be renamed).
SINGLE_INPUT = {
    "relax.image.resize2d": resize2d,
    "relax.nn.avg_pool2d": pool2d,
    "relax.nn.max_pool2d": pool2d,
    "relax.strided_slice": strided_slice,
}
