"""The command-line tools: ``trainwire train``, ``compare``, ``plot``, ``lr-find``, ``export-weights``."""

from trainwire.cli.main import main

__all__ = ["main"]
