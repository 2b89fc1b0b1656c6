"""Structured channel pruning: analysis, scores, policy, mechanics and recovery, one module each."""
