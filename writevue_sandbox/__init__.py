"""A local stand-in for the providers WriteVue reads, speaking their wire formats.

It is clearly a sandbox: deterministic seeded data per account, for the demo and
the tests. The built-in sources point at the real providers by default.
"""

from .server import SandboxServer, make_app

__all__ = ["SandboxServer", "make_app"]
