"""Passes that rewrite an op TVM cannot import as the plain ops of its definition."""
