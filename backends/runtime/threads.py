"""TVM's CPU thread pool: how many threads an artifact runs with in this process.

On x86-64 TVM assumes hyper-threading and starts hardware_concurrency / 2 workers unless
TVM_NUM_THREADS is set when the pool is first used: on a 2-core machine, one thread. The pool
can later shrink or grow only up to its start size, so the CLI gives it every core at start-up
and callers pick the count they want with `use_threads`.
"""

from __future__ import annotations

import os

from edgepress.compiler.errors import BackendError

ENV = "TVM_NUM_THREADS"
_BIG_CORES = 1  # TVM's AffinityMode::kBig: no pinning preference on a homogeneous CPU


def size_pool_to_all_cores() -> None:
    """Before TVM's pool exists: let it start with every core (the user's setting wins)."""
    os.environ.setdefault(ENV, str(os.cpu_count() or 1))


def use_threads(threads: int) -> None:
    """Run TVM code in this process on `threads` threads."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(_BIG_CORES, threads)
    got = int(tvm.get_global_func("runtime.NumThreads")())
    if got != threads:
        raise BackendError(
            f"TVM's thread pool runs {got} thread(s), not {threads}: it was started before "
            f"{ENV} was set; set {ENV}={threads} in the environment"
        )
