"""What one build's target can do, derived once from its TVM target and handed to every stage.

The lowerings, the schedule rules, the tensor intrinsics and the Relax pipeline each need a
few facts about the target (vector width, the int8 dot product's layout, GPU or not, how many
vector registers a register tile may take); they read them here instead of sniffing the TVM
target themselves, so a fact is decided in one place and the report can show it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# TVM's tensor intrinsics for the int8 dot products (their registered names; the
# implementations are kernels/int8/dot_intrinsics.py's).
VNNI_16x4 = "dot_16x4_vnni"
SDOT_4x4 = "dot_4x4_i8i8s32_sdot"
USDOT_4x4 = "dot_4x4_u8i8s32_usdot"  # arm64 +i8mm: u8 activations x s8 weights
AVX2_8x2x2 = "dot_8x2x2_avx2"


@dataclass(frozen=True)
class DotLayout:
    """What the target's int8 dot-product instruction reads."""

    act_dtype: str  # activations: "uint8" (x86 VNNI), "int16" (x86 AVX2) or "int8" (arm64)
    lanes: int  # int32 accumulators per instruction (output channels per weight block)
    intrinsic: str | None  # TVM's tensor intrinsic for it, None where the target has none
    pair_sums: bool = False  # accumulators hold pair sums (packed_conv2d)
    # x86 AMX tile registers (amx-int8): convs whose channels fit run on kernels/int8/amx_conv
    amx: bool = False


@dataclass(frozen=True)
class TargetDescription:
    """Facts about one TVM target (see `describe`)."""

    family: str  # "x86_64", "arm64" or "cuda": which CPU/GPU family the code is for
    is_gpu: bool
    # float32 lanes of a vector register: edgepress's float kernels (None: GPU, none of ours)
    float_lanes: int | None
    # the int8 dot product's packing (None: no integer kernels for this target)
    dot: DotLayout | None
    vector_registers: int  # architectural vector registers (a register tile's budget)
    # tvm.s_tir.tensor_intrin modules the target can use (kernels/common/tensor_intrinsics)
    intrinsic_families: tuple[str, ...]
    # MetaSchedule's postprocessors miss the tensorize step for x86 without VNNI (see
    # space_generator)
    needs_tensorize_postproc: bool

    def to_json(self) -> dict:
        return asdict(self)

    def space_generator(self):
        """MetaSchedule's design-space generator: its defaults, except that x86 CPUs without
        VNNI also get the RewriteTensorize postprocessor. MetaSchedule adds it only for VNNI
        (and arm) targets; without it the int8 conv rule's tensorize annotation for AVX2's
        exact dot product is never acted on. Its accumulators' zeroing is left to LLVM
        (vectorize_init_loop expects one init loop; the pair sums' has two)."""
        from tvm.s_tir import meta_schedule as ms

        if not self.needs_tensorize_postproc:
            return "post-order-apply"
        postprocs = []
        for postproc in ms.postproc.Postproc.create("llvm"):
            postprocs.append(postproc)
            if isinstance(postproc, ms.postproc.RewriteReductionBlock):
                postprocs.append(ms.postproc.RewriteTensorize(vectorize_init_loop=False))
        return ms.space_generator.PostOrderApply(postprocs=postprocs)


def describe(target) -> TargetDescription:
    """The description of a tvm.target.Target (CPU features as LLVM resolves them for its mcpu
    and mattr).

    The int8 layouts: x86 with AVX-512 VNNI: u8 x s8, 16 lanes (vpdpbusd). x86 with AVX2:
    activations widened to int16 by the pack (ResNet-18 ran 39 ms against 46 ms widening them
    in the loop, AVX2 code timed on an AVX-512 CPU), 8 lanes, exact int32 pair sums (vpmaddwd;
    TVM's own x86 intrinsics use vpmaddubsw, which saturates in int16 and would break
    exactness). Older x86: 8 lanes, no intrinsic (LLVM vectorizes the int32 arithmetic).
    With AMX (amx-int8, amx-tile) as well, the convs whose channels fit its tiles run on them
    (kernels/int8/amx_conv), the others on VNNI. arm64: u8 x s8, 4 lanes, with +i8mm (usdot:
    uint8 activations read as they are); else s8 x s8 (sdot with +dotprod; without it, no
    intrinsic either).
    """
    from tvm.relax.backend.utils import BackendDispatcher
    from tvm.target import codegen

    if BackendDispatcher.is_gpu_target(target):
        return TargetDescription(
            family=str(target.kind.name),
            is_gpu=True,
            float_lanes=None,
            dot=None,
            vector_registers=0,
            intrinsic_families=(str(target.kind.name),),
            needs_tensorize_postproc=False,
        )

    def has(feature: str) -> bool:
        return bool(codegen.target_has_features(feature, target))

    if "aarch64" in str(target.attrs.get("mtriple", "")):
        if has("i8mm"):
            dot = DotLayout("uint8", 4, USDOT_4x4)
        else:
            dot = DotLayout("int8", 4, SDOT_4x4 if has("dotprod") else None)
        return TargetDescription("arm64", False, 4, dot, 32, ("arm_cpu",), False)
    if has("avx512f"):
        lanes, registers = 16, 32
    elif has("avx2") or has("avx"):
        lanes, registers = 8, 16
    else:
        lanes, registers = 4, 16
    if has("avx512vnni"):
        dot = DotLayout("uint8", 16, VNNI_16x4, amx=has("amx-int8") and has("amx-tile"))
    elif has("avx2"):
        dot = DotLayout("int16", 8, AVX2_8x2x2, pair_sums=True)
    else:
        dot = DotLayout("uint8", 8, None)
    return TargetDescription(
        "x86_64", False, lanes, dot, registers, ("x86",), not has("avx512vnni")
    )
