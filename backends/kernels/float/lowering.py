"""Float32 Conv, Gemm and MatMul with constant weights -> edgepress's NHWC kernels
(float_kernels), run on the imported Relax module before legalization.

TOPI's NCHW convolutions leave CPU builds far behind onnxruntime (float/compute says by how
much); this rewrite replaces each conv2d (and a following add of a per-channel constant: the
bias, folded into the kernel) by a register-tiled NHWC kernel, and lets activations stay NHWC
between kernels (nhwc_rewriter): relu, clip and residual adds run on the NHWC values and fuse
into the kernel before them; max pooling and the global average pool read NHWC too. A matmul
of [..., M, K] by a constant [K, N] is the 1x1 convolution of all its rows as pixels.

Every conv2d and matmul of the module is listed in the result, lowered or with the reason it
stayed with TVM's own kernels. Models with QDQ are int8/lowering's, not this rewrite's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edgepress.backends.kernels.common.channel_concat import emit_channel_concat
from edgepress.backends.kernels.common.dynamic_quantize import fuse_dynamic_quantization
from edgepress.backends.kernels.common.window_copy import emit_window_copy
from edgepress.backends.kernels.float.batch_matmul import ROWS as BATCH_ROWS
from edgepress.backends.kernels.float.batch_matmul import batch_matmul
from edgepress.backends.kernels.common.nhwc_compute import (
    output_size,
    pack_depthwise_weight,
    pad_nhwc,
    per_channel,
)
from edgepress.backends.kernels.common.relax_lowering import (
    Bindings,
    LayerLowering,
    NotLowered,
    constant,
    emit_pool,
    nhwc_pool,
    opaque_call_te,
)
from edgepress.backends.kernels.float.compute import (
    conv2d_nhwc,
    depthwise_conv2d_nhwc,
    narrow_pointwise,
    pack_conv_weight,
    winograd_input,
    winograd_output,
    winograd_tiles,
    winograd_weight,
)
from edgepress.backends.kernels.float.schedules import (
    loads_per_multiply_add,
    padded_width,
    tile_is_full,
)
from edgepress.backends.kernels.common.nhwc_rewriter import op_name, rewrite, static_shape

COMPUTE_OPS = ("relax.nn.conv2d", "relax.matmul")
# Winograd F(2x2, 3x3) where the output has at least this many 2x2 tiles. ResNet-18's 3x3
# layers, each kernel alone (1 thread): 56x56x64 1.11 ms against 1.34 direct, 28x28x128 0.80
# against 1.33, 14x14x256 0.75 against 1.34 (49 tiles); its 7x7 layers have 16 tiles, of which
# a quarter pads, and 16/9 x their 9.4 MB of weights to stream: they stay direct.
WINOGRAD_MIN_TILES = 49
# A conv with no padding of its own copies its input into longer rows (_direct_padding) only
# where its own row's tile needs more than this many times the longer row's loads per
# multiply-add.
COLUMNS_WORTH_A_COPY = 1.1


@dataclass
class _Conv:
    """One conv2d (or matmul, as a 1x1 conv) with what its kernel needs."""

    call: object
    x: object  # the input (NCHW for a conv, [..., M, K] for a matmul)
    weight: np.ndarray  # float32 OIHW (a matmul's as [N, K, 1, 1])
    bias: np.ndarray  # float32 [OC]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    depthwise: bool
    matmul: bool
    winograd: bool = False
    groups: int = 1  # a grouped (not depthwise) conv: one direct kernel per group


def _static_float32(expr, what: str) -> None:
    dtype = str(getattr(expr.ty, "dtype", ""))
    if dtype != "float32":
        raise NotLowered(f"{what} is {dtype or 'not a tensor'}, not float32")


def _check_out_dtype(out_dtype) -> None:
    """An op's out_dtype attribute: unset (the input's) or float32."""
    if out_dtype is not None and str(out_dtype) not in ("", "void", "float32"):
        raise NotLowered(f"its output is {out_dtype}")


class _Plan:
    """{output var: _Conv} for the lowerable ops of `func`, and every op's fate."""

    def __init__(
        self, func, lanes: int, skip_winograd: bool, winograd: bool, names: dict
    ) -> None:
        self.lanes = lanes
        self.winograd = winograd
        bindings = Bindings(func)
        self.value, self.uses, self.users = bindings.value, bindings.uses, bindings.users
        self.convs: dict = {}
        self.batched: set = set()  # matmuls of two computed operands (batch_matmul's)
        self.layers: list[LayerLowering] = []
        for var, value in self.value.items():
            op = op_name(value)
            if op not in COMPUTE_OPS:
                continue
            short = op.rsplit(".", 1)[-1]
            try:
                out_var, conv = self._conv_of(var, value, skip_winograd)
            except NotLowered as why:
                if op == "relax.matmul" and _batched(value):
                    self.batched.add(var)
                    self.layers.append(
                        LayerLowering(len(self.layers), short, "batched", node=names.get(var.name))
                    )
                    continue
                self.layers.append(
                    LayerLowering(len(self.layers), short, None, str(why), names.get(var.name))
                )
                continue
            self.convs[out_var] = conv
            kind = (
                "depthwise"
                if conv.depthwise
                else "grouped" if conv.groups != 1
                else "winograd" if conv.winograd
                else "narrow" if _narrow(conv, lanes)
                else "direct"
            )
            node = names.get(var.name)
            self.layers.append(LayerLowering(len(self.layers), short, kind, node=node))

    def _bias(self, var, channels: int, shapes: tuple):
        """(the add's var, its per-channel constant) where `var`'s only use is an add of a
        constant of one value per output channel (of one of `shapes`: those that broadcast
        along the channels), else (var, zeros)."""
        users = self.users.get(var, [])
        if self.uses.get(var, 0) == 1 and len(users) == 1:
            add = self.value[users[0]]
            if _bias_add().match(add):
                other = add.args[1] if add.args[0].same_as(var) else add.args[0]
                bias = constant(other, "the bias")
                if bias.dtype == np.float32 and bias.shape in shapes:
                    return users[0], bias.reshape(channels)
        return var, np.zeros(channels, np.float32)

    def _conv_of(self, var, call, skip_winograd: bool):
        x, weight_expr = call.args[0], call.args[1]
        _static_float32(x, "its input")
        if static_shape(x) is None:
            raise NotLowered("its input's shape is not static")
        weight = constant(weight_expr, "its weight")
        if weight.dtype != np.float32:
            raise NotLowered(f"its weight is {weight.dtype}, not float32")
        if op_name(call) == "relax.matmul":
            # [..., M, K] x [K, N]: a transformer's every Linear is [batch, tokens, K] x [K, N]
            if len(x.ty.shape) < 2 or weight.ndim != 2:
                raise NotLowered(
                    f"a matmul of rank {len(x.ty.shape)} x {weight.ndim}, not (2 or more) x 2"
                )
            _check_out_dtype(call.attrs.out_dtype)
            oihw = np.ascontiguousarray(weight.T)[:, :, None, None]  # [K, N] -> [N, K, 1, 1]
            n = oihw.shape[0]
            shapes = tuple((1,) * lead + (n,) for lead in range(len(x.ty.shape)))
            out_var, bias = self._bias(var, n, shapes)
            conv = _Conv(call, x, oihw, bias, (1, 1), (0, 0, 0, 0), (1, 1), False, True)
            return out_var, conv
        a = call.attrs
        if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout not in ("", "NCHW"):
            raise NotLowered(f"layout {a.data_layout}/{a.kernel_layout}, not NCHW/OIHW")
        _check_out_dtype(a.out_dtype)
        groups = int(a.groups)
        channels, in_channels = weight.shape[0], int(x.ty.shape[1])
        depthwise = groups != 1 and groups == in_channels == channels and weight.shape[1] == 1
        if groups != 1 and not depthwise and (channels % groups or in_channels % groups):
            raise NotLowered(f"grouped convolution (groups={groups}) of uneven groups")
        strides = tuple(int(s) for s in a.strides)
        dilation = tuple(int(d) for d in a.dilation)
        if skip_winograd and not depthwise and weight.shape[2:] == (3, 3) and strides == (1, 1):
            raise NotLowered("3x3 stride 1: Winograd (--winograd)")
        top, left, bottom, right = (int(p) for p in a.padding)
        out_var, bias = self._bias(var, channels, ((1, channels, 1, 1), (channels, 1, 1)))
        conv = _Conv(
            call, x, weight, bias, strides, (top, left, bottom, right), dilation, depthwise, False
        )
        if groups != 1 and not depthwise:
            conv.groups = groups
        conv.winograd = self.winograd and _winograd_fits(conv, call, self.lanes)
        return out_var, conv


