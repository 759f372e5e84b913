"""The ``cami`` command line: one module per subcommand, :mod:`api.cli.main` dispatches."""

from api.cli.main import main

__all__ = ["main"]
