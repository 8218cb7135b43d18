"""The HTTP layer joins a plain request path and its parameters to the client's base URL
itself (one URL parse instead of httpx's three); the URL sent must be the very one
httpx would have built, for every base URL, path and parameters."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from writevue_pipelines.sources.http import _request_url, open_client

BASES = [
    "http://127.0.0.1:8123",
    "http://127.0.0.1:8123/",
    "https://api.example.com",
    "https://API.Example.com:443/v1",
    "https://api.example.com/v1/",
    "http://localhost:80/a/b",
    "https://api.example.com/base%20dir/",
]
PATHS = [
    "/bench/events",
    "/v1/charges",
    "/",
    "/repos/acme-org/ember/stargazers",
    "/a.b_c~d-e/",
    "/users/acme-org?x=1",  # a query of its own: left to httpx
    "/v1beta/properties/1:runReport",  # not plain: left to httpx
    "//elsewhere.example/x",
    "/caf\u00e9",
    "/a b",
]
PARAMS = [
    None,
    {},
    {"page": 2, "per_page": 100},
    {"since": "2024-03-01T00:00:00Z", "q": "a b&c=d", "flag": True, "none": None},
    {"created[gte]": 1709251200, "limit": 10, "list": ["x", "y"], "f": 1.5},
    {"caf\u00e9": "\u00fc", "empty": ""},
]


@pytest.mark.parametrize("base", BASES)
def test_the_url_sent_is_the_one_httpx_would_build(base):
    async def compare() -> None:
        async with open_client(base_url=base) as client:
            for path in PATHS:
                for params in PARAMS:
                    expected = client.build_request("GET", path, params=params)
                    url, rest = _request_url(client, path, params)
                    got = client.build_request("GET", url, params=rest)
                    assert str(got.url) == str(expected.url), (base, path, params)
                    assert got.url.raw_path == expected.url.raw_path
                    assert got.headers["Host"] == expected.headers["Host"]

    asyncio.run(compare())


def test_plain_paths_with_parameters_are_joined_by_the_layer():
    async def joined() -> tuple:
        async with open_client(base_url="http://127.0.0.1:8123/v1") as client:
            return _request_url(client, "/bench/events", {"page": 1})

    url, params = asyncio.run(joined())
    assert isinstance(url, httpx.URL) and params is None
    assert str(url) == "http://127.0.0.1:8123/v1/bench/events?page=1"