def _batched(call) -> bool:
    """A matmul batch_matmul takes: float32 operands of static shapes and one rank (2 or more),
    the same batch dimensions (no broadcasting), the output float32."""
    a, b = call.args
    shapes = [static_shape(x) for x in (a, b)]
    if any(shape is None or len(shape) < 2 for shape in shapes) or len(set(map(len, shapes))) > 1:
        return False
    if any(str(getattr(x.ty, "dtype", "")) != "float32" for x in (a, b)):
        return False
    out = call.attrs.out_dtype
    if out is not None and str(out) not in ("", "void", "float32"):
        return False
    (*batch_a, _, k), (*batch_b, k_b, _) = shapes
    return batch_a == batch_b and k == k_b


def _emit_batched(builder, a, b, lanes: int):
    """a [..., M, K] x b [..., K, N] as batch_matmul over [batch, M, K] x [batch, K, N], its
    rows padded to whole register tiles and its columns to whole vectors, then cropped."""
    from tvm import relax

    *batch, rows, depth = (int(d) for d in a.ty.shape)
    columns = int(b.ty.shape[-1])
    count = int(np.prod(batch)) if batch else 1
    padded_rows = -(-rows // BATCH_ROWS) * BATCH_ROWS
    padded_columns = -(-columns // lanes) * lanes
    a = builder.emit(relax.op.reshape(a, (count, rows, depth)))
    b = builder.emit(relax.op.reshape(b, (count, depth, columns)))
    if padded_rows != rows:
        a = builder.emit(emit_window_copy(builder, a, (count, padded_rows, depth)))
    if padded_columns != columns:
        b = builder.emit(emit_window_copy(builder, b, (count, depth, padded_columns)))
    out = builder.emit(
        opaque_call_te(
            builder, batch_matmul, a, b, lanes=lanes, primfunc_name_hint="batch_matmul_float"
        )
    )
    out = builder.emit(relax.op.reshape(out, (count, padded_rows, padded_columns)))
    if (padded_rows, padded_columns) != (rows, columns):
        out = builder.emit(emit_window_copy(builder, out, (count, rows, columns)))
    return relax.op.reshape(out, (*batch, rows, columns))


def _bias_add():
    """add(x, constant) in either order (a relax.dpl pattern)."""
    from tvm.relax.dpl import is_const, is_op, wildcard

    return is_op("relax.add")(wildcard(), is_const()) | is_op("relax.add")(is_const(), wildcard())


def _winograd_fits(conv: _Conv, call, lanes: int) -> bool:
    """A 3x3 stride-1 conv padded by 1 ("same" output) of one image with enough tiles
    (WINOGRAD_MIN_TILES), whose count gives the products a full register tile (a prime count
    does not; the direct kernel pads its rows instead). An odd height or width is fine: its
    last tiles are half cut off (_emit_winograd)."""
    batch, _, height, width = (int(d) for d in call.ty.shape)
    rows, cols = winograd_tiles(height, width)
    out_channels, in_channels = conv.weight.shape[:2]
    return (
        batch == 1
        and tile_is_full(rows * cols, -(-out_channels // lanes), in_channels, lanes)
        and not conv.depthwise
        and conv.groups == 1
        and conv.weight.shape[2:] == (3, 3)
        and conv.strides == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (1, 1, 1, 1)
        and rows * cols >= WINOGRAD_MIN_TILES
    )


def _emit_winograd(builder, conv: _Conv, x_nhwc, lanes: int):
    """Winograd F(2x2, 3x3) (float/compute): the input transform (a kernel of its own, kept out
    of fusion so that the pad before it keeps its border cut), the 16 products as conv2d_nhwc
    over the tiles, and the output transform, behind which FuseOps puts the layer's relu or
    residual add."""
    from tvm import relax


    _, height, width, _ = (int(d) for d in x_nhwc.ty.shape)
    channels = conv.weight.shape[0]
    # An odd height or width ends in half a tile: one zero row or column more below or to the
    # right completes its 4x4 input, and the output transform writes only the rows it has.
    top, left, bottom, right = conv.padding
    padding = (top, left, bottom + height % 2, right + width % 2)
    padded = builder.emit(
        builder.call_te(pad_nhwc, x_nhwc, padding=padding, primfunc_name_hint="pad")
    )
    tiles = builder.emit(
        opaque_call_te(
            builder,
            winograd_input,
            padded,
            tiles=winograd_tiles(height, width),
            primfunc_name_hint="winograd_input",
        )
    )
    products = builder.emit(
        builder.call_te(
            conv2d_nhwc,
            tiles,
            relax.const(winograd_weight(conv.weight, lanes)),
            bias=None,
            strides=(1, 1),
            dilation=(1, 1),
            out_channels=channels,
            primfunc_name_hint="winograd_products",
        )
    )
    return builder.call_te(
        winograd_output,
        products,
        relax.const(conv.bias),
        height=height,
        width=width,
        out_channels=channels,
        primfunc_name_hint="winograd_output",
    )


def _emit_grouped(builder, conv: _Conv, x_nhwc, lanes: int):
    """A grouped convolution as one direct kernel per group over its slice of the NHWC input
    channels, joined by the channel-concat kernel (ShuffleNet's grouped 1x1 convolutions,
    AlexNet's two-group layers; TVM's generic grouped convolution ran ShuffleNet at 0.08x
    onnxruntime)."""
    from tvm import relax

    groups = conv.groups
    step_in, step_out = int(x_nhwc.ty.shape[3]) // groups, conv.weight.shape[0] // groups
    parts = []
    for group in range(groups):
        rows = slice(group * step_out, (group + 1) * step_out)
        part = replace(conv, weight=conv.weight[rows], bias=conv.bias[rows], groups=1)
        if _reads_in_place(part, x_nhwc, lanes):  # no slice: one copy and one call less
            call = _emit(builder, part, x_nhwc, lanes, in_offset=group * step_in)
        else:
            channels = relax.op.strided_slice(
                x_nhwc, axes=[3], begin=[group * step_in], end=[(group + 1) * step_in]
            )
            call = _emit(builder, part, builder.emit(channels), lanes)
        parts.append(builder.emit(call))
    joined = emit_channel_concat(builder, parts)
    return joined if joined is not None else relax.op.concat(parts, axis=3)


def _reads_in_place(conv: _Conv, x_nhwc, lanes: int) -> bool:
    """Whether the direct kernel takes `conv` (one group of a grouped conv) on `x_nhwc` as it
    is, without padding it: then it reads the group's channels in place (a pad, Winograd's
    transform or a depthwise or narrow kernel copies its input anyway)."""
    return not (conv.winograd or conv.depthwise or _narrow(conv, lanes)) and not any(
        _direct_padding(conv, x_nhwc, lanes)
    )


def _direct_padding(conv: _Conv, x_nhwc, lanes: int) -> tuple[int, int, int, int]:
    """The direct kernel's padding of its input: the conv's own, and the columns that make a
    row length with a better register tile (float/schedules.padded_width). A conv with no
    padding of its own reads its input in place, and extra columns would cost a copy of all
    of it: it takes them only where its own row's tile is not full or needs more than
    COLUMNS_WORTH_A_COPY times the longer row's loads per multiply-add. SqueezeNet's 1x1
    convs to one block of 16 channels over 55 columns copied 0.8-1.5 MB into 56 (0.06-0.12
    ms, nearly the conv's own 0.14) for a tile of 14 pixels instead of 11, whose loads are
    one broadcast per multiply-add either way."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    width = int(x_nhwc.ty.shape[2])
    top, left, bottom, right = conv.padding
    out_width = output_size(width, left + right, kw, conv.strides[1], conv.dilation[1])
    blocks = -(-out_channels // lanes)
    depth = in_channels * kh * kw
    computed = padded_width(out_width, blocks, depth, lanes)
    if computed != out_width and not any(conv.padding):
        loads = loads_per_multiply_add(out_width, blocks, depth, lanes)
        fewer = loads_per_multiply_add(computed, blocks, depth, lanes)
        if tile_is_full(out_width, blocks, depth, lanes) and loads <= fewer * COLUMNS_WORTH_A_COPY:
            computed = out_width
    return (top, left, bottom, right + (computed - out_width) * conv.strides[1])


ALIASING_BYTES = 4096  # addresses this far apart share an L1 set (x86's and arm64's 32-64 KB)


def _unaliased(channels: int, stride: int, lanes: int) -> int:
    """The channels of a padded input whose tile pixels (`stride` pixels apart) do not fall
    in one L1 set: where stride x channels x 4 bytes is a multiple of ALIASING_BYTES, one
    vector more. ResNet-50's 3x3 stride-2 conv over 14x14x512 read its 7-pixel tiles 4 KB
    apart, 8 ways of one set: 5.1 ms at 1 thread, 2x the same FLOPs elsewhere."""
    if (stride * channels * 4) % ALIASING_BYTES:
        return channels
    return channels + lanes


def _narrow(conv: _Conv, lanes: int) -> bool:
    """A pointwise conv to at most an eighth of a vector of output channels (narrow_pointwise):
    a YOLO head's 96 -> 1 (the direct kernel, 16x padding, was refused by the sampler and ran
    as plain loops). Wider ones stay direct: a PP-OCR detector's 1x1 conv to 4 channels ran
    0.70 ms direct, 1.27 ms as dot products."""
    out_channels, _, kh, kw = conv.weight.shape
    return (
        8 * out_channels <= lanes
        and (kh, kw) == (1, 1)
        and conv.strides == (1, 1)
        and conv.dilation == (1, 1)
        and not any(conv.padding)
        and not conv.depthwise
        and conv.groups == 1
    )


def _emit(builder, conv: _Conv, x_nhwc, lanes: int, in_offset: int = 0):
    """The kernel's call on NHWC `x_nhwc` (the result is NHWC); `in_offset`: the direct
    kernel reads the input channels from there on (_reads_in_place)."""
    from tvm import relax

    if conv.groups != 1:
        return _emit_grouped(builder, conv, x_nhwc, lanes)
    if conv.winograd:
        return _emit_winograd(builder, conv, x_nhwc, lanes)
    common = {"strides": conv.strides, "dilation": conv.dilation}
    if conv.depthwise:
        return builder.call_te(
            depthwise_conv2d_nhwc,
            x_nhwc,
            relax.const(pack_depthwise_weight(conv.weight)),
            relax.const(per_channel(conv.bias)),
            padding=conv.padding,
            lanes=lanes,
            primfunc_name_hint="depthwise_conv2d_float",
            **common,
        )
    out_channels, _, _, kw = conv.weight.shape
    if _narrow(conv, lanes):
        return builder.call_te(
            narrow_pointwise,
            x_nhwc,
            relax.const(np.ascontiguousarray(conv.weight[:, :, 0, 0])),
            relax.const(conv.bias),
            primfunc_name_hint="narrow_matmul_float" if conv.matmul else "narrow_conv2d_float",
        )
    width = int(x_nhwc.ty.shape[2])
    _, left, _, right = conv.padding
    out_width = output_size(width, left + right, kw, conv.strides[1], conv.dilation[1])
    padding = _direct_padding(conv, x_nhwc, lanes)
    if any(padding):
        channels = _unaliased(int(x_nhwc.ty.shape[3]), conv.strides[1], lanes)
        x_nhwc = builder.emit(
            builder.call_te(
                pad_nhwc, x_nhwc, padding=padding, channels_to=channels, primfunc_name_hint="pad"
            )
        )
    return builder.call_te(
        conv2d_nhwc,
        x_nhwc,
        relax.const(pack_conv_weight(conv.weight, lanes)),
        relax.const(conv.bias),
        out_channels=out_channels,
        out_width=out_width,
        primfunc_name_hint="matmul_float" if conv.matmul else "conv2d_float",
        in_offset=in_offset,
        **common,
    )


def lower_float(
    mod,
    lanes: int,
    names: dict | None = None,
    *,
    skip_winograd: bool = False,
    winograd: bool = True,
    nhwc_before: bool = False,
):
    """Rewrite the module's `main`; returns (module, [LayerLowering]). `skip_winograd` leaves
    3x3 stride-1 convs to TVM (--winograd legalizes them as TVM's Winograd F(4x4, 3x3));
    `winograd` computes those that qualify as Winograd F(2x2, 3x3) (_winograd_fits).
    `nhwc_before`: an earlier lowering left NHWC kernels (int8/integer_matmul's convs), so the
    rewrite runs without float convs too: it keeps what lies between those kernels in NHWC
    (without it, ddddocr's quantized recognizer transposed every conv's input and output)."""
    from tvm import relax

    # Constants first: the bias reshapes, the FC weight's transpose, clip's bounds.
    mod = relax.transform.FoldConstant()(mod)
    plan = _Plan(mod["main"], lanes, skip_winograd, winograd, names or {})
    if not plan.convs and not plan.batched and not nhwc_before:
        return mod, plan.layers

    def lower(rewriter, binding) -> bool:
        builder = rewriter.builder_
        if binding.var in plan.batched:
            a, b = (rewriter.visit_expr(arg) for arg in binding.value.args)
            call = _emit_batched(builder, a, b, lanes)
            rewriter.set_var_remap(binding.var, rewriter.emit_as(binding.var, call))
            return True
        conv = plan.convs.get(binding.var)
        if conv is not None:
            x = rewriter.visit_expr(conv.x)
            if conv.matmul:
                *rows, k = (int(d) for d in x.ty.shape)
                # one image whose row is every token: the kernel's register tile runs along it
                pixels = builder.emit(relax.op.reshape(x, (1, 1, int(np.prod(rows)), k)))
                call = builder.emit(_emit(builder, conv, pixels, lanes))
                n = conv.weight.shape[0]
                rewriter.set_var_remap(
                    binding.var, rewriter.emit_as(binding.var, relax.op.reshape(call, (*rows, n)))
                )
            else:
                rewriter.bind(binding.var, _emit(builder, conv, rewriter.to_nhwc(x), lanes))
            return True
        value = binding.value
        if nhwc_pool(value):
            x = rewriter.visit_expr(value.args[0])
            if x not in rewriter.nhwc or str(x.ty.dtype) != "float32":
                return False
            rewriter.bind(binding.var, emit_pool(builder, value, rewriter.nhwc[x]))
            return True
        return fuse_dynamic_quantization(rewriter, binding)

    return rewrite(mod, lower), plan.layers
