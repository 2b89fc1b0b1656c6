"""A broadcast that expands a computed value stays out of the kernel that computes it.

FuseOps fuses an elementwise or broadcasting op into the conv or matmul before it. Where the
op's output is larger than that kernel's (a squeeze-and-excitation gate: x + x * hardsigmoid(
conv(pool(x))), the conv [1, 1, 1, C] and the product [1, H, W, C]), the fused function
writes far more than the kernel computes: no kernel schedule tiles it (ppocrv5-det's five
such gates ran as plain loops on one thread, 2.9 of its 61 ms) and one would compute the
gate again for every pixel. Marked injective at that call, the op fuses with the elementwise
ops around it instead, a function of its own (the elementwise schedule's, or the pad rule's
where the next conv's padding fuses in), and the kernel keeps its small epilogue.

A broadcast of a constant (a bias, a batch norm's scale) is left as it is: that one belongs
in the kernel's epilogue.
"""

from __future__ import annotations

import math

# tvm's OpPatternKind: AnnotateTIROpPattern calls a broadcast over unit dims elementwise
ELEMENTWISE, BROADCAST, INJECTIVE = 0, 1, 2
SUFFIX = "_expanding"


def _elements(expr) -> int | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None:
        return None
    try:
        return math.prod(int(d) for d in shape)
    except TypeError:  # a symbolic dim
        return None


def _expands_computed_value(call) -> bool:
    """Whether a call_tir broadcasts a computed (not constant) operand to the full size of
    another: a product or sum of the two, not a pad (whose one operand is smaller)."""
    import tvm

    size = _elements(call)
    computed = [a for a in call.args[1].fields if not isinstance(a, tvm.ir.Constant)]
    sizes = [_elements(a) for a in computed]
    return size is not None and size in sizes and any(n is not None and n < size for n in sizes)


def unfuse_expanding_broadcasts(mod):
    """`mod` (after AnnotateTIROpPattern, before FuseOps) with each call of an elementwise or
    broadcasting PrimFunc that expands a computed value calling an injective copy of it."""
    import tvm
    from tvm import relax

    copies: dict = {}  # the broadcasting PrimFunc's GlobalVar -> its injective copy's

    def injective(gv):
        if gv not in copies:
            func = mod[gv].with_attr("op_pattern", INJECTIVE)
            copies[gv] = builder.add_func(func, gv.name_hint + SUFFIX)
        return copies[gv]

    @relax.expr_functor.mutator
    class Unfuse(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != tvm.ir.Op.get("relax.call_tir"):
                return call
            gv = call.args[0]
            func = mod[gv] if isinstance(gv, tvm.ir.GlobalVar) else None
            if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None:
                return call
            pattern = func.attrs.get("op_pattern")
            if pattern is None or int(pattern) not in (ELEMENTWISE, BROADCAST):
                return call
            if not isinstance(call.args[1], relax.Tuple) or not _expands_computed_value(call):
                return call
            return relax.Call(call.op, [injective(gv), *call.args[1:]], call.attrs, call.ty_args)

    unfuse = Unfuse(mod)
    builder = unfuse.builder_
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            builder.update_func(gv, unfuse.visit_expr(func))
    return builder.get()
