"""x86 int8 dot-product tensor intrinsics that TVM 0.27's own do not provide correctly.

- `dot_16x4_vnni` (TVM's name, which MetaSchedule's rules for VNNI CPUs ask for): TVM 0.27
  calls llvm.x86.avx512.vpdpbusd.512 with <16 x i32> byte operands; LLVM 22 (the one in the
  apache-tvm wheel) declares them <64 x i8> (llvm-project PR 155194), so every kernel using
  the intrinsic failed LLVM's module verification. Re-registered here with the operand types
  of the LLVM TVM was built with; the description, which the tensorizer matches, is TVM's.
"""

from __future__ import annotations

VNNI_16x4 = "dot_16x4_vnni"
LLVM_WITH_BYTE_OPERANDS = 22  # first LLVM whose vpdpbusd takes <64 x i8> operands


def _vnni_impl_bytes():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_u8x64,
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    return impl


def register_x86() -> None:
    """Replace TVM's VNNI implementation where its LLVM wants byte operands (idempotent)."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import x86
    from tvm.target.codegen import llvm_version_major

    if llvm_version_major() >= LLVM_WITH_BYTE_OPERANDS:
        TensorIntrin.register(
            VNNI_16x4, x86.dot_product_16x4_u8i8i32_desc, _vnni_impl_bytes(), override=True
        )
