"""Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions on CPUs (`--winograd`).

Relax legalizes every conv2d to TOPI's direct convolution; TOPI also has the Winograd form
(`conv2d_winograd_nchw_without_weight_transform`: input transform, 36 batched GEMMs, inverse
transform), which needs 4x fewer multiplications in the GEMMs. Its weight transform
G w G^T is done here, in numpy, on the constant weight, so the library holds the transformed
weights and no run pays for it. A conv with a non-constant weight, a stride or dilation, groups
or another layout, or a small output (under MIN_TILES tiles) keeps the direct form.

F(4x4, 3x3) with TVM's interpolation points: outputs differ from direct convolution by a few
float32 ulps times the transform's growth (about 1e-5 relative on ResNet-18's layers).
"""

from __future__ import annotations

import numpy as np

TILE = 4
# Output tiles per image below which Winograd loses: its 36 batched GEMMs get fewer columns than
# one vector register holds. Measured on ResNet-18 (tuned, 1 thread): the 7x7 layer (4 tiles)
# took 5.3 ms a call as Winograd against about 2 ms direct; 56x56 (196 tiles) and 28x28 (49)
# gain.
MIN_TILES = 32


def why_not_winograd(call, weight: np.ndarray | None) -> str | None:
    a = call.attrs
    if weight is None:
        return "the weight is not a constant"
    if weight.dtype != np.float32:
        return f"weight dtype {weight.dtype}"
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        return "not a 3x3 kernel"
    if [int(s) for s in a.strides] != [1, 1] or [int(d) for d in a.dilation] != [1, 1]:
        return "strided or dilated"
    if int(a.groups) != 1:
        return "grouped"
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout not in ("", "NCHW"):
        return "not NCHW/OIHW"
    shape = call.ty.shape  # the conv output: [N, C, H, W]
    h, w = int(shape[2]), int(shape[3])
    if -(-h // TILE) * -(-w // TILE) < MIN_TILES:
        return f"{h}x{w} output: fewer than {MIN_TILES} tiles"
    return None


def transformed_weight(weight: np.ndarray) -> np.ndarray:
    """G w G^T per (out, in) pair, as [alpha, alpha, in, out]: the layout TOPI's pre-computed
    Winograd reads."""
    from edgepress.backends.upstream import winograd_matrices

    _, _, g = winograd_matrices(TILE, 3)
    packed = np.einsum("ek,oikl,nl->enio", g, weight.astype(np.float64), g)
    return packed.astype(np.float32)


def legalize_conv2d(bb, call):
    """LegalizeOps hook for relax.nn.conv2d: Winograd where it applies, else TVM's default."""
    import tvm
    from tvm import relax, topi

    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
    arg = call.args[1]
    # Relax constants arrive as generic IR constants holding the tensor in `value`.
    weight = arg.value.numpy() if hasattr(arg, "value") and hasattr(arg.value, "numpy") else None
    if why_not_winograd(call, weight) is not None:
        return default(bb, call)
    return bb.call_te(
        topi.nn.conv2d_winograd_nchw_without_weight_transform,
        call.args[0],
        relax.const(transformed_weight(weight)),
        [1, 1],
        [int(p) for p in call.attrs.padding],
        [1, 1],
        "float32",
    )
