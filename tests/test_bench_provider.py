"""The refresh benchmark's lean provider (``bench.provider``) answers as the sandbox's
``/bench/events`` does: the same pages byte for byte, the same refusals, the same latency;
both servers real, over HTTP on loopback."""

from __future__ import annotations

import time

import httpx
import pytest

from bench.sandbox_pages import bench_key
from bench.sandbox_process import start_provider, start_sandbox

REQUESTS = [
    ({"page": 1, "per_page": 100}, f"Bearer {bench_key(0)}"),
    ({"page": 3, "per_page": 100}, f"Bearer {bench_key(1)}"),
    ({"page": 2, "per_page": 7}, f"Bearer {bench_key(2)}"),
    ({"page": 99, "per_page": 100}, f"Bearer {bench_key(0)}"),
    ({"page": 1}, f"Bearer {bench_key(0)}"),
    ({"page": 0, "per_page": 100}, f"Bearer {bench_key(0)}"),
    ({"page": 1, "per_page": 101}, f"Bearer {bench_key(0)}"),
    ({"page": "two"}, f"Bearer {bench_key(0)}"),
    ({"page": 1}, "Bearer sk_live_other"),
    ({"page": 1}, "Basic abc"),
    ({"page": 1}, None),
]


@pytest.fixture(scope="module")
def servers():
    started = [
        start(latency_s=0.05, bench_records=1000) for start in (start_sandbox, start_provider)
    ]
    yield [url for _, url in started]
    for child, _ in started:
        child.stop()


def answers(url: str) -> list[tuple[int, str, object]]:
    with httpx.Client(base_url=url, timeout=10) as client:
        out = []
        for params, authorization in REQUESTS:
            headers = {"Authorization": authorization} if authorization else {}
            response = client.get("/bench/events", params=params, headers=headers)
            out.append((response.status_code, response.headers["content-type"], response.json()))
        return out


def test_the_provider_answers_as_the_sandbox_does(servers):
    sandbox, provider = servers
    assert answers(provider) == answers(sandbox)


def test_the_provider_keeps_the_latency(servers):
    _, provider = servers
    with httpx.Client(base_url=provider, timeout=10) as client:
        client.get("/_sandbox/health")
        started = time.perf_counter()
        for _ in range(5):
            client.get(
                "/bench/events", params={"page": 1}, headers={"Authorization": "Bearer bench_1"}
            )
        assert time.perf_counter() - started >= 5 * 0.05
