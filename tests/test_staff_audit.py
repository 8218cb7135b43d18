"""Staff access is audited everywhere: every command that reveals a tenant's personal data
or figures, or creates access to them, records who, what, which tenant, when and why.

Where a command stands is declared once, on its registration (``@command(...,
audit="action")`` or ``audit=False``); the walk below fails for a command that says
neither, so a new command cannot slip past the audit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import (
    SandboxOAuthSource,
    add_stripe_connection,
    add_tenant,
    new_stripe_key,
    register_oauth_source,
    remember_secret,
    run_cli,
    start_smtp_server,
)

from writevue_pipelines import links, registry
from writevue_pipelines.cli.app import commands
from writevue_pipelines.models import AuditEvent
from writevue_pipelines.notifications import config
from writevue_pipelines.privacy import list_events, run_erasure

CALLBACK = "https://connect.writevue.test/oauth/callback"

#: what the issue names as revealing a tenant's data or creating access to it: these
#: may never be declared ``audit=False``
MUST_BE_AUDITED = {
    "scorecard add",
    "scorecard recipients",
    "scorecard send-now",
    "alert add",
    "alert recipients",
    "alert test",
    "tenant list",
    "tenant show",
    "tenant export",
    "connection list",
    "connection add",
    "connection invite",
    "connection test",
    "link create",
    "link rotate",
    "refresh",
}


@dataclass
class World:
    tenant: str
    bare: str  # a tenant without connections, for a refresh that needs no source
    connection: str
    link: str
    sandbox_url: str
    tmp: Path
    erased_request: str = ""  # a done erasure request, to retry its revocations
    scorecard: str = ""  # the tenant's weekly scorecard, to preview
    alert: str = ""  # the tenant's alert, to test


@pytest.fixture
def world(runtime, sandbox, tmp_path) -> World:
    tenant, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    with runtime.db.session() as session:
        link, _ = links.create_link(session, tenant)
    erased = run_erasure(runtime, add_tenant(runtime, "Gone Co")).request_id
    with runtime.db.session() as session:
        scorecard = config.add_scorecard(
            session,
            runtime.keys,
            tenant,
            name="Weekly",
            metrics=["stripe.charges"],
            period="last_week",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            emails=["client@example.test"],
        )
        alert = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="above",
            threshold=1000,
            emails=["client@example.test"],
        )
    return World(
        tenant,
        add_tenant(runtime, "Bare Co"),
        connection,
        link.id,
        sandbox.url,
        tmp_path,
        erased,
        scorecard,
        alert,
    )


@pytest.fixture(scope="module")
def smtp_peer(tmp_path_factory):
    """Where `scorecard send-now` and `alert test` send (a real SMTP server on loopback)."""
    peer = start_smtp_server(tmp_path_factory.mktemp("smtp"))
    yield peer
    peer.stop()


def _authorize_then_consent(w: World, monkeypatch, capsys) -> str:
    """The callback URL the client's browser lands on (stdin of `connection complete`)."""
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "connection",
        "authorize",
        w.tenant,
        SandboxOAuthSource.name,
        "--option",
        f"base_url={w.sandbox_url}",
        "--option",
        f"auth_base_url={w.sandbox_url}",
        "--redirect-uri",
        CALLBACK,
    )
    assert code == 0, err
    response = httpx.get(out.strip().splitlines()[-1], follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    remember_secret(httpx.URL(location).params.get("code", ""))
    return location


#: (argv, the action, whose tenant id the record names: "tenant" or None, details expected)
AUDITED = [
    (lambda w: ["tenant", "list"], "tenant.list", None, {"tenants": 2}),
    (lambda w: ["tenant", "show", w.tenant], "tenant.show", "tenant", {}),
    (
        lambda w: ["tenant", "export", w.tenant, "--out", str(w.tmp / "t.zip")],
        "tenant.export",
        "tenant",
        None,
    ),
    (lambda w: ["tenant", "request-erasure", w.bare], "tenant.request-erasure", None, None),
    # by the erased tenant's opaque id, kept like the erasure record, with its request
    (lambda w: ["tenant", "erase", w.bare, "--yes"], "tenant.erase", "bare", None),
    (
        lambda w: ["tenant", "revoke-grants", w.erased_request, "--confirm-revoked"],
        "tenant.revoke-grants",
        None,
        None,
    ),
    (
        lambda w: [
            *("connection", "add", w.tenant, "stripe", "--api-key-env", "STAFF_AUDIT_KEY"),
            *("--option", f"base_url={w.sandbox_url}", "--no-verify"),
        ],
        "connection.add",
        "tenant",
        None,
    ),
    (
        lambda w: ["connection", "rekey", w.connection, "--api-key-env", "STAFF_AUDIT_KEY"],
        "connection.rekeyed",
        "tenant",
        {"connection_id": "connection"},
    ),
    (
        lambda w: [
            *("connection", "authorize", w.tenant, SandboxOAuthSource.name),
            *("--option", f"base_url={w.sandbox_url}", "--redirect-uri", CALLBACK),
        ],
        "connection.authorize",
        "tenant",
        {},
    ),
    (lambda w: ["connection", "complete"], "connection.complete", "tenant", None),
    (
        lambda w: ["connection", "test", w.connection],
        "connection.test",
        "tenant",
        {"connection_id": "connection"},
    ),
    (
        lambda w: ["connection", "list"],
        "connection.list",
        None,
        {"connections": 1, "tenants": 1},
    ),
    (
        lambda w: ["connection", "remove", w.connection, "--yes"],
        "connection.remove",
        "tenant",
        None,
    ),
    (
        lambda w: [
            *("connection", "invite", w.tenant, "--source", "stripe"),
            *("--option", f"stripe.base_url={w.sandbox_url}"),
        ],
        "connection.invite",
        "tenant",
        None,
    ),
    (lambda w: ["link", "create", w.tenant], "link.create", "tenant", None),
    (lambda w: ["link", "list", w.tenant], "link.list", "tenant", {"links": 1}),
    (lambda w: ["link", "rotate", w.link], "link.rotate", "tenant", {"link_id": "link"}),
    (lambda w: ["refresh", "--tenant", w.bare], "tenant.refresh", "bare", {}),
    (lambda w: ["goal", "list", w.tenant], "goal.list", "tenant", {"goals": 0}),
    (
        lambda w: [
            *("scorecard", "add", w.tenant, "--name", "Weekly", "--metric", "stripe.charges"),
            *("--period", "last_week", "--compare", "previous", "--every", "weekly"),
            *("--to", "client@example.test"),
        ],
        "scorecard.add",
        "tenant",
        None,
    ),
    (lambda w: ["scorecard", "list", w.tenant], "scorecard.list", "tenant", {"scorecards": 1}),
    (
        lambda w: ["scorecard", "preview", w.scorecard, "--out", str(w.tmp / "s.eml")],
        "scorecard.preview",
        "tenant",
        {"scorecard": "scorecard"},
    ),
    (
        lambda w: (
            [
                *("alert", "add", w.tenant, "stripe.charges", "--below", "1"),
                *("--to", "client@example.test"),
            ]
        ),
        "alert.add",
        "tenant",
        None,
    ),
    (lambda w: ["alert", "list", w.tenant], "alert.list", "tenant", {"alerts": 1}),
    (
        lambda w: ["scorecard", "send-now", w.scorecard],
        "scorecard.send-now",
        "tenant",
        {"scorecard": "scorecard"},
    ),
    (lambda w: ["alert", "test", w.alert], "alert.test", "tenant", {"alert": "alert"}),
    (
        lambda w: ["scorecard", "recipients", w.scorecard, "--add-to", "new@example.test"],
        "scorecard.recipients",
        "tenant",
        {"scorecard_id": "scorecard", "added": 1, "removed": 0},
    ),
    (
        lambda w: [
            *("alert", "recipients", w.alert, "--add-to", "new@example.test"),
            *("--remove-to", "client@example.test"),
        ],
        "alert.recipients",
        "tenant",
        {"alert_id": "alert", "added": 1, "removed": 1},
    ),
    (
        lambda w: ["notifications", "list"],
        "notifications.list",
        None,
        {"deliveries": 0, "tenants": 0},
    ),
    (
        lambda w: ["tenant", "set", w.tenant, "--link-in-messages", "on"],
        "tenant.link-in-messages",
        "tenant",
        None,
    ),
]


@pytest.mark.parametrize(
    ("argv", "action", "whose", "details"), AUDITED, ids=[row[1] for row in AUDITED]
)
def test_every_audited_command_records_actor_action_tenant_and_reason(
    runtime, world, smtp_peer, monkeypatch, capsys, argv, action, whose, details
):
    w = world
    register_oauth_source(monkeypatch, SandboxOAuthSource())
    key = remember_secret(new_stripe_key())
    stdin = ""
    if action == "connection.complete":
        stdin = _authorize_then_consent(w, monkeypatch, capsys)
    before = {e.action for e in list_events(runtime, actor="auditor-7")}
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        *argv(w),
        "--actor",
        "auditor-7",
        "--reason",
        "TICKET-42 client asked",
        stdin=stdin,
        env={"STAFF_AUDIT_KEY": key, "WRITEVUE_SMTP_URL": smtp_peer.url},
    )
    assert code == 0, err
    events = [e for e in list_events(runtime, actor="auditor-7") if e.action == action]
    assert len(events) == 1 and action not in before, events
    (event,) = events
    assert event.reason == "TICKET-42 client asked"
    assert event.tenant_id == (getattr(w, whose) if whose else None)
    if details is not None:
        ids = {
            "connection": w.connection,
            "link": w.link,
            "scorecard": w.scorecard,
            "alert": w.alert,
        }
        assert event.details == {k: ids.get(v, v) for k, v in details.items()}
    # ids and counts only: no name or email of any tenant in any record
    everything = json.dumps([e.as_json() for e in list_events(runtime)])
    assert "Acme" not in everything and "@" not in everything and "Bare Co" not in everything


