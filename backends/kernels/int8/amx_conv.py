"""The int8 convolution on Intel AMX tile registers (x86 with amx-int8: Sapphire Rapids and
later), a written kernel.

AMX's tdpbusd multiplies a tile of 16 rows x 64 u8 activations (16 pixels x 64 channels) by
a tile of 16 rows x 64 s8 weights (64 channels, as 16 groups of 4, x 16 output channels) into
16 x 16 int32 sums: 16384 multiply-adds an instruction, where AVX-512's vpdpbusd does 64. The
packed layouts of compute.py fit it as they are: an NHWC row of pixels is the activation tile
(its row stride the pixel's channels, times the stride), and pack_weight's
[OC/16, IC/4, KH, KW, 16, 4] gives the weight tile of one window tap, a row per 4 input
channels (its row stride KH x KW x 64 bytes).

Each step computes 2 pixel tiles x 2 output-channel blocks in 4 accumulator tiles (tmm0-3)
from 2 activation tiles (tmm4-5) and 2 weight tiles (tmm6-7), over every window tap and
64-channel slice, stores the sums, and requantizes them as compute.packed_conv2d does (its
epilogue, the same expressions). A row of pixels is cut into tiles of min(16, width) pixels;
the last tile of a row starts `width - 16` pixels in, so it computes again some of the tile
before it (the same values, written again). A stride-1 1x1 convolution without padding reads
its whole image as one row.

Tile state is per thread and the tile data needs the kernel's permission: each call asks
Linux for it (arch_prctl ARCH_REQ_XCOMP_PERM, granted to the whole process, once; later asks
return at once) and fails with a message where it is refused; each parallel task loads the tile
configuration and releases the tiles when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.backends.kernels.common.channel_concat import FLOPS_ATTR, OPAQUE, WRITTEN
from edgepress.backends.kernels.int8.compute import requantize_sum

NAME = "conv2d_int8_amx"  # the name its functions are added under (a number may follow)
TILE_ROWS = 16  # pixels per activation tile (rows of every tile)
TILE_BYTES = 64  # bytes per tile row: 64 channels, or 16 int32 sums
LANES = 16  # output channels per weight tile
SLICE = 64  # input channels per activation tile
POSITIONS_PER_TASK = 4  # pixel-tile pairs a parallel task computes (one tile configuration)
SYS_ARCH_PRCTL = 158
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


# Input channels are padded to whole slices (with the zero point, against zero weights) where
# that adds at most this share of multiply-adds: 96 -> 128 and 480 -> 512 run on AMX, 16 -> 64
# and 32 -> 64 stay on VNNI.
MOST_PADDING = 0.5


def amx_fits(in_channels: int, out_channels: int, act_dtype: str) -> str | None:
    """Why a conv's shape does not fit the AMX kernel, or None where it does."""
    if act_dtype != "uint8":
        return f"its activations are {act_dtype}, not uint8"
    if whole_slices(in_channels) > (1 + MOST_PADDING) * in_channels:
        return f"{in_channels} input channels, far from whole {SLICE}-channel slices"
    if out_channels % LANES:
        return f"{out_channels} output channels, not a multiple of {LANES}"
    return None


