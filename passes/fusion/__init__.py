"""Fusion passes: fewer, larger operators with the same outputs."""