def test_every_command_declares_whether_it_is_audited():
    registered = {cmd.name: cmd for cmd in commands()}
    undeclared = sorted(name for name, cmd in registered.items() if cmd.audit is None)
    assert undeclared == [], "declare audit='action' or audit=False on these commands"
    audited = {name: cmd for name, cmd in registered.items() if cmd.audit}
    assert sorted(MUST_BE_AUDITED - set(audited)) == []
    for name, cmd in audited.items():
        flags = {flag for argument in cmd.args for flag in argument.flags}
        assert {"--actor", "--reason"} <= flags, name
    # every audited command is run by the table above, which checks its record
    assert {cmd.audit for cmd in audited.values()} == {row[1] for row in AUDITED}


def test_a_list_of_many_tenants_is_one_record_without_tenant_ids(runtime, monkeypatch, capsys):
    tenants = [add_tenant(runtime, f"Client {i}", f"c{i}@x.test") for i in range(3)]
    code, out, _ = run_cli(monkeypatch, capsys, "tenant", "list", "--json")
    assert code == 0 and len(json.loads(out)) == 3
    (event,) = list_events(runtime, action="tenant.list")
    assert (event.tenant_id, event.details, event.reason) == (None, {"tenants": 3}, "unspecified")
    assert not any(t in json.dumps(event.as_json()) for t in tenants)


