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

    n, height, width, channels = x_shape
    blocks, _, kh, kw, _, _ = weight_shape
    _, oh, ow, oc = out_shape
    sh, sw = strides
    dh, dw = dilation
    # One row of every pixel: a stride-1 1x1 conv over an unpadded input.
    flat = (kh, kw, sh, sw) == (1, 1, 1, 1) and (height, width) == (oh, ow)
    row_pixels, image_rows = (oh * ow, 1) if flat else (ow, oh)
    rows = min(TILE_ROWS, row_pixels)
    per_row = -(-row_pixels // rows)
    positions = image_rows * per_row
    pairs = -(-positions // 2)
    block_pairs = -(-blocks // 2)
    tasks = -(-pairs // POSITIONS_PER_TASK)
    slices = channels // SLICE
    weight_stride = kh * kw * TILE_BYTES
    x_stride = sw * channels

    with IRBuilder() as builder:
        with T.prim_func():
            attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE}
            flops = 2 * n * oh * ow * oc * channels * kh * kw
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
                        with T.parallel(0, n * block_pairs * tasks) as task:
                            b = task // (block_pairs * tasks)
                            pair_of_blocks = task // tasks % block_pairs
                            first_pair = task % tasks * POSITIONS_PER_TASK
                            _task(T, locals())
    return builder.get()


def _task(T, v: dict) -> None:
    """One parallel task: POSITIONS_PER_TASK pixel-tile pairs x one pair of output-channel
    blocks (amx_conv2d's locals in `v`)."""
    config = T.alloc_buffer((64,), "uint8")
    sums = T.alloc_buffer((4, v["rows"], LANES), "int32")
    _tile_config(T, config, v["rows"])
    _intrinsic(T, "ldtilecfg", T.address_of(config[0]))
    b, rows, per_row = v["b"], v["rows"], v["per_row"]
    block0 = v["pair_of_blocks"] * 2
    block1 = T.min(block0 + 1, v["blocks"] - 1)
    with T.serial(0, POSITIONS_PER_TASK) as step:
        pair = v["first_pair"] + step
        with T.If(pair < v["pairs"]):
            with T.Then():
                p0 = pair * 2
                p1 = T.min(p0 + 1, v["positions"] - 1)
                starts = [
                    (p // per_row, T.min(p % per_row * rows, v["row_pixels"] - rows))
                    for p in (p0, p1)
                ]
                for tile in range(4):
                    _intrinsic(T, "tilezero", T.int8(tile))
                _products(T, v, starts, (block0, block1))
                for tile in range(4):
                    _intrinsic(
                        T,
                        "tilestored64",
                        T.int8(tile),
                        T.address_of(sums[tile, 0, 0]),
                        T.int64(TILE_BYTES),
                    )
                _requantize_tiles(T, v, sums, starts, (block0, block1))
    _intrinsic(T, "tilerelease")


def _products(T, v: dict, starts, blocks) -> None:
    """The 4 accumulator tiles += every tap and channel slice."""
    x, w, b = v["x"], v["w"], v["b"]
    width = v["width"]
    with T.serial(0, v["kh"]) as ry:
        with T.serial(0, v["kw"]) as rx:
            with T.serial(0, v["slices"]) as s:
                for tile, (row, start) in enumerate(starts):
                    if v["flat"]:  # the image as one row: pixel `start` of it
                        y, z = start // width, start % width
                    else:
                        y = row * v["sh"] + ry * v["dh"]
                        z = start * v["sw"] + rx * v["dw"]
                    _intrinsic(
                        T,
                        "tileloadd64",
                        T.int8(4 + tile),
                        T.address_of(x[b, y, z, s * SLICE]),
                        T.int64(v["x_stride"]),
                    )
                for tile, block in enumerate(blocks):
                    _intrinsic(
                        T,
                        "tileloadd64",
                        T.int8(6 + tile),
                        T.address_of(w[block, s * 16, ry, rx, 0, 0]),
                        T.int64(v["weight_stride"]),
                    )
                for a in range(2):
                    for c in range(2):
                        _intrinsic(T, "tdpbusd", T.int8(a * 2 + c), T.int8(4 + a), T.int8(6 + c))


def _requantize_tiles(T, v: dict, sums, starts, blocks) -> None:
    """Each stored tile's sums requantized into the output, as packed_conv2d's epilogue."""
    out, bias, multiplier, b = v["out"], v["bias"], v["multiplier"], v["b"]
    ow = v["ow"]
    for a, (row, start) in enumerate(starts):
        for c, block in enumerate(blocks):
            with T.serial(0, v["rows"]) as m:
                with T.vectorized(0, LANES) as lane:
                    channel = block * LANES + lane
                    pixel = start + m if v["flat"] else row * ow + start + m
                    y, z = pixel // ow, pixel % ow
                    value = requantize_sum(
                        sums[a * 2 + c, m, lane],
                        bias[channel],
                        multiplier[channel],
                        v["out_zero_point"],
                        v["out_dtype"],
                        v["in_int32"],
                    )
                    T.buffer_store(out, value, [b, y, z, channel])
