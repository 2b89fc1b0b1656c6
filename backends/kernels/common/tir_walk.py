"""Walking a TIR function's blocks from Python (TVM 0.27 has no TIR visitor there)."""

from __future__ import annotations


def sblocks(func) -> list:
    """Every SBlock of the PrimFunc `func`, outermost first."""
    from tvm import s_tir

    blocks = []

    def walk(stmt) -> None:
        if stmt is None:
            return
        if isinstance(stmt, s_tir.SBlock):
            blocks.append(stmt)
        for part in getattr(stmt, "seq", ()):
            walk(part)
        for name in ("block", "body", "then_case", "else_case"):
            walk(getattr(stmt, name, None))

    walk(func.body)
    return blocks
