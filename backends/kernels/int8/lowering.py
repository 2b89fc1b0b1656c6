"""QDQ -> integer Relax: quantized Conv, ConvTranspose, Gemm and MatMul run as int8 x int8 ->
int32.

TVM's ONNX importer turns QuantizeLinear/DequantizeLinear into relax.quantize/dequantize, and
the layer between them stays float: dequantize(x_q), dequantize(W_q) -> conv2d -> + bias ->
quantize. That computes the right numbers in float32 and keeps float weights. This rewrite,
run on the imported module before legalization, replaces each such chain by one integer kernel
(kernels/int8/compute.py): the 8-bit input is read as it is, the int8 weights are packed for
the target's dot-product instruction and stay int8, and the int32 result is requantized to the
next layer's scale in the same kernel. What is left of the float chain is dead and removed.
The kernels pass NHWC activations from one to the next (with the elementwise ops between
them); the graph's own NCHW values remain only where a float op still reads them.

A chain is lowered when its input is per-tensor quantized, its weight is a constant with zero
zero points (the int8 pass makes them so), its bias (if any) is an int32 dequantize and its
output is quantized by exactly one quantize, or not at all: where only float ops read it (a
HardSwish or SiLU chain, quantize_int8's float_read_outputs) the kernel writes the
dequantized float32 sum, and the chain runs on it in NHWC up to the next quantize. A depthwise
convolution has a kernel of its own; another grouped one runs as a dot-product kernel per
group. Every conv2d, conv2d_transpose and
matmul of the module is listed in the result, lowered or with the reason it stayed float.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from edgepress.backends.kernels.common.nhwc_compute import (
    output_size,
    pack_depthwise_weight,
    per_channel,
)
from edgepress.backends.kernels.common.relax_lowering import (
    Bindings,
    LayerLowering,
    NotLowered,
    constant,
    emit_pool,
    nhwc_pool,
)
from edgepress.backends.kernels.int8.amx_conv import LANES as AMX_LANES
from edgepress.backends.kernels.int8.amx_conv import NAME as AMX_NAME
from edgepress.backends.kernels.int8.amx_conv import SLICE as AMX_SLICE
from edgepress.backends.kernels.int8.amx_conv import amx_conv2d, amx_fits
from edgepress.backends.kernels.int8.compute import (
    DOT_DEPTH,
    FLOAT_OUTPUT,
    depthwise_conv2d,
    depthwise_sums_exact,
    needs_pack,
    pack_activations,
    pack_weight,
    packed_conv2d,
    quantized_add,
    quantized_add_terms,
    requantize_multiplier,
    scaled_in_int32,
    shift_zero_point,
)
from edgepress.backends.kernels.common.nhwc_rewriter import op_name as _op_name
from edgepress.backends.kernels.common import nhwc_layout_ops
from edgepress.backends.kernels.common.channel_concat import emit_channel_concat
from edgepress.backends.kernels.common.nhwc_rewriter import is_scalar, rewrite, static_shape
from edgepress.backends.kernels.int8.schedules import padded_width
from edgepress.backends.targets.description import DotLayout

COMPUTE_OPS = ("relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul")
QUANT_TYPES = ("uint8", "int8")


@dataclass
class _Chain:
    """The float chain one quantize call ends, with what the integer kernel needs."""

    compute: object  # the conv2d/matmul call
    x: object  # the 8-bit input (a Relax expression)
    x_scale: float
    x_zero_point: int  # in the kernel's activation type (shifted by 128 where it differs)
    x_dtype: str  # the kernel's activation type
    weight: np.ndarray  # int8, OIHW (a matmul's as [N, K, 1, 1])
    weight_scales: np.ndarray  # float32 per output channel
    bias: np.ndarray  # int32 per output channel, with the input zero point's term folded in
    out_scale: float
    out_zero_point: int
    out_dtype: str
    kind: str = "dot-product"
    attrs: dict = field(default_factory=dict)


def has_qdq(mod) -> bool:
    """Whether the module's main function quantizes anything."""
    return any(_op_name(v) == "relax.quantize" for v in Bindings(mod["main"]).value.values())


def _scalar(expr, what: str) -> float:
    array = constant(expr, what)
    if array.size != 1:
        raise NotLowered(f"{what} is per-channel ({array.size} values)")
    return array.reshape(()).item()


