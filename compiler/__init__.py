"""edgepress driver: command line, build pipeline, verification, reports and artifact packaging."""

__version__ = "0.1.0"
