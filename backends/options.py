"""The choices a build makes about lowering and about tuning, as the CLI, the config file and the
API give them: two separate objects, since tuning is a search over schedules and lowering
decides which kernels there are to schedule."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Int8Compute(StrEnum):
    """How a QDQ model's Conv/Gemm/MatMul are compiled."""

    INTEGER = "integer"  # int8 x int8 -> int32 kernels with int8 weights (kernels/int8)
    FLOAT = "float"  # TVM's own float arithmetic with rounding


class FloatConv(StrEnum):
    """Which kernels compute float Conv/Gemm/MatMul on CPUs."""

    EDGEPRESS = "edgepress"  # kernels/float, with Winograd F(2x2, 3x3) where it qualifies
    DIRECT = "direct"  # the same kernels, direct only
    TVM = "tvm"  # TVM's own NCHW kernels


class Untuned(StrEnum):
    """The schedule of a CPU kernel no tuning record covers."""

    SAMPLED = "sampled"  # one untimed sample of MetaSchedule's default design space
    LOOPS = "loops"  # TVM's plain loops: faster builds, far slower code


@dataclass(frozen=True)
class LoweringOptions:
    int8_compute: Int8Compute = Int8Compute.INTEGER
    float_conv: FloatConv = FloatConv.EDGEPRESS
    # CPU: 3x3 stride-1 convs legalized as TOPI's Winograd F(4x4, 3x3) instead
    winograd: bool = False
    untuned: Untuned = Untuned.SAMPLED

    def __post_init__(self) -> None:
        # plain strings (from a config file or an old caller) become the enums, checked
        object.__setattr__(self, "int8_compute", Int8Compute(self.int8_compute))
        object.__setattr__(self, "float_conv", FloatConv(self.float_conv))
        object.__setattr__(self, "untuned", Untuned(self.untuned))


@dataclass(frozen=True)
class TuningOptions:
    trials: int = 0
    minutes: float | None = None
    database: Path | None = None  # --tuning-db; else $EDGEPRESS_TUNING_DB, else the cache
    shipped: bool = True  # apply the records shipped with edgepress for this exact target
    retune: bool = False  # tune tasks that already have records too

    @property
    def requested(self) -> bool:
        return self.trials > 0 or bool(self.minutes)