def test_a_script_records_unspecified_and_the_variable_gives_a_reason(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime)
    assert run_cli(monkeypatch, capsys, "tenant", "show", tenant)[0] == 0
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "tenant",
        "show",
        tenant,
        env={"WRITEVUE_AUDIT_REASON": "INC-9 billing check"},
    )
    assert code == 0, err
    assert [e.reason for e in list_events(runtime, tenant)] == [
        "unspecified",
        "INC-9 billing check",
    ]
    # --reason wins over the variable
    assert run_cli(monkeypatch, capsys, "tenant", "show", tenant, "--reason", "INC-10")[0] == 0
    assert list_events(runtime, tenant)[-1].reason == "INC-10"


@pytest.mark.parametrize(
    "reason", ["", "   ", "two\nlines", "x" * 501, "asked by ops@acme.test", "tab\there"]
)
def test_a_bad_reason_is_refused_and_nothing_is_shown(runtime, monkeypatch, capsys, reason):
    tenant = add_tenant(runtime)
    code, out, err = run_cli(monkeypatch, capsys, "tenant", "show", tenant, "--reason", reason)
    assert code == 2 and out == "" and "reason" in err and len(err.strip().splitlines()) == 1
    assert list_events(runtime) == []


def _in_a_terminal(home: Path, *args: str, env: dict[str, str] | None = None):
    """`writevue ARGS` with a terminal as its stdin (a pty): (exit code, stdout, stderr)."""
    main, other = os.openpty()
    environ = {**os.environ, "WRITEVUE_HOME": str(home), **(env or {})}
    environ.pop("WRITEVUE_DATABASE_URL", None)
    environ.pop("DAGSTER_HOME", None)
    if not env or "WRITEVUE_AUDIT_REASON" not in env:
        environ.pop("WRITEVUE_AUDIT_REASON", None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "writevue_pipelines.cli", *args],
            stdin=other,
            capture_output=True,
            text=True,
            env=environ,
            timeout=120,
        )
    finally:
        os.close(other)
        os.close(main)
    return result.returncode, result.stdout, result.stderr


def test_a_terminal_without_a_reason_is_refused(runtime, home):
    tenant = add_tenant(runtime, "Secret Co", "ops@secret.test")
    code, out, err = _in_a_terminal(home, "tenant", "list")
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1
    assert "--reason" in err and "WRITEVUE_AUDIT_REASON" in err
    assert list_events(runtime) == []

    code, out, err = _in_a_terminal(home, "tenant", "show", tenant, "--reason", "SUP-1")
    assert code == 0 and "Secret Co" in out, err
    code, out, err = _in_a_terminal(
        home, "tenant", "show", tenant, env={"WRITEVUE_AUDIT_REASON": "SUP-2"}
    )
    assert code == 0 and "Secret Co" in out, err
    assert [e.reason for e in list_events(runtime, tenant)] == ["SUP-1", "SUP-2"]


