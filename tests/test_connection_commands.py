"""Connections an operator can remove, pause and trust, and ids that are found by prefix.

- `connection remove` erases one connection with a tenant erasure's guarantees (its
  grant revoked at the provider, its figures, staging, cursor and credentials deleted,
  a verification that finds nothing of it) and leaves the tenant's others untouched.
- `connection pause` stops every refresh of it (schedule partitions, failing retries,
  `writevue refresh`); its dashboard shows its figures as of the pause, marked paused.
- `connection add` checks the key and what the options name with one read, warns about
  the same account added twice, and lists what `--no-verify` saved as unverified.
- Every id argument of every command takes an unambiguous prefix, as git does.

Real SQLite homes, the sandbox over HTTP, the real Dagster sensors.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select
from support import (
    SandboxOAuthSource,
    add_stripe_connection,
    add_tenant,
    apply_partition_requests,
    fetch_to_staging,
    new_stripe_key,
    register_oauth_source,
    remember_secret,
    run_cli,
    sandbox_oauth_client,
)

from writevue_pipelines import refresh, registry
from writevue_pipelines.cli.app import commands
from writevue_pipelines.cli.inputs import ID_ARGUMENTS
from writevue_pipelines.models import AuditEvent, Connection, Credential, Fact, SyncCursor, Tenant
from writevue_pipelines.oauth.flow import (
    begin_authorization,
    complete_authorization,
    parse_callback,
)
from writevue_pipelines.privacy import list_events, run_erasure, verify_erasure
from writevue_pipelines.privacy.verification import Identifiers
from writevue_pipelines.sources import SOURCES

CALLBACK = "https://connect.writevue.test/oauth/callback"


def cli(monkeypatch, capsys, *args, stdin: str = "", env: dict | None = None):
    return run_cli(monkeypatch, capsys, *args, stdin=stdin, env=env)


def _facts(runtime, connection_id: str) -> int:
    with runtime.db.session() as session:
        return session.scalar(
            select(func.count()).select_from(Fact).where(Fact.connection_id == connection_id)
        )


def _refreshed(runtime, sandbox, *keys: str, tenant_id: str | None = None) -> tuple[str, list]:
    """A tenant whose Stripe connections (one per key) hold refreshed figures."""
    ids = []
    for key in keys:
        tenant_id, connection_id = add_stripe_connection(
            runtime, sandbox.url, remember_secret(key), tenant_id=tenant_id
        )
        ids.append(connection_id)
    outcomes = refresh.refresh_connections(runtime, ids)
    assert all(o.error is None for o in outcomes.values()), outcomes
    return tenant_id, ids


# -- connection remove ------------------------------------------------------------------------


def test_remove_erases_the_connection_and_leaves_the_tenants_others(
    runtime, sandbox, monkeypatch, capsys
):
    key_gone, key_kept = new_stripe_key(), new_stripe_key()
    tenant_id, (gone, kept) = _refreshed(runtime, sandbox, key_gone, key_kept)
    fetch_to_staging(runtime, gone)  # raw records a killed run left behind
    assert (runtime.settings.staging_dir / gone).exists()
    code, _, err = cli(monkeypatch, capsys, "connection", "test", gone, "--reason", "T-1")
    assert code == 0, err  # an audit event that names the connection
    kept_facts = _facts(runtime, kept)
    assert _facts(runtime, gone) > 0 and kept_facts > 0

    code, out, err = cli(
        monkeypatch, capsys, "connection", "remove", gone[:8], "--yes", "--reason", "T-2"
    )

    assert code == 0, err
    # one outcome, said once ("removed and verified", not "removed …: removed and verified")
    assert f"stripe connection {gone} of tenant" in out
    assert out.count("removed and verified") == 1 and "removed stripe" not in out
    assert "nothing of the connection left" in out
    assert "revoke the API key" in out  # a key only the client can revoke
    # Not the command's own word: every table, file, raw byte searched again here.
    again = verify_erasure(runtime, Identifiers("", (gone,), credentials=(key_gone,)))
    assert again.ok, again.lines("connection")
    assert not (runtime.settings.staging_dir / gone).exists()
    with runtime.db.session() as session:
        assert session.get(Connection, gone) is None
        for model in (Credential, SyncCursor, Fact):
            where = model.connection_id == gone
            assert session.scalar(select(func.count()).select_from(model).where(where)) == 0
        other = registry.get_connection(session, kept)
        assert registry.get_secrets(session, runtime.keys, other) == {"api_key": key_kept}
        assert session.get(Tenant, tenant_id) is not None
    assert other.status == "active" and _facts(runtime, kept) == kept_facts
    # audited by the tenant, never by the removed connection's id
    (event,) = [e for e in list_events(runtime, tenant_id) if e.action == "connection.remove"]
    (started,) = [e for e in list_events(runtime, tenant_id) if e.action.endswith(".started")]
    assert started.at <= event.at and started.details["removal"] == event.details["removal"]
    assert gone not in json.dumps(started.details) and started.reason == "T-2"
    assert event.reason == "T-2" and event.details["verified"] is True
    assert event.details["source"] == "stripe" and event.details["removed"]["facts"] > 0
    tested = [e for e in list_events(runtime, tenant_id) if e.action == "connection.test"]
    assert len(tested) == 1 and tested[0].details == {}  # who tested, when: kept


def test_remove_without_yes_in_a_script_is_refused_and_changes_nothing(
    runtime, sandbox, monkeypatch, capsys
):
    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    facts = _facts(runtime, connection_id)

    code, _, err = cli(monkeypatch, capsys, "connection", "remove", connection_id)

    assert code == 2
    assert err.strip() == (
        "writevue: error: Removing needs confirmation: run it in a terminal or pass --yes."
    )
    info = registry.get_connection(runtime.db.session().__enter__(), connection_id)
    assert info.status == "active" and _facts(runtime, connection_id) == facts


class RemovedGrant(SandboxOAuthSource):
    name = "removed_grant_probe"


def test_remove_revokes_an_oauth_grant_at_the_provider(runtime, sandbox, monkeypatch, capsys):
    register_oauth_source(monkeypatch, RemovedGrant())
    tenant_id = add_tenant(runtime)
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url}
    url = begin_authorization(runtime, tenant_id, RemovedGrant.name, options, CALLBACK)
    location = httpx.get(url, follow_redirects=False).headers["location"]
    remember_secret(parse_qs(urlsplit(location).query)["code"][0])
    connection_id = complete_authorization(runtime, *parse_callback(location))
    with runtime.db.session() as session:
        info = registry.get_connection(session, connection_id)
        tokens = registry.get_secrets(session, runtime.keys, info)

    code, out, err = cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")

    assert code == 0, err
    assert sandbox.counters["oauth.revocations"] == 1
    assert "OAuth grant: revoked at the provider" in out
    assert "needs operator action" not in out
    secrets = (tokens["access_token"], tokens.get("refresh_token", ""))
    assert verify_erasure(runtime, Identifiers("", (connection_id,), credentials=secrets)).ok


def test_a_failed_revocation_deletes_nothing_and_stops_the_refreshes(
    runtime, sandbox, monkeypatch, capsys
):
    register_oauth_source(monkeypatch, RemovedGrant())
    tenant_id = add_tenant(runtime)
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url}
    url = begin_authorization(runtime, tenant_id, RemovedGrant.name, options, CALLBACK)
    location = httpx.get(url, follow_redirects=False).headers["location"]
    connection_id = complete_authorization(runtime, *parse_callback(location))
    with runtime.db.session() as session:  # the revocation endpoint now answers 404
        row = session.get(Connection, connection_id)
        row.options = {**options, "auth_base_url": f"{sandbox.url}/gone"}

    code, _, err = cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")

    assert code == 2 and "nothing was deleted" in err and "--confirm-revoked" in err
    with runtime.db.session() as session:
        assert session.get(Connection, connection_id).status == registry.ERASING
        assert session.scalar(
            select(func.count())
            .select_from(Credential)
            .where(Credential.connection_id == connection_id)
        )
    code, out, err = cli(
        monkeypatch, capsys, "connection", "remove", connection_id, "--yes", "--confirm-revoked"
    )
    assert code == 0, err
    assert "nothing of the connection left" in out


def test_removing_one_of_two_connections_with_the_same_key_does_not_ask_to_revoke_it(
    runtime, sandbox, monkeypatch, capsys
):
    key = new_stripe_key()
    _, (first, second) = _refreshed(runtime, sandbox, key, key)

    code, out, err = cli(monkeypatch, capsys, "connection", "remove", second, "--yes")

    assert code == 0, err
    assert "uses the same credential" in out and "revoke the API key" not in out
    with runtime.db.session() as session:
        info = registry.get_connection(session, first)
        assert registry.get_secrets(session, runtime.keys, info) == {"api_key": key}


# -- connection pause / resume ----------------------------------------------------------------


def test_a_paused_connection_is_not_refreshed_and_shows_its_figures_as_paused(
    runtime, sandbox, monkeypatch, capsys, instance
):
    from dagster import build_sensor_context

    from dashboard_server.data import load_header
    from dashboard_server.header import header_html
    from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
    from writevue_pipelines.defs.resources import WriteVueResource
    from writevue_pipelines.defs.sensors import CONNECTION_SENSORS, FAILING_SENSORS

    tenant_id, (paused, running) = _refreshed(runtime, sandbox, new_stripe_key(), new_stripe_key())
    resources = {"writevue": WriteVueResource()}
    with build_sensor_context(instance=instance, resources=resources) as context:
        apply_partition_requests(instance, CONNECTION_SENSORS["stripe"](context))
    partitions = CONNECTION_PARTITIONS["stripe"].name
    assert set(instance.get_dynamic_partitions(partitions)) == {paused, running}
    with runtime.db.session() as session:  # it had failed: the retry sensor would want it
        registry.record_refresh_result(session, paused, error="the source said no")
    before = registry.get_connection(runtime.db.session().__enter__(), paused)

    code, _, err = cli(monkeypatch, capsys, "connection", "pause", paused[:6])
    assert code == 0, err
    assert err.strip() == f"ok: stripe connection {paused} is paused"

    # the schedules refresh the partitions this sensor keeps: the paused one's goes
    with build_sensor_context(instance=instance, resources=resources) as context:
        apply_partition_requests(instance, CONNECTION_SENSORS["stripe"](context))
    assert set(instance.get_dynamic_partitions(partitions)) == {running}
    with build_sensor_context(instance=instance, resources=resources) as context:
        retried = FAILING_SENSORS["stripe"](context)
    assert not getattr(retried, "run_requests", None)
    # `writevue refresh` reads the same list
    listed = registry.list_connections(runtime.db.session().__enter__(), active_only=True)
    assert [c.id for c in listed] == [running]
    # its dashboard: its figures as of the pause, "Paused", no stale or error advice
    header = load_header(runtime, tenant_id)
    (status,) = [s for s in header.sources if s.state == "paused"]
    assert status.advice.startswith("Updates paused; figures as of")
    view = SimpleNamespace(
        tenant_name=header.tenant_name,
        last_updated=header.last_updated,
        period=SimpleNamespace(label="last 30 days"),
        sources=header.sources,
    )
    html = header_html(view)
    assert "Paused" in html and "out of date" not in html and "Reconnect" not in html
    assert _facts(runtime, paused) > 0
    code, out, _ = cli(monkeypatch, capsys, "connection", "list", "--json")
    assert {r["id"]: r["status"] for r in json.loads(out)}[paused] == "paused"

    code, _, err = cli(monkeypatch, capsys, "connection", "resume", paused[:6])
    assert code == 0, err
    after = registry.get_connection(runtime.db.session().__enter__(), paused)
    # its last refresh had failed: the retry sensor takes it from here
    assert after.status == "failing" and before.status == "failing"
    with build_sensor_context(instance=instance, resources=resources) as context:
        resumed = CONNECTION_SENSORS["stripe"](context)
    assert resumed.run_requests  # its catch-up refresh
    actions = [e.action for e in list_events(runtime, tenant_id)]
    assert "connection.paused" in actions and "connection.resumed" in actions


def test_a_refresh_that_ends_after_the_pause_keeps_it_paused(runtime, sandbox):
    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    with runtime.db.session() as session:
        registry.set_paused(session, connection_id, True)
        registry.record_refresh_result(session, connection_id, error="late failure")
        registry.record_refresh_result(session, connection_id, error=None)
        assert registry.get_connection(session, connection_id).status == registry.PAUSED


# -- connection add -------------------------------------------------------------------------


def test_add_refuses_a_bad_key_and_an_owner_that_does_not_exist(
    runtime, sandbox, monkeypatch, capsys
):
    tenant_id = add_tenant(runtime)
    github = ("connection", "add", tenant_id, "github", "--option", f"base_url={sandbox.url}")
    good = remember_secret("ghp_" + new_stripe_key()[8:])

    bad_key = cli(monkeypatch, capsys, *github, "--option", "owner=acme", stdin="nope-nope\n")
    no_owner = cli(monkeypatch, capsys, *github, "--option", "owner=missing-acme", stdin=good)

    assert bad_key[0] == 2 and no_owner[0] == 2
    assert bad_key[2].strip() == (
        "writevue: error: GitHub refused the key (HTTP 401); nothing was saved. "
        "Check the key and its permissions, then run this again."
    )
    assert no_owner[2].strip() == (
        "writevue: error: GitHub has no user or organisation 'missing-acme'; check the "
        "owner option. Nothing was saved (GitHub answered HTTP 404)."
    )
    assert registry.list_connections(runtime.db.session().__enter__(), tenant_id=tenant_id) == []


def test_add_warns_once_about_the_same_account_added_twice(runtime, sandbox, monkeypatch, capsys):
    tenant_id = add_tenant(runtime)
    other_tenant = add_tenant(runtime, "Other Co", "ops@other.test")
    key = remember_secret("ghp_" + new_stripe_key()[8:])

    def add(tenant, owner):
        code, out, err = cli(
            monkeypatch,
            capsys,
            *("connection", "add", tenant, "github", "--option", f"owner={owner}"),
            *("--option", f"base_url={sandbox.url}/"),
            stdin=key,
        )
        assert code == 0, err
        return out.strip(), err

    first, quiet = add(tenant_id, "acme")
    _, other_owner = add(tenant_id, "acme-labs")
    _, other_client = add(other_tenant, "acme")
    second, warned = add(tenant_id, "ACME")  # logins are case-insensitive

    assert "warning" not in quiet + other_owner + other_client
    (line,) = warned.strip().splitlines()
    assert line.startswith(
        f"warning: tenant {tenant_id} already has a GitHub connection to the same account, "
        f"acme: {first}"
    )
    assert f"`writevue connection remove {second}`" in line
    assert key not in warned


def test_no_verify_lists_it_unverified_until_its_first_refresh(
    runtime, sandbox, monkeypatch, capsys
):
    tenant_id = add_tenant(runtime, "Offline Ltd", "ops@offline.test")
    key = remember_secret(new_stripe_key())
    code, out, err = cli(
        monkeypatch,
        capsys,
        *("connection", "add", tenant_id, "stripe", "--no-verify"),
        *("--option", f"base_url={sandbox.url}"),
        stdin=key,
    )
    assert code == 0, err
    connection_id = out.strip()
    code, out, _ = cli(monkeypatch, capsys, "connection", "list")
    assert f"{connection_id}  stripe     unverified" in out
    assert f"tenant {tenant_id} (Offline Ltd)" in out

    assert refresh.refresh_connections(runtime, [connection_id])[connection_id].error is None
    with runtime.db.session() as session:
        assert registry.get_connection(session, connection_id).status == "active"


def test_connection_list_names_the_tenants(runtime, sandbox, monkeypatch, capsys):
    a, _ = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), name="Acme Ltd")
    b, _ = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), name="Bolt GmbH")
    code, out, _ = cli(monkeypatch, capsys, "connection", "list", "--json")
    assert code == 0
    assert {(r["tenant_id"], r["tenant_name"]) for r in json.loads(out)} == {
        (a, "Acme Ltd"),
        (b, "Bolt GmbH"),
    }


# -- help -------------------------------------------------------------------------------------


def _help(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "writevue_pipelines.cli", *args, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_connection_add_help_lists_every_source_and_its_options():
    text = _help("connection", "add")
    for name, source in SOURCES.items():
        assert f"  {name}: {source.title}" in text
        for option, description in source.options.items():
            assert f"    {option}: {description}" in text
    assert "example:" in text


@pytest.mark.parametrize("command", ["test", "remove", "pause", "resume"])
def test_connection_commands_document_themselves_with_an_example(command):
    text = _help("connection", command)
    assert "example:" in text and f"writevue connection {command} " in text


# -- ids by prefix ----------------------------------------------------------------------------


@pytest.fixture
def ids(runtime, sandbox, monkeypatch, capsys) -> dict[str, str]:
    """One of everything a command takes an id of."""
    from writevue_pipelines import links
    from writevue_pipelines.notifications import config

    tenant_id, connection_id = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    with runtime.db.session() as session:
        link, _ = links.create_link(session, tenant_id)
        link_id = link.id
        common = {"emails": ["client@example.test"]}
        scorecard = config.add_scorecard(
            session,
            runtime.keys,
            tenant_id,
            name="Weekly",
            metrics=["stripe.charges"],
            period="last_week",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            **common,
        )
        alert = config.add_alert(
            session,
            runtime.keys,
            tenant_id,
            metric="stripe.charges",
            condition="above",
            threshold=1000,
            **common,
        )
    code, out, err = cli(
        monkeypatch, capsys, "goal", "set", tenant_id, "stripe.charges", "100", "--per", "month"
    )
    assert code == 0, err
    request = run_erasure(runtime, add_tenant(runtime, "Gone Co", "gone@gone.test")).request_id
    return {
        "TENANT": tenant_id,
        "CONNECTION": connection_id,
        "LINK": link_id,
        "SCORECARD": getattr(scorecard, "id", scorecard),
        "ALERT": getattr(alert, "id", alert),
        "GOAL": out.strip().splitlines()[-1],
        "REQUEST": request,
    }


#: one command per id argument (every `dest` in ID_ARGUMENTS), run with 8-character prefixes
BY_PREFIX = [
    ("tenant", "show", "TENANT"),
    ("connection", "list", "--tenant", "TENANT"),
    ("audit", "list", "--tenant", "TENANT"),
    ("notifications", "list", "--tenant", "TENANT"),
    ("link", "list", "TENANT"),
    ("goal", "list", "TENANT"),
    ("scorecard", "list", "TENANT"),
    ("alert", "list", "TENANT"),
    ("template", "clear", "TENANT", "TENANT"),
    ("connection", "pause", "CONNECTION"),
    (
        "connection",
        "authorize",
        "TENANT",
        "github",
        "--option",
        "owner=acme",
        "--reconnect",
        "CONNECTION",
    ),
    ("scorecard", "pause", "SCORECARD"),
    ("alert", "pause", "ALERT"),
    ("goal", "remove", "GOAL"),
    ("link", "revoke", "LINK"),
    ("tenant", "revoke-grants", "REQUEST", "--confirm-revoked"),
    ("tenant", "erase", "REQUEST_TENANT"),  # an erased tenant, found in its erasure record
]


@pytest.mark.parametrize("argv", BY_PREFIX, ids=[" ".join(a[:2]) for a in BY_PREFIX])
def test_every_id_argument_takes_an_unambiguous_prefix(runtime, ids, argv, monkeypatch, capsys):
    from writevue_pipelines.models import DeletionRequest

    with runtime.db.session() as session:
        ids["REQUEST_TENANT"] = session.get(DeletionRequest, ids["REQUEST"]).tenant_id
    short = [ids[a][:8] if a in ids else a for a in argv]
    extra = ["--yes"] if argv[1] == "erase" else []

    code, _, err = cli(monkeypatch, capsys, *short, *extra, env=sandbox_oauth_client("github"))

    assert "too short" not in err and "have ids beginning" not in err
    assert "not a valid id" not in err
    # it ran on the full ids; one that refuses for its own reasons names the full id
    assert code == 0 or any(ids[a] in err for a in argv if a in ids), err


def test_id_arguments_are_all_resolved_by_prefix():
    """A command added later with an id argument is covered, or this fails."""
    id_like = set()
    for cmd in commands():
        for argument in cmd.args:
            dest = argument.options.get("dest") or argument.flags[-1].lstrip("-").replace("-", "_")
            metavar = str(argument.options.get("metavar", ""))
            if dest.endswith(("_id", "_ids")) or metavar.endswith("ID"):
                id_like.add(dest)
    assert id_like - set(ID_ARGUMENTS) == set()
    covered = {a for row in BY_PREFIX for a in row if a.isupper()}
    assert {"TENANT", "CONNECTION", "LINK", "GOAL", "SCORECARD", "ALERT", "REQUEST"} <= covered


def _tenant_with_id(runtime, tenant_id: str) -> str:
    from writevue_pipelines.vault import Binding

    with runtime.db.session() as session:
        session.add(
            Tenant(
                id=tenant_id,
                name_ct=runtime.keys.encrypt("Twin", Binding(tenant_id, None, "tenant.name")),
                email_ct=runtime.keys.encrypt("t@t.test", Binding(tenant_id, None, "tenant.email")),
            )
        )
    return tenant_id


def test_a_prefix_too_short_ambiguous_or_unknown_gets_one_clear_line(runtime, monkeypatch, capsys):
    one = _tenant_with_id(runtime, "abcd1234-0000-4000-8000-000000000001")
    _tenant_with_id(runtime, "abcd5678-0000-4000-8000-000000000002")

    cases = {
        "abc": "writevue: error: Tenant id 'abc' is too short: give at least 4 characters of it.",
        "abcd": "writevue: error: 2 tenants have ids beginning 'abcd'; give more characters.",
        "ABCD": "writevue: error: 2 tenants have ids beginning 'ABCD'; give more characters.",
        "ffff": "writevue: error: No tenant with id ffff; `writevue tenant list` shows them.",
    }
    for prefix, message in cases.items():
        code, out, err = cli(monkeypatch, capsys, "tenant", "show", prefix)
        assert (code, out, err.strip()) == (2, "", message)
    code, out, err = cli(monkeypatch, capsys, "tenant", "show", "abcd1")
    assert code == 0 and out.startswith(one), err
    # not an id at all: the command's own message, as before
    code, _, err = cli(monkeypatch, capsys, "tenant", "show", "acme")
    assert "is not a valid id" in err
    # the unknown message is the command's own for an unknown full id
    for kind in ("tenant_id", "connection_id", "link_id", "goal_id", "scorecard_id", "alert_id"):
        assert "{id}" in ID_ARGUMENTS[kind].not_found


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (("tenant", "show"), "tenant_id"),
        (("connection", "test"), "connection_id"),
        (("link", "revoke"), "link_id"),
        (("goal", "remove"), "goal_id"),
        (("scorecard", "pause"), "scorecard_id"),
        (("alert", "pause"), "alert_id"),
        (("tenant", "revoke-grants"), "request_id"),
    ],
)
def test_an_unknown_prefix_gets_the_commands_own_not_found_message(
    runtime, monkeypatch, capsys, argv, kind
):
    unknown = "0123abcd-0000-4000-8000-000000000000"
    code_full, _, full = cli(monkeypatch, capsys, *argv, unknown)
    code_short, _, short = cli(monkeypatch, capsys, *argv, unknown[:8])
    assert code_full == code_short == 2
    assert short.strip() == full.strip().replace(unknown, unknown[:8])
    assert short.strip() == "writevue: error: " + ID_ARGUMENTS[kind].not_found.format(
        id=unknown[:8]
    )


def test_audit_keeps_no_trace_of_a_removed_connection(runtime, sandbox, monkeypatch, capsys):
    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    cli(
        monkeypatch,
        capsys,
        "connection",
        "test",
        connection_id,
        "--reason",
        f"about {connection_id}",
    )
    code, _, err = cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")
    assert code == 0, err
    with runtime.db.session() as session:
        events = session.scalars(select(AuditEvent)).all()
    dumped = json.dumps([[e.details, e.reason] for e in events])
    assert connection_id not in dumped and "(removed connection)" in dumped


# -- review of issue 16 ---------------------------------------------------------------------


def test_remove_with_staging_files_on_either_database(any_runtime, sandbox, monkeypatch, capsys):
    runtime = any_runtime
    key = new_stripe_key()
    _, (connection_id,) = _refreshed(runtime, sandbox, key)
    fetch_to_staging(runtime, connection_id)
    assert (runtime.settings.staging_dir / connection_id).exists()

    code, out, err = cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")

    assert code == 0, err
    assert "  staging_files: " in out  # counted, and no VACUUM of a table by that name
    assert "nothing of the connection left" in out
    assert not (runtime.settings.staging_dir / connection_id).exists()
    again = verify_erasure(runtime, Identifiers("", (connection_id,), credentials=(key,)))
    assert again.ok, again.lines("connection")


def test_an_unverified_removal_is_finished_by_running_it_again(
    any_runtime, sandbox, monkeypatch, capsys
):
    runtime = any_runtime
    tenant_id, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    # something of the connection that the removal does not delete: an operator's note
    note = runtime.settings.home / "notes.txt"
    note.write_text(f"ticket about {connection_id}\n")

    code, out, err = cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")

    assert code == 2 and "not verified" in out and "notes.txt" in out
    outcomes = [e for e in list_events(runtime, tenant_id) if e.action == "connection.remove"]
    assert outcomes[-1].details["verified"] is False  # its outcome is recorded
    note.unlink()
    fetch_to_staging_dir = runtime.settings.staging_dir / connection_id
    fetch_to_staging_dir.mkdir(parents=True)  # a late fetch left records behind
    (fetch_to_staging_dir / "records.jsonl").write_text("{}\n")

    code, out, err = cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")

    assert code == 0, err
    assert "nothing of the connection left" in out and "No connection" not in err
    assert not fetch_to_staging_dir.exists()
    outcomes = [e for e in list_events(runtime, tenant_id) if e.action == "connection.remove"]
    assert outcomes[-1].details["verified"] is True
    # an id that was never removed here is still unknown
    unknown = "0123abcd-0000-4000-8000-000000000000"
    code, _, err = cli(monkeypatch, capsys, "connection", "remove", unknown, "--yes")
    assert code == 2 and "No connection" in err


@pytest.mark.parametrize("status", ["paused", "erasing", "disabled"])
def test_a_connection_not_refreshed_is_not_fetched_even_when_asked(runtime, sandbox, status):
    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    with runtime.db.session() as session:
        row = session.get(Connection, connection_id)
        row.status = status
        before = (row.last_refreshed_at, row.last_error)
    calls = sum(sandbox.counters.values())
    facts = _facts(runtime, connection_id)

    # a run requested before the pause or the removal began
    outcomes = refresh.refresh_connections(runtime, [connection_id])

    assert isinstance(outcomes[connection_id].error, refresh.NotRefreshed)
    assert sum(sandbox.counters.values()) == calls  # no request with its credential
    refresh.record_failure(runtime, connection_id, outcomes[connection_id].error)
    with runtime.db.session() as session:
        row = session.get(Connection, connection_id)
        assert (row.status, (row.last_refreshed_at, row.last_error)) == (status, before)
        listed = registry.list_connections(session, active_only=True)
    assert connection_id not in [c.id for c in listed] and _facts(runtime, connection_id) == facts


@pytest.mark.parametrize("status", ["active", "failing", "needs_reauth", "unverified"])
def test_pause_then_resume_restores_the_status_it_had(
    runtime, sandbox, monkeypatch, capsys, status
):
    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    with runtime.db.session() as session:
        row = session.get(Connection, connection_id)
        row.status, row.last_error = status, "the source said no"
        options = dict(row.options)

    assert cli(monkeypatch, capsys, "connection", "pause", connection_id)[0] == 0
    code, _, err = cli(monkeypatch, capsys, "connection", "resume", connection_id)

    assert code == 0, err
    with runtime.db.session() as session:
        row = session.get(Connection, connection_id)
        assert (row.status, row.options) == (status, options)


@pytest.mark.parametrize("status", ["disabled", "erasing"])
def test_a_disabled_or_erasing_connection_cannot_be_paused(
    runtime, sandbox, monkeypatch, capsys, status
):
    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    with runtime.db.session() as session:
        session.get(Connection, connection_id).status = status

    code, out, err = cli(monkeypatch, capsys, "connection", "pause", connection_id)

    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert status in err.strip().splitlines()[0] or "erased" in err
    with runtime.db.session() as session:
        assert session.get(Connection, connection_id).status == status


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_audited_command_asks_for_its_reason_before_looking_up_an_id_prefix(
    runtime, monkeypatch, capsys
):
    from writevue_pipelines import cli as cli_module

    monkeypatch.setattr(sys, "stdin", _Terminal(""))
    monkeypatch.delenv("WRITEVUE_AUDIT_REASON", raising=False)
    for prefix in ("ffff", "abcd"):
        code = cli_module.main(["tenant", "show", prefix])
        _, err = capsys.readouterr()
        assert code == 2
        assert err.strip().startswith("writevue: error: `tenant.show` is recorded"), err
        assert len(err.strip().splitlines()) == 1


def test_removing_one_of_two_connections_of_a_source_keeps_the_tenants_anomaly_marks(
    runtime, sandbox, monkeypatch, capsys
):
    import datetime as dt

    from writevue_pipelines.models import MetricAnomaly

    tenant_id, (gone, kept) = _refreshed(runtime, sandbox, new_stripe_key(), new_stripe_key())
    with runtime.db.session() as session:
        session.add(
            MetricAnomaly(
                tenant_id=tenant_id,
                metric="stripe.revenue",
                day=dt.date(2026, 11, 1),
                value=9.0,
                expected=1.0,
                low=0.0,
                high=2.0,
            )
        )

    code, _, err = cli(monkeypatch, capsys, "connection", "remove", gone, "--yes")
    assert code == 0, err
    count = select(func.count()).select_from(MetricAnomaly)
    with runtime.db.session() as session:
        assert session.scalar(count) == 1  # the other Stripe connection's figures stay

    code, _, err = cli(monkeypatch, capsys, "connection", "remove", kept, "--yes")
    assert code == 0, err
    with runtime.db.session() as session:
        assert session.scalar(count) == 0  # nothing of the source left to mark


def test_a_run_requested_before_the_pause_succeeds_without_refreshing_it(
    runtime, sandbox, instance
):
    from test_dagster_assets import materialize_stripe

    _, (connection_id,) = _refreshed(runtime, sandbox, new_stripe_key())
    with runtime.db.session() as session:
        registry.set_paused(session, connection_id, True)
        before = registry.get_connection(session, connection_id)
    calls = sum(sandbox.counters.values())

    result = materialize_stripe(instance, connection_id)

    # skipped, as a connection that no longer exists is: not a failed partition
    assert result.success and not result.get_step_failure_events()
    assert sum(sandbox.counters.values()) == calls
    with runtime.db.session() as session:
        assert registry.get_connection(session, connection_id) == before