def whole_slices(channels: int) -> int:
    """The input channels the kernel reads: `channels` rounded up to whole slices."""
    return -(-channels // SLICE) * SLICE


def _tile_config(T, config, rows: int) -> None:
    """Palette 1 (byte 0); 8 tiles of 64-byte rows (bytes 16-31, two per tile): `rows` rows
    for the accumulators and the activations (tmm0-5, bytes 48-53), 16 for the weights."""
    for i in range(64):
        T.buffer_store(config, T.uint8(0), [i])
    T.buffer_store(config, T.uint8(1), [0])
    for tile in range(8):
        T.buffer_store(config, T.uint8(TILE_BYTES), [16 + 2 * tile])
        T.buffer_store(config, T.uint8(TILE_ROWS if tile >= 6 else rows), [48 + tile])


def _intrinsic(T, name: str, *args):
    T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


@dataclass(frozen=True)
class _Plan:
    """How one convolution is cut into tiles (amx_conv2d), with its shapes."""

    batch: int
    width: int  # of the padded input
    channels: int  # of the padded input: whole slices
    blocks: int  # 16-channel output blocks
    kh: int
    kw: int
    ow: int
    strides: tuple[int, int]
    dilation: tuple[int, int]
    flat: bool  # a stride-1 1x1 conv over an unpadded input: its image is one row
    row_pixels: int  # output pixels per row
    rows: int  # pixels per tile
    positions: int  # pixel tiles per image

    @property
    def per_row(self) -> int:
        return -(-self.row_pixels // self.rows)

    @property
    def pairs(self) -> int:  # pairs of pixel tiles per image
        return -(-self.positions // 2)

    @property
    def tasks(self) -> int:  # parallel tasks per image and pair of output blocks
        return -(-self.pairs // POSITIONS_PER_TASK)


def _plan(x_shape, weight_shape, out_shape, strides, dilation) -> _Plan:
    n, height, width, channels = x_shape
    blocks, _, kh, kw, _, _ = weight_shape
    _, oh, ow, _ = out_shape
    flat = (kh, kw, *strides) == (1, 1, 1, 1) and (height, width) == (oh, ow)
    row_pixels, image_rows = (oh * ow, 1) if flat else (ow, oh)
    rows = min(TILE_ROWS, row_pixels)
    positions = image_rows * -(-row_pixels // rows)
    return _Plan(n, width, channels, blocks, kh, kw, ow, strides, dilation, flat, row_pixels,
                 rows, positions)  # fmt: skip


def amx_conv2d(
    x_shape: tuple[int, int, int, int],
    weight_shape: tuple[int, ...],
    out_shape: tuple[int, int, int, int],
    *,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    out_zero_point: int,
    out_dtype: str,
    in_int32: bool,
):
    """The PrimFunc (x, weight, bias, multiplier) -> out of one convolution: x the padded
    uint8 NHWC input (compute.pack_activations), weight pack_weight's for 16 lanes, bias int32
    and multiplier float32 per output channel, out NHWC in `out_dtype`."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    plan = _plan(x_shape, weight_shape, out_shape, strides, dilation)
    oc = out_shape[3]
    flops = 2 * out_shape[0] * out_shape[1] * out_shape[2] * oc * plan.channels * plan.kh * plan.kw

    def requantize(acc, channel):
        return requantize_sum(
            acc, bias[channel], multiplier[channel], out_zero_point, out_dtype, in_int32
        )

    with IRBuilder() as builder:
        with T.prim_func():
            attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE}
            T.func_attr({**attrs, WRITTEN: True, FLOPS_ATTR: float(flops)})
            x = T.arg("x", T.Buffer(x_shape, "uint8"))
            w = T.arg("w", T.Buffer(weight_shape, "int8"))
            bias = T.arg("bias", T.Buffer((oc,), "int32"))
            multiplier = T.arg("multiplier", T.Buffer((oc,), "float32"))
            out = T.arg("out", T.Buffer(out_shape, out_dtype))
            with T.sblock("root"):
                granted = T.call_extern(
                    "int64",
                    "syscall",
                    T.int64(SYS_ARCH_PRCTL),
                    T.int64(ARCH_REQ_XCOMP_PERM),
                    T.int64(XFEATURE_XTILEDATA),
                )
                # One opaque block over the whole computation: Relax's passes over the
                # module's kernels (SplitLayoutRewritePreproc) expect a block under the root.
                with T.sblock("amx_conv"):
                    T.reads(x[:, :, :, :], w[:, :, :, :, :, :], bias[:], multiplier[:])
                    T.writes(out[:, :, :, :])
                    with T.Assert(
                        granted == T.int64(0),
                        "the AMX int8 kernels need a CPU with AMX and Linux 5.16 or later "
                        "(arch_prctl refused their tile data here); build with "
                        "--mattr=-amx-int8 for VNNI kernels only",
                    ):
                        block_pairs = -(-plan.blocks // 2)
                        per_image = block_pairs * plan.tasks
                        with T.parallel(0, plan.batch * per_image) as task:
                            _task(
                                T,
                                plan,
                                (x, w, out),
                                requantize,
                                image=task // per_image,
                                first_block=task // plan.tasks % block_pairs * 2,
                                first_pair=task % plan.tasks * POSITIONS_PER_TASK,
                            )
    return builder.get()


def _task(T, plan: _Plan, buffers, requantize, *, image, first_block, first_pair) -> None:
    """One parallel task: POSITIONS_PER_TASK pairs of pixel tiles x one pair of output-channel
    blocks of one image."""
    config = T.alloc_buffer((64,), "uint8")
    sums = T.alloc_buffer((4, plan.rows, LANES), "int32")
    _tile_config(T, config, plan.rows)
    _intrinsic(T, "ldtilecfg", T.address_of(config[0]))
    blocks = (first_block, T.min(first_block + 1, plan.blocks - 1))
    with T.serial(0, POSITIONS_PER_TASK) as step:
        pair = first_pair + step
        with T.If(pair < plan.pairs):
            with T.Then():
                tiles = (pair * 2, T.min(pair * 2 + 1, plan.positions - 1))
                starts = [
                    (p // plan.per_row, T.min(p % plan.per_row * plan.rows,
                                              plan.row_pixels - plan.rows))
                    for p in tiles
                ]  # fmt: skip
                for tile in range(4):
                    _intrinsic(T, "tilezero", T.int8(tile))
                _products(T, plan, buffers, image, starts, blocks)
                for tile in range(4):
                    address = T.address_of(sums[tile, 0, 0])
                    _intrinsic(T, "tilestored64", T.int8(tile), address, T.int64(TILE_BYTES))
                _requantize_tiles(T, plan, buffers[2], requantize, sums, image, starts, blocks)
    _intrinsic(T, "tilerelease")


def _products(T, plan: _Plan, buffers, image, starts, blocks) -> None:
    """The 4 accumulator tiles += every tap and channel slice."""
    x, w, _ = buffers
    (sh, sw), (dh, dw) = plan.strides, plan.dilation
    with T.serial(0, plan.kh) as ry:
        with T.serial(0, plan.kw) as rx:
            with T.serial(0, plan.channels // SLICE) as s:
                for tile, (row, start) in enumerate(starts):
                    if plan.flat:  # the image as one row: pixel `start` of it
                        y, z = start // plan.width, start % plan.width
                    else:
                        y, z = row * sh + ry * dh, start * sw + rx * dw
                    address = T.address_of(x[image, y, z, s * SLICE])
                    stride = T.int64(sw * plan.channels)
                    _intrinsic(T, "tileloadd64", T.int8(4 + tile), address, stride)
                for tile, block in enumerate(blocks):
                    address = T.address_of(w[block, s * 16, ry, rx, 0, 0])
                    stride = T.int64(plan.kh * plan.kw * TILE_BYTES)
                    _intrinsic(T, "tileloadd64", T.int8(6 + tile), address, stride)
                for a in range(2):
                    for c in range(2):
                        _intrinsic(T, "tdpbusd", T.int8(a * 2 + c), T.int8(4 + a), T.int8(6 + c))


def _requantize_tiles(T, plan: _Plan, out, requantize, sums, image, starts, blocks) -> None:
    """Each stored tile's sums requantized into the output, as packed_conv2d's epilogue."""
    for a, (row, start) in enumerate(starts):
        for c, block in enumerate(blocks):
            with T.serial(0, plan.rows) as m:
                with T.vectorized(0, LANES) as lane:
                    channel = block * LANES + lane
                    pixel = start + m if plan.flat else row * plan.ow + start + m
                    value = requantize(sums[a * 2 + c, m, lane], channel)
                    T.buffer_store(out, value, [image, pixel // plan.ow, pixel % plan.ow, channel])
