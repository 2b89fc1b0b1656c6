"""Walking a TIR function's statements from Python (TVM 0.27 has no TIR visitor there)."""

from __future__ import annotations


def _walk(func, keep) -> list:
    found = []

    def walk(stmt) -> None:
        if stmt is None:
            return
        if keep(stmt):
            found.append(stmt)
        for part in getattr(stmt, "seq", ()):
            walk(part)
        for name in ("block", "body", "then_case", "else_case"):
            walk(getattr(stmt, name, None))

    walk(func.body)
    return found


def sblocks(func) -> list:
    """Every SBlock of the PrimFunc `func`, outermost first."""
    from tvm import s_tir

    return _walk(func, lambda stmt: isinstance(stmt, s_tir.SBlock))


def loops(func) -> list:
    """Every For loop of the PrimFunc `func`, outermost first."""
    from tvm import tirx

    return _walk(func, lambda stmt: isinstance(stmt, tirx.For))
