"""Integer dot-product tensor intrinsics for the int8 kernels, where TVM 0.27's own do not fit.

- `dot_16x4_vnni` (TVM's name, which MetaSchedule's default rules for VNNI CPUs ask for):
  TVM 0.27 calls llvm.x86.avx512.vpdpbusd.512 with <16 x i32> byte operands; LLVM 22 (the one
  in the apache-tvm wheel) declares them <64 x i8> (llvm-project PR 155194), so every kernel
  using it failed LLVM's module verification. Re-registered with the operand types of the
  LLVM TVM was built with; the description, which the tensorizer matches, is TVM's.
- `dot_8x4_avx2_local`: the same dot product for AVX2 CPUs without VNNI, exact. TVM's x86
  intrinsics without VNNI use vpmaddubsw, whose u8 x s8 pair sums saturate at int16 (255 *
  127 * 2 > 32767). Here the 4 activations are widened to int16 and broadcast, the 8 x 4
  weights sign-extended to int16 in two halves, and vpmaddwd forms the exact int32 pair sums;
  vphaddd adds the pairs of each lane and a shuffle puts the lanes back in order.
- `<name>_local` variants of VNNI's and arm64's sdot: the same instructions with the
  accumulators in a "local" buffer. TVM's descriptions match only global buffers, and the
  int8 convolution's schedule (backends/int8_schedules.py) keeps its register tile local, so
  that LLVM holds it in vector registers.
"""

from __future__ import annotations

VNNI_16x4 = "dot_16x4_vnni"
SDOT_4x4 = "dot_4x4_i8i8s32_sdot"
AVX2_8x4 = "dot_8x4_avx2"
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
            a_i32 = T.reinterpret(A.vload([0], f"{act_dtype}x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instruction),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(a_i32, lanes), dtype=a_type),
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


def _avx2_exact():
    """dot_8x4_avx2 with local accumulators (module docstring)."""
    from tvm.script import tirx as T

    def intrin(name: str):
        return T.llvm_lookup_intrinsic_id(f"llvm.x86.avx2.{name}")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (8, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            # [a0 a1 a2 a3] as int16, four times over.
            a_i64 = T.reinterpret(T.Cast("int16x4", A.vload([0], "uint8x4")), dtype="int64")
            a = T.reinterpret(T.broadcast(a_i64, 4), dtype="int16x16")
            low = T.Cast("int16x16", B.vload([0, 0], dtype="int8x16"))  # lanes 0-3
            high = T.Cast("int16x16", B.vload([4, 0], dtype="int8x16"))  # lanes 4-7
            pairs = T.call_llvm_pure_intrin(
                intrin("phadd.d"),
                T.call_llvm_pure_intrin(intrin("pmadd.wd"), a, low, dtype="int32x8"),
                T.call_llvm_pure_intrin(intrin("pmadd.wd"), a, high, dtype="int32x8"),
                dtype="int32x8",
            )  # lanes 0 1 4 5 2 3 6 7
            in_order = T.Shuffle([pairs], [0, 1, 4, 5, 2, 3, 6, 7])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + in_order

    return _description(8, "uint8", "local"), impl


def register_x86() -> None:
    """TVM's VNNI intrinsic fixed for this LLVM, and its local-accumulator variant."""
    from tvm.s_tir import TensorIntrin
    from tvm.target.codegen import llvm_version_major

    byte_operands = llvm_version_major() >= LLVM_WITH_BYTE_OPERANDS
    TensorIntrin.register(VNNI_16x4, *_vnni("global", byte_operands), override=True)
    TensorIntrin.register(VNNI_16x4 + LOCAL, *_vnni("local", byte_operands), override=True)
    TensorIntrin.register(AVX2_8x4 + LOCAL, *_avx2_exact(), override=True)


def register_arm() -> None:
    """sdot with local accumulators (TVM's own global one stays as it is)."""
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(SDOT_4x4 + LOCAL, *_sdot("local"), override=True)