def _stamp(runtime, actor: str, action: str, tenant: str | None, at: dt.datetime, reason: str):
    with runtime.db.session() as session:
        session.add(
            AuditEvent(
                at=at, actor=actor, action=action, tenant_id=tenant, details={}, reason=reason
            )
        )


def test_audit_list_filters_by_actor_tenant_action_and_time(any_runtime, monkeypatch, capsys):
    runtime = any_runtime
    a, b = add_tenant(runtime, "A Co"), add_tenant(runtime, "B Co")
    day = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    _stamp(runtime, "erin", "tenant.show", a, day + dt.timedelta(hours=9), "T-1")
    _stamp(runtime, "erin", "link.create", b, day + dt.timedelta(hours=23), "T-2")
    _stamp(runtime, "sam", "tenant.export", a, day + dt.timedelta(days=1, hours=1), "T-3")
    _stamp(runtime, "sam", "tenant.list", None, day + dt.timedelta(days=2), "T-4")

    def listed(*args: str) -> list[tuple[str, str, str | None, str]]:
        code, out, err = run_cli(monkeypatch, capsys, "audit", "list", *args, "--json")
        assert code == 0, err
        return [(e["actor"], e["action"], e["tenant_id"], e["reason"]) for e in json.loads(out)]

    assert [r[3] for r in listed()] == ["T-1", "T-2", "T-3", "T-4"]
    assert [r[3] for r in listed("--actor", "sam")] == ["T-3", "T-4"]
    assert [r[3] for r in listed("--tenant", a)] == ["T-1", "T-3"]
    assert [r[3] for r in listed("--action", "tenant.")] == ["T-1", "T-3", "T-4"]
    assert [r[3] for r in listed("--action", "tenant.show")] == ["T-1"]
    assert listed("--action", "tenant") == []  # not a prefix without its dot
    assert [r[3] for r in listed("--until", "2026-03-01")] == ["T-1", "T-2"]  # the whole day
    assert [r[3] for r in listed("--since", "2026-03-01T12:00")] == ["T-2", "T-3", "T-4"]
    assert [r[3] for r in listed("--since", "2026-03-01T12:00+02:00")] == ["T-2", "T-3", "T-4"]
    assert [r[3] for r in listed("--since", "2026-03-02", "--until", "2026-03-03T00:00")] == ["T-3"]
    assert [r[3] for r in listed("--actor", "erin", "--action", "link.", "--tenant", b)] == ["T-2"]
    assert listed("--actor", "nobody") == []

    code, out, err = run_cli(monkeypatch, capsys, "audit", "list", "--actor", "sam")
    assert code == 0 and out.count("\n") == 2 and "reason: T-3" in out and "reason: T-4" in out

    for bad in (["--since", "yesterday"], ["--until", "2026-13-01"]):
        code, out, err = run_cli(monkeypatch, capsys, "audit", "list", *bad)
        assert code == 2 and out == "" and "ISO date" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(
        monkeypatch, capsys, "audit", "list", "--since", "2026-03-02", "--until", "2026-03-01"
    )
    assert code == 2 and "--since must be earlier" in err


def test_audit_list_filters_apply_to_erasure_records(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime, "Gone Co")
    code, _, err = run_cli(
        monkeypatch, capsys, "tenant", "request-erasure", tenant, "--actor", "dpo"
    )
    assert code == 0, err
    code, out, _ = run_cli(
        monkeypatch, capsys, "audit", "list", "--actor", "dpo", "--action", "tenant.", "--json"
    )
    actions = [(e["action"], e["tenant_id"]) for e in json.loads(out)]
    assert ("tenant.erasure.requested", tenant) in actions
    assert ("tenant.request-erasure", None) in actions
    code, out, _ = run_cli(
        monkeypatch, capsys, "audit", "list", "--actor", "someone-else", "--json"
    )
    assert json.loads(out) == []
    code, out, _ = run_cli(monkeypatch, capsys, "audit", "list", "--until", "2000-01-01", "--json")
    assert json.loads(out) == []


def test_the_migration_adds_and_removes_the_reason_column(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from writevue_pipelines.database import alembic_config

    url = f"sqlite:///{tmp_path / 'w.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0008")
    engine = create_engine(url)
    assert "reason" in {c["name"] for c in inspect(engine).get_columns("audit_events")}
    command.downgrade(config, "0007")
    engine.dispose()
    engine = create_engine(url)
    assert "reason" not in {c["name"] for c in inspect(engine).get_columns("audit_events")}
    engine.dispose()


def test_registry_audit_keeps_the_reason(runtime):
    with runtime.db.session() as session:
        registry.audit(session, "erin", "tenant.show", None, reason="T-9", n=1)
    (event,) = list_events(runtime)
    assert (event.reason, event.details) == ("T-9", {"n": 1})
