"""The benchmarks' sandbox in its own process, so it does not share their CPU."""

from __future__ import annotations

import sys

from writevue_pipelines.processes import Child, free_port, spawn_and_wait


def start_sandbox(**settings: float | int) -> tuple[Child, str]:
    """``bench.sandbox_pages.serve`` with these settings on a free port: (child, base URL)."""
    port = free_port()
    arguments = "".join(f", {name}={value!r}" for name, value in settings.items())
    code = f"from bench.sandbox_pages import serve; serve({port}{arguments})"
    url = f"http://127.0.0.1:{port}"
    # Up to a minute: it may prepare benchmark data first.
    child = spawn_and_wait(
        "the sandbox", [sys.executable, "-c", code], f"{url}/_sandbox/health", timeout=60
    )
    return child, url
