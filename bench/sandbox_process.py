"""The benchmarks' sandbox in its own process, so it does not share their CPU."""

from __future__ import annotations

import sys

from writevue_pipelines.processes import Child, free_port, spawn_and_wait


def start_sandbox(**settings: float | int) -> tuple[Child, str]:
    """``bench.sandbox_pages.serve`` with these settings on a free port: (child, base URL)."""
    return _start("bench.sandbox_pages", "the sandbox", settings)


def start_provider(**settings: float | int) -> tuple[Child, str]:
    """``bench.provider.serve`` (the refresh benchmark's lean provider), the same way."""
    return _start("bench.provider", "the provider", settings)


def _start(module: str, what: str, settings: dict[str, float | int]) -> tuple[Child, str]:
    port = free_port()
    arguments = "".join(f", {name}={value!r}" for name, value in settings.items())
    code = f"from {module} import serve; serve({port}{arguments})"
    url = f"http://127.0.0.1:{port}"
    # Up to a minute: it may prepare benchmark data first.
    child = spawn_and_wait(what, [sys.executable, "-c", code], f"{url}/_sandbox/health", timeout=60)
    return child, url
