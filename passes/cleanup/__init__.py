"""Cleanup passes: folding, dead code, no-op removal."""
