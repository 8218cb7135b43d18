"""The sandbox in its own process for the benchmarks, so it does not share their CPU."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from writevue_pipelines.demo import free_port


def start_sandbox(**app_settings: float | int) -> tuple[subprocess.Popen, str]:
    """Start ``serve_forever`` with these ``make_app`` settings; (process, base URL)."""
    port = free_port()
    arguments = "".join(f", {name}={value!r}" for name, value in app_settings.items())
    code = (
        "from writevue_pipelines.sandbox.server import serve_forever;"
        f"serve_forever('127.0.0.1', {port}{arguments})"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):  # up to a minute: it may prepare benchmark data first
        try:
            if httpx.get(f"{url}/_sandbox/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the sandbox did not start")
