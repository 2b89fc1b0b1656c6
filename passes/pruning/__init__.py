"""Structured channel pruning: analysis, scores, policy, mechanics and recovery, one module each."""


class PruningError(ValueError):
    """A pruning request this model cannot satisfy (the caller's options, not a bug): an
    unreachable target, a missing kind of data, unknown layer names."""
