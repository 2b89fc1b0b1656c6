"""Kernels too small to share between threads run on the calling thread alone.

A parallel loop costs a wake-up of the thread pool and a join, a few microseconds, whatever the
loop does. Schedules parallelize their outer loop regardless of size (MetaSchedule's sample,
and the rules of ours), so a model of many small kernels ran slower on 2 threads than on 1:
silero-vad's LSTM step 0.031 ms on 1 thread, 0.077 on 2 (onnxruntime 0.081); ddddocr's
unrolled LSTM, 62 steps of small kernels, barely gained from the second core. Here a kernel
of fewer than SERIAL_FLOPS operations whose buffers hold fewer than SERIAL_BYTES has its
parallel loops made serial: below those sizes one core finishes before two would start.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# one fork and join of TVM's thread pool (a few us) is 100k-300k FLOPs of a vectorized core,
# or tens of KB of memory traffic
SERIAL_FLOPS = 100_000
SERIAL_BYTES = 64 * 1024


def _bytes(func) -> int | None:
    """Bytes of the function's tensor parameters (its inputs and outputs, from its type:
    Python sees no buffer_map), None where one is symbolic."""
    import tvm

    total = 0
    for param in func.ty.params:
        shape = getattr(param, "shape", None)
        if shape is None:  # not a tensor (a scalar argument)
            continue
        try:
            elements = math.prod(int(d) for d in shape.values)
        except (TypeError, AttributeError):  # a symbolic or unknown shape
            return None
        total += elements * tvm.DataType(str(param.dtype)).bits // 8
    return total


def is_small(func, flops: float) -> bool:
    """Whether `func` (of `flops` estimated operations) is below both sizes."""
    size = _bytes(func)
    return size is not None and flops < SERIAL_FLOPS and size < SERIAL_BYTES


def _serial(func):
    """`func` with its parallel loops serial (tiles.rebuild: the path down to them rebuilt)."""
    from tvm import tirx

    from edgepress.backends.kernels.common.tiles import rebuild

    def kind_of(loop):
        return tirx.ForKind.SERIAL if loop.kind == tirx.ForKind.PARALLEL else loop.kind

    body = rebuild(func.body, None, lambda loop, state: (state, None), kind_of=kind_of)
    return func.with_body(body)


def serial_where_small(mod, flops_of: Callable[[str], float | None]):
    """`mod` with the parallel loops of its small PrimFuncs serial; returns (module, names).
    `flops_of(name)`: the function's estimate, taken before scheduling (None: unknown)."""
    import tvm

    from edgepress.backends.kernels.common.tir_walk import loops

    done = set()
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        estimate = flops_of(name)
        if estimate is None or not is_small(func, estimate):
            continue
        if not any(loop.kind == tvm.tirx.ForKind.PARALLEL for loop in loops(func)):
            continue
        mod[gv] = _serial(func)
        done.add(name)
    return mod, done
