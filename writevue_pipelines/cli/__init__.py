"""The `writevue` command for operators: the top layer, over the core, Dagster and the dashboards.

Each command is registered next to its handler (``@command`` in ``app``); the modules
here group them by what they act on. Secrets are never taken as arguments (they would
show in `ps` and shell history): they come from a named environment variable or
standard input. Every error a user can cause ends in one line on stderr and a
non-zero exit, with nothing half-written.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
