"""Integer dot-product tensor intrinsics for the int8 kernels, where TVM 0.27's own do not fit.

- `dot_16x4_vnni` (TVM's name, which MetaSchedule's default rules for VNNI CPUs ask for):
  TVM 0.27 calls llvm.x86.avx512.vpdpbusd.512 with <16 x i32> byte operands; LLVM 22 (the one
  in the apache-tvm wheel) declares them <64 x i8> (llvm-project PR 155194), so every kernel
  using it failed LLVM's module verification. Re-registered with the operand types of the
  LLVM TVM was built with; the description, which the tensorizer matches, is TVM's.
- `dot_8x2x2_avx2_local`: the dot product for AVX2 CPUs without VNNI, exact. TVM's x86
  intrinsics without VNNI use vpmaddubsw, whose u8 x s8 pair sums saturate at int16 (255 *
  127 * 2 > 32767). Here the 4 activations (widened to int16 by the pack) are broadcast, the 8 x 4
  weights sign-extended to int16 in two halves, and vpmaddwd forms the exact int32 pair sums,
  which accumulate as they are: C[8, 2] holds each output channel's two pair sums, added once
  in the epilogue (packed_conv2d's pair_sums). Reducing them in the loop (vphaddd and a lane
  shuffle per instruction) ran ResNet-18 in 72 ms on an AVX2 build timed here.
- `<name>_local` variants: the same instructions with the accumulators in a "local" buffer.
  TVM's descriptions match only global buffers. The int8 convolution's schedule
  (backends/kernels/int8/schedules.py) keeps a register tile small enough for the stack in a global
  buffer (an LLVM alloca, which LLVM turns into registers) and a larger one local.
"""

from __future__ import annotations

from edgepress.backends.targets.description import AVX2_8x2x2, SDOT_4x4, USDOT_4x4, VNNI_16x4

LOCAL = "_local"
LLVM_WITH_BYTE_OPERANDS = 22  # first LLVM whose vpdpbusd takes <64 x i8> operands


def _description(lanes: int, act_dtype: str, accumulator_scope: str):
    """C[i] += A[k] * B[i, k] over `lanes` x 4: what the tensorizer matches."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), act_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=accumulator_scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _implementation(
    lanes: int, act_dtype: str, instruction: str, operand_types: tuple[str, str], scope: str
):
    """One call of `instruction`: the accumulators, the 4 activation bytes broadcast to every
    lane, and the lanes x 4 weight bytes, passed as the LLVM declaration's `operand_types`."""
    from tvm.script import tirx as T

    a_type, b_type = operand_types

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), act_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instruction),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(
                    T.broadcast(
                        T.reinterpret(A.vload([0], f"{act_dtype}x4"), dtype="int32"), lanes
                    ),
                    dtype=a_type,
                ),
                T.reinterpret(B.vload([0, 0], dtype=f"int8x{4 * lanes}"), dtype=b_type),
                dtype=f"int32x{lanes}",
            )

    return _description(lanes, act_dtype, scope), impl


def _vnni(scope: str, byte_operands: bool):
    types = ("uint8x64", "int8x64") if byte_operands else ("int32x16", "int32x16")
    return _implementation(16, "uint8", "llvm.x86.avx512.vpdpbusd.512", types, scope)


def _sdot(scope: str):
    types = ("int8x16", "int8x16")
    return _implementation(4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", types, scope)


def _usdot(scope: str):
    types = ("uint8x16", "int8x16")
    return _implementation(4, "uint8", "llvm.aarch64.neon.usdot.v4i32.v16i8", types, scope)


def _avx2_pairs(scope: str):
    """dot_8x2x2_avx2 (module docstring): C[i, p] += A[2p + j] * B[i, 2p + j] over j in 0, 1,
    the 8 x 2 pair sums left unreduced (the epilogue adds each output channel's two). A is 4
    activations the pack has widened to int16. The operands are expressions, not named
    values: TVMScript makes a named value a buffer, which LowerTVMBuiltin turns into a
    workspace allocation per call site."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int16", offset_factor=1)
        B = T.match_buffer(b, (8, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (8, 2), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:8, 0:2], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8, 0:2])
            for i in T.serial(0, 8):
                for p in T.serial(0, 2):
                    for j in T.serial(0, 2):
                        with T.sblock("update"):
                            vi, vp, vj = T.axis.remap("SSR", [i, p, j])
                            C[vi, vp] = C[vi, vp] + T.cast(A[vp * 2 + vj], "int32") * T.cast(
                                B[vi, vp * 2 + vj], "int32"
                            )

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int16", offset_factor=1)
        B = T.match_buffer(b, (8, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (8, 2), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:8, 0:2], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8, 0:2])
            for half in T.unroll(2):  # output channels 0-3, then 4-7: C[4h:4h+4, 0:2]
                C.vstore(
                    [half * 4, 0],
                    C.vload([half * 4, 0], dtype="int32x8")
                    + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                        # [a0 a1 a2 a3] four times over: one 8-byte broadcast load.
                        T.reinterpret(
                            T.broadcast(T.reinterpret(A.vload([0], "int16x4"), dtype="int64"), 4),
                            dtype="int16x16",
                        ),
                        T.Cast("int16x16", B.vload([half * 4, 0], dtype="int8x16")),
                        dtype="int32x8",
                    ),
                )

    return desc, impl


def register_x86() -> None:
    """TVM's VNNI intrinsic fixed for this LLVM, AVX2's exact one, and their local-accumulator
    variants."""
    from tvm.s_tir import TensorIntrin
    from tvm.target.codegen import llvm_version_major

    byte_operands = llvm_version_major() >= LLVM_WITH_BYTE_OPERANDS
    TensorIntrin.register(VNNI_16x4, *_vnni("global", byte_operands), override=True)
    TensorIntrin.register(VNNI_16x4 + LOCAL, *_vnni("local", byte_operands), override=True)
    TensorIntrin.register(AVX2_8x2x2, *_avx2_pairs("global"), override=True)
    TensorIntrin.register(AVX2_8x2x2 + LOCAL, *_avx2_pairs("local"), override=True)


def register_arm() -> None:
    """sdot with local accumulators (TVM's own global one stays as it is); usdot (i8mm)."""
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(SDOT_4x4 + LOCAL, *_sdot("local"), override=True)
    TensorIntrin.register(USDOT_4x4, *_usdot("global"), override=True)
    TensorIntrin.register(USDOT_4x4 + LOCAL, *_usdot("local"), override=True)
