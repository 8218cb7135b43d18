"""The shared HTTP layer against the GitHub-shaped sandbox over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import httpx
import pytest
from support import remember_secret

from writevue_pipelines.errors import CredentialRejected, SourceError
from writevue_pipelines.sources.auth import ApiKeyAuth, ApiKeyPlacement
from writevue_pipelines.sources.http import (
    AllowedWrite,
    RateLimitPolicy,
    RetryPolicy,
    WriteRefused,
    get_json,
    open_client,
    rate_limit_reset_at,
    retry_after_seconds,
)
from writevue_sandbox import SandboxServer

CONNECTION = "22222222-2222-2222-2222-222222222222"
PATH = "/users/acme-org"


class Sleeps:
    """A RetryPolicy sleep that records what it was asked to wait and waits a moment only."""

    def __init__(self):
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        await asyncio.sleep(0)


def _token(plan: str = "") -> str:
    token = remember_secret(f"ghp_{uuid.uuid4().hex}")
    return f"{token}__f_{plan}" if plan else token


def _fast(attempts: int = 5, sleep=asyncio.sleep) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base_delay_s=0.001, max_delay_s=0.01, sleep=sleep)


def _client(url: str, **kwargs) -> httpx.AsyncClient:
    kwargs.setdefault("retry", _fast())
    kwargs.setdefault("provider", f"test-{uuid.uuid4().hex}")
    return open_client(base_url=url, **kwargs)


def _bearer(token: str) -> ApiKeyAuth:
    return ApiKeyAuth(token, ApiKeyPlacement())


async def _get(client: httpx.AsyncClient, token: str, path: str = PATH, **kwargs):
    return await get_json(client, path, connection_id=CONNECTION, auth=_bearer(token), **kwargs)


def run(coro):
    return asyncio.run(coro)


# -- the read-only guard ------------------------------------------------------------------------


def test_writes_to_data_endpoints_never_leave_the_process(sandbox):
    async def attempt(method: str):
        async with _client(sandbox.url) as client:
            await client.request(method, "/repos/acme-org/ember/pulls", json={"title": "x"})

    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(WriteRefused, match=f"refused {method}"):
            run(attempt(method))
    assert sandbox.counters["github.write_attempts"] == 0


def test_only_the_exact_allow_listed_write_goes_out(sandbox):
    allowed = AllowedWrite("POST", "127.0.0.1", "/repos/acme-org/ember/pulls")

    async def attempt(method: str, url: str) -> int:
        async with _client(sandbox.url, allow=[allowed]) as client:
            return (await client.request(method, url)).status_code

    assert run(attempt("POST", "/repos/acme-org/ember/pulls")) == 405  # reached the sandbox
    assert sandbox.counters["github.write_attempts"] == 1
    refused = [
        ("PUT", "/repos/acme-org/ember/pulls"),  # another method
        ("POST", "/repos/acme-org/ember/pulls/1"),  # another path
        ("POST", f"http://localhost:{sandbox.port}/repos/acme-org/ember/pulls"),  # another host
    ]
    for method, url in refused:
        with pytest.raises(WriteRefused):
            run(attempt(method, url))
    assert sandbox.counters["github.write_attempts"] == 1


# -- retries --------------------------------------------------------------------------------------


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert rate_limit_reset_at("1800000000") == 1800000000.0  # GitHub: epoch seconds
    assert rate_limit_reset_at("30", now=1000.0) == 1030.0  # others: seconds from now


def test_a_429_is_retried_after_its_retry_after_then_succeeds(sandbox):
    sleeps = Sleeps()

    async def go():
        async with _client(sandbox.url, retry=_fast(sleep=sleeps)) as client:
            return await _get(client, _token("429x2"))

    body, _ = run(go())
    assert body["login"] == "acme-org"
    assert sandbox.counters["fault.429"] == 2 and sandbox.counters["github.users"] == 1
    # The sandbox's 429 says Retry-After: 1; the layer waited about that, twice.
    assert len(sleeps.seconds) == 2 and all(0.8 <= s <= 1.0 for s in sleeps.seconds)


@pytest.mark.parametrize("plan", ["secondary1", "secondary1,retrydate"])
def test_a_secondary_rate_limit_honours_retry_after_in_seconds_or_as_a_date(sandbox, plan):
    sleeps = Sleeps()

    async def go():
        async with _client(sandbox.url, retry=_fast(sleep=sleeps)) as client:
            return await _get(client, _token(plan))

    body, _ = run(go())
    assert body["login"] == "acme-org" and sandbox.counters["fault.secondary"] == 1
    assert len(sleeps.seconds) == 1
    if "retrydate" in plan:  # an HTTP date two seconds ahead, to the whole second
        assert 0.5 <= sleeps.seconds[0] <= 2.0
    else:
        assert 0.8 <= sleeps.seconds[0] <= 1.0


def test_a_secondary_rate_limit_named_only_in_the_body_is_retried(sandbox):
    sleeps = Sleeps()

    async def go():
        async with _client(
            sandbox.url,
            retry=_fast(sleep=sleeps),
            rate_limit=RateLimitPolicy(secondary_wait_s=0.25),
        ) as client:
            return await _get(client, _token("abuse2"))

    body, _ = run(go())
    assert body["login"] == "acme-org" and sandbox.counters["fault.abuse"] == 2
    assert len(sleeps.seconds) == 2 and all(0.15 <= s <= 0.25 for s in sleeps.seconds)


@pytest.mark.parametrize("plan", ["secondary", "abuse"])
def test_a_secondary_rate_limit_that_outlasts_the_retries_is_not_a_refused_credential(
    sandbox, plan
):
    async def go():
        async with _client(
            sandbox.url,
            retry=_fast(attempts=2, sleep=Sleeps()),
            rate_limit=RateLimitPolicy(secondary_wait_s=0.01),
        ) as client:
            return await _get(client, _token(plan))

    with pytest.raises(SourceError) as caught:
        run(go())
    assert caught.value.status == 403 and "rate limited" in str(caught.value)
    assert not isinstance(caught.value, CredentialRejected)  # no reconnect asked of anyone


def test_a_refused_token_is_a_refused_credential(sandbox):
    async def go():
        async with _client(sandbox.url) as client:
            return await _get(client, "not-a-github-token")

    with pytest.raises(CredentialRejected) as caught:
        run(go())
    assert caught.value.status == 401 and "refused the credentials" in str(caught.value)


def test_a_burst_of_5xx_is_retried_then_succeeds(sandbox):
    async def go():
        async with _client(sandbox.url) as client:
            return await _get(client, _token("5xx3"))

    body, _ = run(go())
    assert body["login"] == "acme-org" and sandbox.counters["fault.5xx"] == 3


def test_a_permanent_5xx_ends_in_a_clean_source_error(sandbox):
    token = _token("5xx")

    async def go():
        async with _client(sandbox.url, retry=_fast(attempts=4)) as client:
            return await _get(client, token)

    with pytest.raises(SourceError) as caught:
        run(go())
    message = str(caught.value)
    assert message == f"connection {CONNECTION}: /users/acme-org answered HTTP 503"
    assert caught.value.connection_id == CONNECTION and caught.value.status == 503
    assert sandbox.counters["fault.5xx"] == 4  # every attempt, no more


def test_timeouts_are_retried_then_fail_cleanly():
    with SandboxServer(hang_s=2.0) as sandbox:

        async def go(token: str, attempts: int):
            async with _client(
                sandbox.url, retry=_fast(attempts=attempts), timeout=httpx.Timeout(0.5)
            ) as client:
                return await _get(client, token)

        started = time.perf_counter()
        body, _ = run(go(_token("timeoutx1"), 3))
        assert body["login"] == "acme-org"
        token = _token("timeout")
        with pytest.raises(SourceError) as caught:
            run(go(token, 2))
        elapsed = time.perf_counter() - started
        assert (
            str(caught.value) == f"connection {CONNECTION}: /users/acme-org timed out after retries"
        )
        assert token.split("__f_")[0] not in str(caught.value)
        assert sandbox.counters["fault.timeout"] == 3
        assert elapsed < 4  # three half-second timeouts, not three two-second hangs


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["malformed", "truncated"])
def test_a_body_that_is_not_json_is_a_source_error_without_the_key(sandbox, plan, caplog):
    caplog.set_level(logging.DEBUG)
    token = _token(plan)

    async def go():
        async with _client(sandbox.url) as client:
            return await _get(client, token)

    with pytest.raises(SourceError) as caught:
        run(go())
    assert str(caught.value) == (
        f"connection {CONNECTION}: /users/acme-org answered HTTP 200 with a body that is not JSON"
    )
    assert token.split("__f_")[0] not in caplog.text


def test_a_key_sent_as_a_query_parameter_reaches_no_error_and_no_log(sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    key = remember_secret(f"qk_{uuid.uuid4().hex}")
    auth = ApiKeyAuth(key, ApiKeyPlacement(header=None, query_param="api_key"))

    async def go(url: str, faults: str):
        async with _client(url, retry=_fast(attempts=2)) as client:
            return await get_json(
                client,
                "/users/acme-org?x=1",
                connection_id=CONNECTION,
                auth=auth,
                headers={"X-Sandbox-Faults": faults},
            )

    with pytest.raises(SourceError) as malformed:
        run(go(sandbox.url, "malformed"))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(SourceError) as unreachable:
        run(go(f"http://127.0.0.1:{closed_port}", ""))
    for error in (malformed.value, unreachable.value):
        assert key not in str(error) and "api_key" not in str(error) and "x=1" not in str(error)
    assert "HTTP Request: GET" in caplog.text  # httpx did log the requests...
    assert key not in caplog.text and "api_key=" not in caplog.text  # ...without the query


def test_a_response_over_the_size_cap_is_refused(sandbox):
    async def go():
        async with _client(sandbox.url) as client:
            return await _get(client, _token(), "/users/acme-org/repos", max_bytes=500)

    with pytest.raises(SourceError, match="over the 500-byte cap"):
        run(go())


def test_a_cookie_one_answer_sets_never_travels_with_a_later_request(sandbox):
    # A client is shared by many tenants' connections: a provider's cookie kept from
    # one tenant's answer would go out with the next tenant's request.
    async def go():
        async with _client(sandbox.url) as client:
            first, response = await _get(client, _token(), "/_sandbox/cookies")
            second, _ = await _get(client, _token(), "/_sandbox/cookies")
            return first, second, response, len(client.cookies)

    first, second, response, kept = run(go())
    assert "sandbox_session" in response.headers["Set-Cookie"]  # the provider did set one
    assert first == {"received": None}
    assert second == {"received": None}
    assert kept == 0


# -- per-provider concurrency and rate limits ------------------------------------------------------


def test_the_provider_limit_caps_requests_in_flight_across_clients():
    token = _token("latency150")

    async def burst(provider: str, max_in_flight: int) -> None:
        async with (
            open_client(
                base_url=sandbox.url, provider=provider, max_in_flight=max_in_flight
            ) as one,
            open_client(base_url=sandbox.url, provider=provider) as other,
        ):
            await asyncio.gather(*(_get(client, token) for client in (one, other) * 4))

    with SandboxServer() as sandbox:
        started = time.perf_counter()
        run(burst(f"capped-{uuid.uuid4().hex}", 2))
        elapsed = time.perf_counter() - started
        assert sandbox.counters["github.users"] == 8
        assert sandbox.counters["github.peak_in_flight"] == 2
        assert elapsed >= 4 * 0.15  # eight requests, two at a time
    with SandboxServer() as sandbox:
        run(burst(f"wide-{uuid.uuid4().hex}", 8))
        assert sandbox.counters["github.peak_in_flight"] > 2  # the cap above was the layer's


def test_a_spent_rate_limit_pauses_that_credential_until_the_reset(sandbox):
    token, other = _token("limit2,window1"), _token()

    async def go():
        async with _client(sandbox.url) as client:
            await _get(client, token)
            _, second = await _get(client, token)
            assert second.headers["x-ratelimit-remaining"] == "0"
            reset = int(second.headers["x-ratelimit-reset"])
            started, started_epoch = time.perf_counter(), time.time()
            await _get(client, other)  # another tenant's token does not wait
            other_s = time.perf_counter() - started
            body, third = await _get(client, token)
            return reset - started_epoch, other_s, time.perf_counter() - started, body, third

    due, other_s, waited, body, third = run(go())
    assert body["login"] == "acme-org"
    assert other_s < 0.5
    assert 0.5 <= due <= 2.1 and due - 0.05 <= waited < due + 1  # it waited for the reset
    assert third.headers["x-ratelimit-remaining"] == "1"  # a fresh window
    assert sandbox.counters["github.rate_limited"] == 0  # never hit the wall


def test_a_reset_beyond_the_longest_pause_fails_the_connection_at_once(sandbox):
    token = _token("limit1")  # the budget resets in an hour

    async def go():
        async with _client(sandbox.url, rate_limit=RateLimitPolicy(max_pause_s=5)) as client:
            await _get(client, token)
            return await _get(client, token)

    started = time.perf_counter()
    with pytest.raises(SourceError) as caught:
        run(go())
    assert time.perf_counter() - started < 2
    message = str(caught.value)
    assert message.startswith(f"connection {CONNECTION}: /users/acme-org is rate limited")
    assert "longer than the 5 s WriteVue waits" in message
    assert token.split("__f_")[0] not in message
    assert sandbox.counters["github.users"] == 1  # the second request never left


def test_a_rate_limited_403_waits_for_the_reset_and_is_retried(sandbox):
    token = _token("limit1,window1")

    async def go():
        # Two clients of different providers share no pause, as two processes would not:
        # the second meets the spent budget at the sandbox and must wait for the reset.
        async with _client(sandbox.url) as first, _client(sandbox.url) as second:
            await _get(first, token)
            started = time.perf_counter()
            body, _ = await _get(second, token)
            return body, time.perf_counter() - started

    body, waited = run(go())
    assert body["login"] == "acme-org"
    assert sandbox.counters["github.rate_limited"] == 1 and 0.0 < waited < 3
