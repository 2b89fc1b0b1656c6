"""Import only the tensor intrinsics a target can use.

MetaSchedule imports the package `tvm.s_tir.tensor_intrin` before it schedules anything, and
that package's __init__ registers every family: 27 s on 2 cores, 18 s of it CUDA's and 3 s
ROCm's (python -X importtime), paid by every build that schedules a CPU kernel. Here the
package is entered in sys.modules without running its __init__, and only the families named
are imported; MetaSchedule's own `import tvm.s_tir.tensor_intrin` then finds it loaded. A later
call can add families (a CUDA build after a CPU build in one process).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

PACKAGE = "tvm.s_tir.tensor_intrin"


def load(families: tuple[str, ...]) -> None:
    """Register these families' intrinsics (idempotent)."""
    import tvm.s_tir

    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None:  # a TVM without the package: nothing to register
            return
        package = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
        sys.modules[PACKAGE] = package
        tvm.s_tir.tensor_intrin = package
    for family in families:
        importlib.import_module(f"{PACKAGE}.{family}")
        if family in ("x86", "arm_cpu"):
            from edgepress.backends.kernels.int8 import dot_intrinsics

            (dot_intrinsics.register_x86 if family == "x86" else dot_intrinsics.register_arm)()
