"""Refresh soak: back-to-back scheduled-style refresh batches for minutes while the sandbox
throws every fault it has at random, then a clean batch checked against ground truth.

Each batch goes through the code a scheduled run executes (``refresh.refresh_connections``,
then ``refresh.record_failure`` for each failed connection, as the refresh asset does)
on a SQLite file and on the PostgreSQL server, against the sandbox over real HTTP. The
faulty connections carry the sandbox's ``chaos`` plan: 30% of their requests each get one
of 429 with Retry-After, 503, a hang past the client's timeout, malformed JSON, a body cut
in half, a body dripped slowly and, on the OAuth connection, an access token that dies
early. Clean connections of the same batches carry no plan.

After every batch:

- each failure names its own connection and is stored on that connection only
  (``last_error``, status ``failing``, never ``needs_reauth`` for a passing fault); the
  clean connections never fail;
- every Stripe fact on a day before today equals the sandbox's own ledger for that day
  (so nothing was lost half-way or counted twice), and today's never exceeds it;
- no URL reached the sandbox more often than the retry policy allows
  (``RetryPolicy.attempts``; twice that for OAuth, whose 401 refreshes once and retries).

Then the faults go off, one more batch runs, and every Stripe connection holds exactly its
ledger for every day of the window, and the faulty GitHub connection exactly what its
clean twin (the same sandbox account) holds.

The long form is marked ``soak`` (``make soak``): ``WRITEVUE_SOAK_SECONDS`` per database
(300 by default; CI runs 30). The sandbox's new faults are tried on their own in the
normal suite, below.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import select
from support import add_stripe_connection, use_sandbox_oauth_client

from writevue_pipelines import oauth, refresh, registry
from writevue_pipelines.models import Fact
from writevue_pipelines.sources.http import RetryPolicy
from writevue_sandbox import SandboxServer, stripe_data
from writevue_sandbox import base as sandbox_base
from writevue_sandbox.faults import CHAOS_KINDS, parse, with_faults

SOAK_SECONDS = float(os.environ.get("WRITEVUE_SOAK_SECONDS", "300"))
HISTORY_DAYS = 10
CHAOS = "chaos30"
STRIPE_FAULTY, STRIPE_CLEAN = 6, 2
CALLBACK = "http://127.0.0.1:5006/connect/callback"
#: Stripe metrics that only grow during a day (net falls when a refund arrives later)
GROWING = frozenset({"charges", "gross_volume", "fees", "new_customers"})
#: a URL may arrive this often in one batch: the retry policy's attempts, doubled where a
#: 401 makes the OAuth client refresh its token and send the request again
API_KEY_BOUND = RetryPolicy().attempts
OAUTH_BOUND = 2 * RetryPolicy().attempts


# -- the sandbox's new faults, on their own (normal suite) ---------------------------------------


def test_drip_sends_the_whole_body_slowly():
    with SandboxServer(drip_s=1.0) as sandbox:
        headers = {"Authorization": "Bearer sk_test_drip"}
        clean = httpx.get(f"{sandbox.url}/v1/charges", headers=headers, timeout=10)
        started = time.monotonic()
        dripped = httpx.get(
            f"{sandbox.url}/v1/charges",
            headers={**headers, "X-Sandbox-Faults": "drip"},
            timeout=10,
        )
        took = time.monotonic() - started
    assert dripped.status_code == 200 and dripped.json() == clean.json()
    assert took >= 0.9  # the body came over the drip's second, not at once
    assert sandbox.counters["fault.drip"] == 1


def test_a_drip_slower_than_the_read_timeout_times_out():
    with SandboxServer(drip_s=5.0) as sandbox:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(
                f"{sandbox.url}/v1/charges",
                headers={"Authorization": "Bearer sk_test_drip", "X-Sandbox-Faults": "drip"},
                timeout=httpx.Timeout(10.0, read=0.1),
            )


def test_chaos_draws_every_fault_and_faults_off_stops_them():
    assert parse("chaos").chaos_percent == 30 and parse("chaos100").chaos_percent == 100
    with SandboxServer(hang_s=0.2, drip_s=0.2, chaos_seed=7) as sandbox:
        key = with_faults("sk_test_chaos", "chaos100")
        headers = {"Authorization": f"Bearer {key}"}
        statuses = Counter()
        for _ in range(60):
            answer = httpx.get(f"{sandbox.url}/v1/charges", headers=headers, timeout=10)
            statuses[answer.status_code] += 1
        drawn = {kind for kind in CHAOS_KINDS if sandbox.counters[f"fault.{kind}"]}
        # An API key carries no OAuth token: every other kind came up, never "expired".
        assert drawn == set(CHAOS_KINDS) - {"expired"}
        assert statuses[429] and statuses[503] and statuses[504] and statuses[200]
        assert sum(sandbox.requests_per_url(key).values()) == 60
        sandbox.faults_off()
        calm = [
            httpx.get(f"{sandbox.url}/v1/charges", headers=headers, timeout=10) for _ in range(10)
        ]
    assert all(answer.status_code == 200 and answer.json()["data"] for answer in calm)
    # chaos100: every request before faults_off got exactly one fault, none after
    assert sum(sandbox.counters[f"fault.{kind}"] for kind in CHAOS_KINDS) == 60


def test_chaos_expires_an_oauth_access_token_early_once_it_is_a_few_seconds_old(home, monkeypatch):
    """The request that draws ``expired`` is answered; the next with that token is refused.
    A token in its first seconds is never drawn (``EXPIRABLE_AFTER_S``)."""
    use_sandbox_oauth_client(monkeypatch, "github")
    with SandboxServer(chaos_seed=1, hang_s=0.05, drip_s=0.05) as sandbox:
        sandbox.faults_off()  # the token endpoint draws from the account's chaos too
        token = _github_access_token(sandbox, "early-death__f_chaos100")
        sandbox.faults_off(False)
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(30):  # young: every other kind is drawn, never "expired"
            httpx.get(f"{sandbox.url}/users/acme-org", headers=headers, timeout=10)
        assert sandbox.counters["fault.expired"] == 0
        monkeypatch.setattr(sandbox_base, "EXPIRABLE_AFTER_S", 0.0)  # as if seconds later
        for _ in range(200):  # until the draw says "expired"
            before = sandbox.counters["fault.expired"]
            answer = httpx.get(f"{sandbox.url}/users/acme-org", headers=headers, timeout=10)
            if sandbox.counters["fault.expired"] > before:
                break
        assert sandbox.counters["fault.expired"] == 1 and answer.status_code != 401
        refused = httpx.get(f"{sandbox.url}/users/acme-org", headers=headers, timeout=10)
        assert refused.status_code == 401


def _github_access_token(sandbox: SandboxServer, login: str) -> str:
    """A sandbox OAuth access token for ``login`` (the authorisation code dance, by hand)."""
    import base64
    import hashlib
    import secrets as random_secrets

    from writevue_sandbox.oauth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

    verifier = random_secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    consent = httpx.get(
        f"{sandbox.url}/login/oauth/authorize",
        params={
            "client_id": SANDBOX_CLIENT_ID,
            "redirect_uri": CALLBACK,
            "response_type": "code",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": login,
        },
    )
    assert consent.status_code == 302, consent.text
    code = httpx.URL(consent.headers["location"]).params["code"]
    answer = httpx.post(
        f"{sandbox.url}/login/oauth/access_token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET,
        },
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


# -- ground truth ---------------------------------------------------------------------------------


def stripe_ledger(key: str, start: dt.date, now: int) -> dict[tuple[str, str, dt.date], float]:
    """What the Stripe connection of ``key`` must hold, computed from the sandbox's own data
    (independently of the connector): gross, fees, net, refunds per currency, charges and
    new customers, per day from ``start`` to ``now``."""
    account = stripe_data.account_for_key(key)
    expected: dict = {}

    def add(metric: str, dimension: str, day: dt.date, value: float) -> None:
        expected[(metric, dimension, day)] = expected.get((metric, dimension, day), 0) + value

    for day_no in range(stripe_data.day_number(start), now // 86400 + 1):
        day = dt.date(1970, 1, 1) + dt.timedelta(days=day_no)
        for charge in stripe_data.charges_for_day(account, day_no):
            if charge["created"] > now or charge["status"] != "succeeded":
                continue
            currency, amount = charge["currency"], charge["amount"] / 100
            fee = stripe_data.stripe_fee(charge["amount"]) / 100
            add("gross_volume", currency, day, amount)
            add("fees", currency, day, fee)
            add("net", currency, day, amount - fee)
            add("charges", "", day, 1)
            if charge["refunded"]:
                add("refunds", currency, day, amount)
                add("net", currency, day, -amount)
        customers = [
            c for c in stripe_data.customers_for_day(account, day_no) if c["created"] <= now
        ]
        if customers:
            add("new_customers", "", day, len(customers))
    return expected


def stored_facts(runtime, connection_id: str) -> dict[tuple[str, str, dt.date], float]:
    with runtime.db.session() as session:
        rows = session.execute(
            select(Fact.metric, Fact.dimension, Fact.day, Fact.value).where(
                Fact.connection_id == connection_id
            )
        ).all()
    return {(m, d, day): v for m, d, day, v in rows}


def ledger_problems(
    stored: dict, ledger: dict, *, today: dt.date, complete_from: dt.date | None
) -> list[str]:
    """How ``stored`` differs from the ledger: a past day's value not the ledger's, today's
    above it, or (with ``complete_from``) a ledger day from then on that is missing."""
    problems = []
    for key, value in stored.items():
        truth = ledger.get(key, 0.0)
        day = key[2]
        if day < today and abs(value - truth) > 1e-6 * max(1.0, abs(truth)):
            problems.append(f"{key}: stored {value}, ledger {truth}")
        elif day == today and key[0] in GROWING and value > truth + 1e-6 * max(1.0, abs(truth)):
            problems.append(f"{key}: stored {value} above the ledger's {truth} (today)")
    if complete_from is not None:
        for key, truth in ledger.items():
            if complete_from <= key[2] < today and key not in stored and truth:
                problems.append(f"{key}: missing (ledger {truth})")
    return problems


# -- the soak ------------------------------------------------------------------------------------


@dataclass
class Soak:
    runtime: object
    sandbox: SandboxServer
    #: connection id -> (kind, credential the sandbox counts it under, faulty)
    connections: dict[str, tuple[str, str, bool]]
    stripe_keys: dict[str, str]
    github_twins: tuple[str, str] = ("", "")  # (faulty, clean)
    batches: int = 0
    refreshes: int = 0
    failures: Counter = field(default_factory=Counter)
    errors_seen: Counter = field(default_factory=Counter)
    most_arrivals: Counter = field(default_factory=Counter)  # per kind: of one URL, one batch
    problems: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        return list(self.connections)


def _github_oauth_connection(runtime, sandbox, tenant: str, login: str) -> str:
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url, "owner": "acme-org"}
    url = oauth.begin_authorization(runtime, tenant, "github", options, CALLBACK)
    consent = httpx.get(url + f"&login_hint={login}", follow_redirects=False)
    assert consent.status_code == 302
    return oauth.complete_authorization(runtime, *oauth.parse_callback(consent.headers["location"]))


def make_soak(runtime, sandbox: SandboxServer) -> Soak:
    connections: dict[str, tuple[str, str, bool]] = {}
    stripe_keys: dict[str, str] = {}
    tenants = []
    for n in range(STRIPE_FAULTY + STRIPE_CLEAN):
        faulty = n < STRIPE_FAULTY
        key = f"sk_test_soak_{n}_{random.randrange(10**9)}"
        key = with_faults(key, CHAOS) if faulty else key
        tenant, connection = add_stripe_connection(
            runtime, sandbox.url, key, name=f"Soak {n}", email=f"soak{n}@client.test"
        )
        tenants.append(tenant)
        connections[connection] = ("stripe", key, faulty)
        stripe_keys[connection] = key
    login = f"soak-octo-{random.randrange(10**6)}"
    faulty = _github_oauth_connection(runtime, sandbox, tenants[0], f"{login}__f_{CHAOS}")
    clean = _github_oauth_connection(runtime, sandbox, tenants[-1], login)
    connections[faulty] = ("github", f"{login}__f_{CHAOS}", True)
    connections[clean] = ("github", login, False)
    return Soak(runtime, sandbox, connections, stripe_keys, (faulty, clean))


def run_batch(soak: Soak, *, final: bool = False) -> dict[str, refresh.RefreshOutcome]:
    """One batch as the refresh asset runs it, then every check of the module docstring."""
    runtime, sandbox = soak.runtime, soak.sandbox
    sandbox.reset_requests()
    outcomes = refresh.refresh_connections(runtime, soak.ids())
    for connection_id, outcome in outcomes.items():
        if outcome.error is not None:
            refresh.record_failure(runtime, connection_id, outcome.error)
    soak.batches += 1
    soak.refreshes += len(outcomes)
    now, today = int(time.time()), dt.datetime.now(dt.UTC).date()
    where = "final batch" if final else f"batch {soak.batches}"
    others = set(soak.connections)
    for connection_id, outcome in outcomes.items():
        kind, credential, faulty = soak.connections[connection_id]
        with runtime.db.session() as session:
            stored = registry.get_connection(session, connection_id)
        if outcome.error is None:
            if stored.last_error is not None or stored.status != "active":
                soak.problems.append(f"{where}: {kind} succeeded but is {stored.status}")
        else:
            soak.failures[kind] += 1
            message = str(outcome.error)
            soak.errors_seen[f"{type(outcome.error).__name__}"] += 1
            if not faulty or final:
                soak.problems.append(f"{where}: {kind} (clean={not faulty}) failed: {message}")
            if connection_id not in message or any(o in message for o in others - {connection_id}):
                soak.problems.append(f"{where}: a failure not attributed to its own: {message}")
            if stored.last_error != refresh.safe_error(outcome.error):
                soak.problems.append(f"{where}: last_error not this failure's: {stored.last_error}")
            if stored.status != "failing":
                soak.problems.append(f"{where}: a passing fault left it {stored.status}: {message}")
        bound = OAUTH_BOUND if kind == "github" else API_KEY_BOUND
        arrivals = max(sandbox.requests_per_url(credential).values(), default=0)
        soak.most_arrivals[kind] = max(soak.most_arrivals[kind], arrivals)
        if arrivals > bound:
            soak.problems.append(f"{where}: a URL of a {kind} connection arrived {arrivals} times")
        if kind == "stripe":
            start = today - dt.timedelta(days=HISTORY_DAYS + 1)
            ledger = stripe_ledger(soak.stripe_keys[connection_id], start, now)
            complete_from = today - dt.timedelta(days=HISTORY_DAYS - 1) if final else None
            found = ledger_problems(
                stored_facts(runtime, connection_id),
                ledger,
                today=today,
                complete_from=complete_from,
            )
            soak.problems += [f"{where}: stripe {p}" for p in found[:3]]
    return outcomes


@pytest.fixture
def soak_settings(monkeypatch):
    """Set before the runtime fixture reads the settings (autouse fixtures come first)."""
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", str(HISTORY_DAYS))
    monkeypatch.setenv("WRITEVUE_HTTP_TIMEOUT_S", "1")  # a hang is a timeout within 1 s
    use_sandbox_oauth_client(monkeypatch, "github")


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak_refreshes_under_random_faults(soak_settings, any_runtime, record_property):
    seed = random.randrange(10**6)
    runtime = any_runtime
    with SandboxServer(hang_s=2.0, drip_s=0.8, chaos_seed=seed) as sandbox:
        sandbox.faults_off()  # the connections are made (and authorised) without faults
        soak = make_soak(runtime, sandbox)
        sandbox.faults_off(False)
        started = time.monotonic()
        while time.monotonic() - started < SOAK_SECONDS:
            run_batch(soak)
        soaked = time.monotonic() - started
        injected = {kind: sandbox.counters[f"fault.{kind}"] for kind in CHAOS_KINDS}
        sandbox.faults_off()
        run_batch(soak, final=True)
    faulty, clean = soak.github_twins
    twin_difference = set(stored_facts(runtime, faulty).items()) ^ set(
        stored_facts(runtime, clean).items()
    )
    if twin_difference:
        soak.problems.append(f"github: the faulty twin differs: {sorted(twin_difference)[:5]}")
    report = (
        f"refresh soak ({runtime.db.engine.dialect.name}, seed {seed}): {soaked:.0f} s, "
        f"{soak.batches} batches, {soak.refreshes} connection refreshes of "
        f"{len(soak.connections)} connections ({sum(f for *_, f in soak.connections.values())} "
        f"faulty); faults injected {injected}; failed refreshes {dict(soak.failures)} "
        f"({dict(soak.errors_seen)}); most arrivals of one URL in a batch "
        f"{dict(soak.most_arrivals)} (bounds {API_KEY_BOUND} / {OAUTH_BOUND}); "
        f"problems {len(soak.problems)}"
    )
    print(report)
    record_property("soak", report)
    assert sum(injected.values()) > 0 and soak.batches >= 2
    assert not soak.problems, "\n".join(soak.problems[:20])