def _per_channel(array: np.ndarray, channels: int, what: str) -> np.ndarray:
    flat = array.reshape(-1)
    if flat.size == 1:
        return np.repeat(flat, channels)
    if flat.size != channels:
        raise NotLowered(f"{what} has {flat.size} values for {channels} channels")
    return flat


def _dtype(expr) -> str:
    dtype = expr.ty.dtype
    return str(getattr(dtype, "dtype", dtype))


def _dequantized_input(bindings: Bindings, expr) -> tuple[object, float, int]:
    dq = bindings.producer(expr, "relax.dequantize")
    if dq is None:
        raise NotLowered("its input is not dequantized from 8 bits")
    x, scale, zero_point = dq.args
    dtype = _dtype(x)
    if dtype not in QUANT_TYPES:
        raise NotLowered(f"its input is {dtype}, not 8-bit")
    return x, _scalar(scale, "the input scale"), int(_scalar(zero_point, "the input zero point"))


def _dequantized_weight(bindings: Bindings, expr, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The int8 weight and its scales, per channel along `axis` (the output channels: 0 in
    OIHW, 1 in a ConvTranspose's IOHW) or per tensor."""
    dq = bindings.producer(expr, "relax.dequantize")
    if dq is None:
        raise NotLowered("its weight is not dequantized from int8")
    weight = constant(dq.args[0], "the weight")
    if weight.dtype != np.int8:
        raise NotLowered(f"its weight is {weight.dtype}, not int8")
    zero_points = constant(dq.args[2], "the weight zero point")
    if np.any(zero_points != 0):
        raise NotLowered("its weight zero point is not 0")
    scales = constant(dq.args[1], "the weight scale").astype(np.float32)
    if scales.size > 1 and int(dq.attrs.axis) % weight.ndim != axis:
        raise NotLowered(f"its weight is quantized along axis {int(dq.attrs.axis)}, not {axis}")
    return weight, scales


def _int32_bias(bindings: Bindings, expr, channels: int, scale: np.ndarray) -> np.ndarray:
    reshaped = bindings.producer(expr, "relax.reshape")
    dq = bindings.producer(reshaped.args[0] if reshaped is not None else expr, "relax.dequantize")
    if dq is None:
        raise NotLowered("its bias is not dequantized from int32")
    bias = constant(dq.args[0], "the bias")
    if bias.dtype != np.int32:
        raise NotLowered(f"its bias is {bias.dtype}, not int32")
    if np.any(constant(dq.args[2], "the bias zero point") != 0):
        raise NotLowered("its bias zero point is not 0")
    bias_scale = _per_channel(constant(dq.args[1], "the bias scale"), channels, "the bias scale")
    bias = _per_channel(bias, channels, "the bias").astype(np.float64)
    # onnxruntime reads the int32 bias as is; it was quantized on scale x_scale * w_scale.
    rescaled = np.rint(bias * bias_scale.astype(np.float64) / scale.astype(np.float64))
    return rescaled.astype(np.int64)


def _as_convolution(a, weight: np.ndarray) -> tuple[np.ndarray, dict]:
    """A ConvTranspose as the stride-1 convolution it equals: over its input with stride - 1
    zero-point rows and columns put between (pack_activations' `upsample`) and padded by
    dilation x (kernel - 1) - pad (plus output_padding at the end), with the window flipped
    and the weight's IOHW read as OIHW. Returns (the OIHW weight, the conv's attrs)."""
    if a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or a.out_layout not in ("", "NCHW"):
        raise NotLowered(f"layout {a.data_layout}/{a.kernel_layout}, not NCHW/IOHW")
    if int(a.groups) != 1:
        raise NotLowered(f"grouped ConvTranspose (groups={int(a.groups)})")
    strides = tuple(int(s) for s in a.strides)
    dilation = tuple(int(d) for d in a.dilation)
    top, left, bottom, right = (int(p) for p in a.padding)
    out_h, out_w = (int(p) for p in a.output_padding)
    reach_h, reach_w = (d * (k - 1) for d, k in zip(dilation, weight.shape[2:]))
    padding = (reach_h - top, reach_w - left, reach_h - bottom + out_h, reach_w - right + out_w)
    if min(padding) < 0:
        raise NotLowered(
            f"its padding {[top, left, bottom, right]} is more than its window reaches "
            f"({reach_h}, {reach_w})"
        )
    flipped = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    attrs = {
        "strides": (1, 1),
        "padding": padding,
        "dilation": dilation,
        "groups": 1,
        "upsample": strides,
    }
    return flipped, attrs


def _quantize_consumer(bindings: Bindings, var):
    users = bindings.consumers(var)
    if len(users) != 1 or bindings.uses.get(var, 0) != 1:
        raise NotLowered("its float output is used by more than one op")
    return users[0], bindings.value[users[0]]


def _single_consumer(bindings: Bindings, var):
    """The one op that reads `var`, or None (several, or a function result)."""
    users = bindings.consumers(var)
    if len(users) != 1 or bindings.uses.get(var, 0) != 1:
        return None
    return bindings.value[users[0]]


def _chain_of(bindings: Bindings, var, call, layout: DotLayout) -> tuple[object, _Chain]:
    """(the var the chain's result replaces: its quantize's, or where only float ops read
    the output the conv's or its bias add's, and the chain) for the compute call at `var`."""
    op = _op_name(call)
    x, x_scale, x_zp = _dequantized_input(bindings, call.args[0])
    weight_expr = call.args[1]
    transposed = None
    if op == "relax.matmul":
        transposed = bindings.producer(weight_expr, "relax.permute_dims")
    if transposed is not None:
        weight_expr = transposed.args[0]
    # The output channels: axis 1 of a ConvTranspose's IOHW and of a matmul's [K, N]; axis 0
    # of OIHW and of a transposed matmul weight's [N, K].
    output_axis = 1 if op == "relax.nn.conv2d_transpose" else 0
    if op == "relax.matmul" and transposed is None:
        output_axis = 1
    weight, weight_scales = _dequantized_weight(bindings, weight_expr, output_axis)
    attrs: dict = {}
    if op == "relax.matmul":
        if len(x.ty.shape) < 2 or weight.ndim != 2 or static_shape(x) is None:
            raise NotLowered(
                f"a matmul of rank {len(x.ty.shape)} x {weight.ndim}, not (2 or more) x 2 "
                "of a static shape"
            )
        if transposed is None:
            weight = weight.T  # [K, N] -> [N, K]
        weight = np.ascontiguousarray(weight)[:, :, None, None]
        attrs = {"strides": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}
    elif op == "relax.nn.conv2d_transpose":
        weight, attrs = _as_convolution(call.attrs, weight)
    else:
        a = call.attrs
        if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout not in ("", "NCHW"):
            raise NotLowered(f"layout {a.data_layout}/{a.kernel_layout}, not NCHW/OIHW")
        pad = [int(p) for p in a.padding]
        attrs = {
            "strides": tuple(int(s) for s in a.strides),
            "padding": (pad[0], pad[1], pad[2], pad[3]),
            "dilation": tuple(int(d) for d in a.dilation),
            "groups": int(a.groups),
        }
    channels = weight.shape[0]
    weight_scales = _per_channel(weight_scales, channels, "the weight scale")
    kind = "dot-product"
    groups = attrs["groups"]
    if groups != 1:
        in_channels = int(x.ty.shape[1])
        if in_channels % groups or channels % groups:
            raise NotLowered(
                f"grouped convolution (groups={groups}) of {in_channels} -> {channels} channels"
            )
        depthwise = groups == in_channels == channels and weight.shape[1] == 1
        kind = "depthwise" if depthwise else "grouped"
        if depthwise and not depthwise_sums_exact(weight, np.zeros(channels, np.int64), _dtype(x)):
            raise NotLowered(
                f"its {weight.shape[2]}x{weight.shape[3]} window is too large "
                "for exact float32 sums"
            )

    out_var, out = var, _single_consumer(bindings, var)
    bias = np.zeros(channels, np.int64)
    if _op_name(out) == "relax.add":
        other = out.args[1] if out.args[0].same_as(var) else out.args[0]
        scale = np.float32(x_scale) * weight_scales
        bias = _int32_bias(bindings, other, channels, scale)
        out_var = bindings.consumers(var)[0]
        out = _single_consumer(bindings, out_var)
    if _op_name(out) == "relax.quantize":
        out_dtype = str(out.attrs.out_dtype)
        if out_dtype not in QUANT_TYPES:
            raise NotLowered(f"its output is quantized to {out_dtype}")
        out_var = bindings.consumers(out_var)[0]
        out_scale = _scalar(out.args[1], "the output scale")
        out_zero_point = int(_scalar(out.args[2], "the output zero point"))
    else:  # only float ops read it (quantize_int8's float_read_outputs): the dequantized sum
        if kind == "grouped":
            raise NotLowered("a grouped convolution whose output is not quantized")
        out_dtype, out_scale, out_zero_point = FLOAT_OUTPUT, 1.0, 0
    if kind != "depthwise":  # it reads x in the instruction's signedness
        x_zp = shift_zero_point(x_zp, _dtype(x), layout.act_dtype)
    # The kernels sum x * w (padding reads as the zero point): the zero point's share,
    # zx * sum(w), comes off the bias.
    bias = bias - x_zp * weight.astype(np.int64).sum(axis=(1, 2, 3))
    info = np.iinfo(np.int32)
    if bias.min(initial=0) < info.min or bias.max(initial=0) > info.max:
        raise NotLowered("its bias overflows int32")
    chain = _Chain(
        compute=call,
        x=x,
        x_scale=x_scale,
        x_zero_point=x_zp,
        x_dtype=_dtype(x) if kind == "depthwise" else layout.act_dtype,
        weight=weight,
        weight_scales=weight_scales,
        bias=bias.astype(np.int32),
        out_scale=out_scale,
        out_zero_point=out_zero_point,
        out_dtype=out_dtype,
        kind=kind,
        attrs=attrs,
    )
    return out_var, chain


def _packed(builder, x, chain: _Chain, padding, channel_multiple: int = DOT_DEPTH):
    """The kernel's NHWC input: `x` itself where it needs no padding, channel rounding or
    change of signedness, else pack_activations' copy of it."""
    channels = int(x.ty.shape[3])
    upsample = chain.attrs.get("upsample", (1, 1))
    if not needs_pack(channels, padding, _dtype(x), chain.x_dtype, upsample, channel_multiple):
        return x
    packed = builder.call_te(
        pack_activations,
        x,
        padding=padding,
        in_zero_point=chain.x_zero_point,
        act_dtype=chain.x_dtype,
        upsample=upsample,
        channel_multiple=channel_multiple,
        primfunc_name_hint="pack_int8",
    )
    return builder.emit(packed)


def _emit(builder, chain: _Chain, x, layout: DotLayout):
    """The integer kernel's call for a chain, with `x` its (remapped) 8-bit input: NHWC for a
    conv (the result is NHWC too), [..., M, K] for a matmul (the result is [..., M, N])."""
    from tvm import relax

    if chain.kind == "grouped":
        return _emit_grouped(builder, chain, x, layout)
    channels = chain.weight.shape[0]
    multiplier = requantize_multiplier(chain.x_scale, chain.weight_scales, chain.out_scale)
    common = {
        "strides": chain.attrs["strides"],
        "dilation": chain.attrs["dilation"],
        "out_zero_point": chain.out_zero_point,
        "out_dtype": chain.out_dtype,
        "in_int32": scaled_in_int32(chain.weight, chain.bias, multiplier, chain.x_dtype),
    }
    matmul = _op_name(chain.compute) == "relax.matmul"
    if matmul:  # [..., M, K]: one image whose row is every token
        *rows, k = (int(d) for d in chain.x.ty.shape)
        x = builder.emit(relax.op.reshape(x, (1, 1, int(np.prod(rows)), k)))
    padding = chain.attrs["padding"]
    if chain.kind == "depthwise":
        call = builder.call_te(
            depthwise_conv2d,
            x,
            relax.const(pack_depthwise_weight(chain.weight)),
            relax.const(per_channel(chain.bias)),
            relax.const(per_channel(multiplier)),
            padding=padding,
            in_zero_point=chain.x_zero_point,
            lanes=layout.lanes,
            float_bias=depthwise_sums_exact(chain.weight, chain.bias, chain.x_dtype),
            primfunc_name_hint="depthwise_conv2d_int8",
            **common,
        )
    elif layout.amx and amx_fits(chain.weight.shape[1], channels, chain.x_dtype) is None:
        xp = _packed(builder, x, chain, padding, channel_multiple=AMX_SLICE)
        call = _emit_amx(builder, chain, xp, multiplier, common)
    else:
        padding, out_width = (padding, None) if matmul else _computed_row(chain, x, layout)
        call = builder.call_te(
            packed_conv2d,
            _packed(builder, x, chain, padding),
            relax.const(pack_weight(chain.weight, layout.lanes)),
            relax.const(chain.bias),
            relax.const(multiplier),
            out_channels=channels,
            intrinsic=layout.intrinsic,
            pair_sums=layout.pair_sums,
            primfunc_name_hint="matmul_int8" if matmul else "conv2d_int8",
            out_width=out_width,
            **common,
        )
    if matmul:
        call = relax.op.reshape(builder.emit(call), (*rows, channels))
    return call


def _emit_amx(builder, chain: _Chain, xp, multiplier: np.ndarray, common: dict):
    """The call of the AMX kernel (kernels/int8/amx_conv) on the padded input `xp`."""
    from tvm import relax

    weight = pack_weight(chain.weight, AMX_LANES, AMX_SLICE)
    n, height, width, _ = (int(d) for d in xp.ty.shape)
    _, _, kh, kw = chain.weight.shape
    (sh, sw), (dh, dw) = common["strides"], common["dilation"]
    out_shape = (
        n,
        output_size(height, 0, kh, sh, dh),
        output_size(width, 0, kw, sw, dw),
        chain.weight.shape[0],
    )
    func = amx_conv2d(
        tuple(int(d) for d in xp.ty.shape),
        weight.shape,
        out_shape,
        strides=(sh, sw),
        dilation=(dh, dw),
        out_zero_point=common["out_zero_point"],
        out_dtype=common["out_dtype"],
        in_int32=common["in_int32"],
    )
    gv = builder.add_func(func, AMX_NAME)
    args = [xp, relax.const(weight), relax.const(chain.bias), relax.const(multiplier)]
    return relax.call_tir(gv, args, relax.TensorType(out_shape, common["out_dtype"]))


def _computed_row(chain: _Chain, x, layout: DotLayout) -> tuple[tuple, int | None]:
    """(the input's padding, the output row length) of a direct conv: its own padding, and
    columns more on the right where a longer row gets a better register tile
    (int8/schedules.padded_width), whose outputs packed_conv2d drops."""
    out_channels, in_channels, kh, kw = chain.weight.shape
    top, left, bottom, right = chain.attrs["padding"]
    _, sw = chain.attrs["strides"]
    _, dw = chain.attrs["dilation"]
    _, up = chain.attrs.get("upsample", (1, 1))
    columns = (int(x.ty.shape[2]) - 1) * up + 1
    width = output_size(columns, left + right, kw, sw, dw)
    blocks = -(-out_channels // layout.lanes)
    depth = -(-in_channels // DOT_DEPTH) * kh * kw
    computed = padded_width(width, blocks, depth, layout.intrinsic)
    if computed == width:
        return (top, left, bottom, right), None
    return (top, left, bottom, right + (computed - width) * sw), width


def _emit_grouped(builder, chain: _Chain, x, layout: DotLayout):
    """A grouped convolution as one dot-product kernel per group over its slice of the NHWC
    input channels, joined by the channel-concat kernel (a ShuffleNet's grouped 1x1 convolutions,
    which TVM's generic grouped convolution ran at a tenth of onnxruntime's speed)."""
    from tvm import relax

    groups = chain.attrs["groups"]
    step_in, step_out = int(x.ty.shape[3]) // groups, chain.weight.shape[0] // groups
    parts = []
    for group in range(groups):
        rows = slice(group * step_out, (group + 1) * step_out)
        part = replace(
            chain,
            weight=chain.weight[rows],
            bias=chain.bias[rows],
            weight_scales=chain.weight_scales[rows],
            kind="dot-product",
            attrs={**chain.attrs, "groups": 1},
        )
        channels = relax.op.strided_slice(
            x, axes=[3], begin=[group * step_in], end=[(group + 1) * step_in]
        )
        parts.append(builder.emit(_emit(builder, part, builder.emit(channels), layout)))
    joined = emit_channel_concat(builder, parts)
    return joined if joined is not None else relax.op.concat(parts, axis=3)


@dataclass
class _Passthrough:
    """quantize(op(dequantize(x))) on the same scale and zero point: op(x) on the 8-bit values
    (max pooling and reshapes commute with the affine map and its rounding). A max pool
    quantized to another scale (a YOLO's SPP pools, each requantized for the concat after
    them) pools the 8-bit values and then requantizes them (`requantize`: the dequantize and
    quantize calls): max commutes with a dequantize of a positive scale, which is increasing."""

    call: object
    x: object
    requantize: tuple | None = None


def _passthrough_of(bindings: Bindings, var, call) -> tuple[object, _Passthrough] | None:
    dq = bindings.producer(call.args[0], "relax.dequantize")
    if dq is None or _dtype(dq.args[0]) not in QUANT_TYPES:
        return None
    try:
        out_var, out = _quantize_consumer(bindings, var)
        if _op_name(out) != "relax.quantize" or str(out.attrs.out_dtype) not in QUANT_TYPES:
            return None
        (scale, zero), (out_scale, out_zero) = (
            (_scalar(q.args[1], "scale"), _scalar(q.args[2], "zero point")) for q in (dq, out)
        )
    except NotLowered:
        return None
    if (scale, zero) == (out_scale, out_zero) and str(out.attrs.out_dtype) == _dtype(dq.args[0]):
        return out_var, _Passthrough(call, dq.args[0])
    if nhwc_pool(call) and scale > 0:
        return out_var, _Passthrough(call, dq.args[0], requantize=(dq, out))
    return None


PASSTHROUGH_OPS = ("relax.nn.max_pool2d", "relax.reshape")


def plan(func, layout: DotLayout, names: dict | None = None) -> tuple[dict, list[LayerLowering]]:
    """{quantize var: chain} for the function's lowerable chains, and every compute op's fate."""
    bindings = Bindings(func)
    chains: dict = {}
    layers: list[LayerLowering] = []

    def node(var) -> str | None:
        return (names or {}).get(var.name)

    for var, value in bindings.value.items():
        op = _op_name(value)
        if op in PASSTHROUGH_OPS:
            found = _passthrough_of(bindings, var, value)
            if found is not None:
                chains[found[0]] = found[1]
            continue
        if op not in COMPUTE_OPS:
            continue
        short = op.rsplit(".", 1)[-1]
        try:
            out_var, chain = _chain_of(bindings, var, value, layout)
        except NotLowered as why:
            layers.append(LayerLowering(len(layers), short, None, str(why), node(var)))
            continue
        chains[out_var] = chain
        layers.append(LayerLowering(len(layers), short, chain.kind, node=node(var)))
    return chains, layers


def lower_qdq(mod, layout: DotLayout, names: dict | None = None):
    """Rewrite the module's `main`; returns (module, [LayerLowering]). `names`: the ONNX node
    name of each layer's Relax var (relax/importer.py)."""
    from tvm import relax

    chains, layers = plan(mod["main"], layout, names)
    bindings = Bindings(mod["main"])
    if not chains:
        return mod, layers

    def quantized_add_in_nhwc(rewriter, binding) -> bool:
        """quantize(add(dequantize(a), dequantize(b))) with per-tensor scales (a residual
        add) as one kernel of onnxruntime's arithmetic (int8/compute.quantized_add), on the
        NHWC values where both 8-bit inputs have them."""
        value = binding.value
        if _op_name(value) != "relax.quantize":
            return False
        add = bindings.producer(value.args[0], "relax.add")
        if add is None:
            return False
        dqs = [bindings.producer(arg, "relax.dequantize") for arg in add.args]
        if any(dq is None or _dtype(dq.args[0]) not in QUANT_TYPES for dq in dqs):
            return False
        if str(value.attrs.out_dtype) not in QUANT_TYPES:
            return False
        try:  # (scale, zero point) of a, b and the output, each per tensor
            (sa, za), (sb, zb), (sc, zc) = (
                (_scalar(scale, "scale"), int(_scalar(zero_point, "zero point")))
                for scale, zero_point in (*(dq.args[1:] for dq in dqs), value.args[1:])
            )
        except NotLowered:
            return False
        terms = quantized_add_terms(sa, za, sb, zb, sc, zc)
        a, b = (rewriter.visit_expr(dq.args[0]) for dq in dqs)
        if static_shape(a) is None or static_shape(a) != static_shape(b):
            return False
        if len(static_shape(a)) != 4:
            return False
        nhwc = a in rewriter.nhwc and b in rewriter.nhwc
        if not nhwc and (a in rewriter.nhwc or b in rewriter.nhwc):
            return False
        inputs = (rewriter.nhwc[a], rewriter.nhwc[b]) if nhwc else (a, b)
        call = rewriter.builder_.call_te(
            quantized_add,
            *inputs,
            a_ratio=terms[0],
            b_ratio=terms[1],
            constant=terms[2],
            out_dtype=str(value.attrs.out_dtype),
            primfunc_name_hint="quantized_add",
        )
        if nhwc:
            rewriter.bind(binding.var, call)
        else:
            rewriter.set_var_remap(binding.var, rewriter.emit_as(binding.var, call))
        return True

    def _requantizes_to_itself(dq, quantize) -> bool:
        """Whether quantize(dequantize(q)) has the same scale, zero point and type on both
        sides: then every q comes back as it was ((q - z) * s / s is within 255 x 2^-22 of
        q - z, far from a rounding boundary), and the pair is a copy. DenseNet's every
        concat rereads the one before it at its own scale: 1.1 ms for 56 x 56 x 224 bytes."""
        if _dtype(dq.args[0]) != str(quantize.attrs.out_dtype):
            return False
        try:
            return all(
                np.array_equal(constant(a, "a scale or zero point"), constant(b, "its pair"))
                for a, b in zip(dq.args[1:], quantize.args[1:], strict=True)
            )
        except NotLowered:
            return False

    def requantized_concat(rewriter, binding) -> bool:
        """quantize(concat(dequantize(a), dequantize(b), ...)) as concat(quantize(
        dequantize(a)), ...): the same arithmetic per element, but each requantize fuses into
        the kernel that made its input and the concat copies bytes, not floats (a SqueezeNet
        fire module's, an FPN's joins)."""
        value = binding.value
        if _op_name(value) != "relax.quantize" or str(value.attrs.out_dtype) not in QUANT_TYPES:
            return False
        cat = bindings.producer(value.args[0], "relax.concat")
        if cat is None or not isinstance(cat.args[0], relax.Tuple):
            return False
        dqs = [bindings.producer(f, "relax.dequantize") for f in cat.args[0].fields]
        if any(dq is None or _dtype(dq.args[0]) not in QUANT_TYPES for dq in dqs):
            return False
        if any(not is_scalar(a) for dq in dqs for a in dq.args[1:]) or not all(
            is_scalar(a) for a in value.args[1:]
        ):
            return False
        parts = [rewriter.visit_expr(dq.args[0]) for dq in dqs]
        if any(getattr(p.ty, "ndim", -1) != 4 for p in parts):
            return False
        nhwc = any(p in rewriter.nhwc for p in parts)
        parts = [rewriter.to_nhwc(p) if nhwc else p for p in parts]
        requantized = [
            p
            if _requantizes_to_itself(dq, value)
            else rewriter.builder_.emit(
                relax.op.quantize(
                    relax.Call(dq.op, [p, *dq.args[1:]], dq.attrs),
                    *value.args[1:],
                    axis=int(value.attrs.axis),
                    out_dtype=str(value.attrs.out_dtype),
                )
            )
            for dq, p in zip(dqs, parts, strict=True)
        ]
        if nhwc:
            rewriter.bind(binding.var, nhwc_layout_ops.concat(rewriter.builder_, cat, requantized))
        else:
            joined = relax.op.concat(requantized, int(cat.attrs.axis))
            rewriter.set_var_remap(binding.var, rewriter.emit_as(binding.var, joined))
        return True

    def lower(rewriter, binding) -> bool:
        chain = chains.get(binding.var)
        if chain is None:
            return quantized_add_in_nhwc(rewriter, binding) or requantized_concat(
                rewriter, binding
            )
        builder = rewriter.builder_
        x = rewriter.visit_expr(chain.x)
        if isinstance(chain, _Passthrough) and nhwc_pool(chain.call):
            pooled = emit_pool(builder, chain.call, rewriter.to_nhwc(x))
            if chain.requantize is not None:
                dq, quantize = chain.requantize
                value = relax.Call(dq.op, [builder.emit(pooled), *dq.args[1:]], dq.attrs)
                pooled = relax.Call(quantize.op, [value, *quantize.args[1:]], quantize.attrs)
            rewriter.bind(binding.var, pooled)
        elif isinstance(chain, _Passthrough):
            call = chain.call
            rewriter.set_var_remap(
                binding.var,
                rewriter.emit_as(binding.var, relax.Call(call.op, [x, *call.args[1:]], call.attrs)),
            )
        elif _op_name(chain.compute) == "relax.matmul":
            rewriter.set_var_remap(
                binding.var, rewriter.emit_as(binding.var, _emit(builder, chain, x, layout))
            )
        else:
            rewriter.bind(binding.var, _emit(builder, chain, rewriter.to_nhwc(x), layout))
        return True

    return rewrite(mod, lower), layers
