"""Deleted on request, failing closed: what the erasure cannot check or finish is never
reported as fine, and an erasure killed at any step is finished by running it again.

The checks here do not trust the erasure's verification: they read every table of the
live database and every file under WRITEVUE_HOME themselves.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import MetaData, func, select
from support import (
    SandboxOAuthSource,
    add_stripe_connection,
    add_tenant,
    fetch_to_staging,
    register_oauth_source,
    remember_secret,
)

from writevue_pipelines import cli, links, refresh
from writevue_pipelines.models import DeletionRequest
from writevue_pipelines.oauth.endpoints import client_variables
from writevue_pipelines.oauth.flow import (
    begin_authorization,
    complete_authorization,
    parse_callback,
)
from writevue_pipelines.privacy import erasure, request_erasure, run_erasure, verification
from writevue_pipelines.privacy.trends import access_log_file

CALLBACK = "https://connect.writevue.test/oauth/callback"
NAME, EMAIL = "Fail Closed Fabrics AG", "dpo@fail-closed.test"
ROOT = Path(__file__).resolve().parent.parent


class RevocableSource(SandboxOAuthSource):
    name = "revocable_probe"


def _connect_oauth(runtime, sandbox, tenant_id: str) -> str:
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url}
    url = begin_authorization(runtime, tenant_id, RevocableSource.name, options, CALLBACK)
    location = httpx.get(url, follow_redirects=False).headers["location"]
    remember_secret(parse_qs(urlsplit(location).query)["code"][0])
    return complete_authorization(runtime, *parse_callback(location))


def _client(runtime, sandbox, key: str) -> dict:
    """A tenant with a refreshed Stripe connection, staged leftovers, a link that was
    viewed (its access line in the log) and an invite."""
    tenant_id, stripe = add_stripe_connection(
        runtime, sandbox.url, remember_secret(key), name=NAME, email=EMAIL
    )
    fetch_to_staging(runtime, stripe)
    refresh.load_connection(runtime, stripe)
    fetch_to_staging(runtime, stripe)  # raw records a killed run left behind
    with runtime.db.session() as session:
        link, token = links.create_link(session, tenant_id, label="lobby")
    remember_secret(token)
    link_id = link.id
    _view(runtime, link_id)
    return {"tenant": tenant_id, "connections": [stripe], "link": link_id}


def _view(runtime, link_id: str, path: Path | None = None) -> Path:
    today = dt.datetime.now(dt.UTC).date()
    path = path or access_log_file(runtime.settings.log_dir, today)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"time": f"{today}T09:00:00Z", "link": link_id, "ip": "198.51.100.0", "event": "view"}
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    return path


def _rows_mentioning(engine, needles: list[str]) -> dict[str, set[str]]:
    live = MetaData()
    live.reflect(bind=engine)
    found: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for table in live.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    blob = bytes(value) if isinstance(value, bytes | memoryview) else None
                    for needle in needles:
                        if needle in str(value) or (blob and needle.encode() in blob):
                            found.setdefault(table.name, set()).add(column)
    return found


def _files_mentioning(home: Path, needles: list[str]) -> list[str]:
    skip = {"warehouse.db", "warehouse.db-wal", "warehouse.db-shm"}
    return sorted(
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_file()
        and p.name not in skip
        and any(n in str(p.relative_to(home)) or n.encode() in p.read_bytes() for n in needles)
    )


def _request(runtime) -> DeletionRequest:
    with runtime.db.session() as session:
        (request,) = session.scalars(select(DeletionRequest)).all()
        session.expunge(request)
        return request


def _assert_erased(runtime, made: dict) -> None:
    """Checked here, independently of the erasure's own verification."""
    needles = [made["tenant"], *made["connections"], made["link"], NAME, EMAIL]
    left = _rows_mentioning(runtime.db.engine, needles)
    # the erasure record, and staff-audit events by the tenant's id alone
    assert left.pop("deletion_requests") == {"tenant_id"}
    assert left in ({}, {"audit_events": {"tenant_id"}})
    assert _files_mentioning(runtime.settings.home, needles) == []
    request = _request(runtime)
    assert request.status == "done" and request.verified is True and request.scope_ct is None


# -- what cannot be checked fails the verification, by name --------------------------------


def test_a_file_the_verification_cannot_read_fails_it_and_is_named(runtime, sandbox, monkeypatch):
    made = _client(runtime, sandbox, "sk_test_unreadable_01")
    stray = runtime.settings.home / "notes" / "handover.txt"
    stray.parent.mkdir()
    stray.write_text("nothing about anyone")
    real_count = verification._count_in_files

    def unreadable(paths, needles):  # as an EIO or a permission error would (we are root)
        answers = real_count(paths, needles)
        pairs = zip(paths, answers, strict=True)
        return ["PermissionError" if p.name == "handover.txt" else a for p, a in pairs]

    monkeypatch.setattr(verification, "_count_in_files", unreadable)
    report = run_erasure(runtime, made["tenant"])
    assert not report.ok
    assert report.verification.unchecked == ["file notes/handover.txt (PermissionError)"]
    assert "could not be checked: file notes/handover.txt" in "\n".join(report.lines())
    request = _request(runtime)
    assert request.status == "failed" and request.verified is False
    # Once the file can be read, running the same request again proves the erasure.
    monkeypatch.setattr(verification, "_count_in_files", real_count)
    assert run_erasure(runtime, request.id).ok
    _assert_erased(runtime, made)


def test_an_access_log_the_purge_cannot_rewrite_fails_the_erasure(runtime, sandbox, monkeypatch):
    from writevue_pipelines.privacy import trends

    made = _client(runtime, sandbox, "sk_test_unwritable_2")
    real = trends._forget_in

    def read_only(path, wanted):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(trends, "_forget_in", read_only)
    report = run_erasure(runtime, made["tenant"])
    assert not report.ok
    log_name = access_log_file(runtime.settings.log_dir, dt.datetime.now(dt.UTC).date()).name
    assert f"access log {log_name} (PermissionError)" in report.verification.unchecked
    # The line is still there, and the verification saw it too.
    assert any("a dashboard link id" in f for f in report.verification.files)
    monkeypatch.setattr(trends, "_forget_in", real)
    assert run_erasure(runtime, made["tenant"]).ok
    _assert_erased(runtime, made)


@pytest.mark.parametrize("what", ["link", "invite", "email", "name"])
def test_every_identifier_of_the_tenant_is_searched_in_every_file(runtime, sandbox, what):
    made = _client(runtime, sandbox, f"sk_test_identifier_{what}")
    with runtime.db.session() as session:
        from writevue_pipelines import invites

        invite, token = invites.create_invite(
            session, made["tenant"], sources=["stripe"], options={}, expires_in_days=7
        )
    remember_secret(token)
    invite_id = invite.id
    needle = {"link": made["link"], "invite": invite_id, "email": EMAIL, "name": NAME}[what]
    # A copy the erasure does not know to remove: an old, renamed access log, a note.
    (runtime.settings.log_dir / "access-old.jsonl.bak").write_text(f"seen {needle}\n")
    report = run_erasure(runtime, made["tenant"])
    kind = {
        "link": "a dashboard link id",
        "invite": "an invite id",
        "email": "the tenant's name or email",
        "name": "the tenant's name or email",
    }[what]
    assert not report.ok
    assert report.verification.files == [f"logs/access-old.jsonl.bak ({kind})"]
    assert _request(runtime).status == "failed"


def test_a_staging_folder_named_after_a_connection_fails_the_verification(runtime, sandbox):
    made = _client(runtime, sandbox, "sk_test_named_folder")
    request_id = request_erasure(runtime, made["tenant"], "dpo")
    erasure.mark_erasing(runtime, request_id)
    # A copy under another folder, empty but named after the connection.
    (runtime.settings.home / "exports" / made["connections"][0]).mkdir(parents=True)
    (runtime.settings.home / "exports" / made["connections"][0] / "empty").write_bytes(b"")
    report = run_erasure(runtime, request_id)
    assert not report.ok
    assert report.verification.files == [
        f"exports/{made['connections'][0]}/empty (a connection id)"
    ]


# -- revocation: what failed, and what only the client can revoke --------------------------


def test_a_failed_revocation_needs_operator_action_and_can_be_retried(
    runtime, sandbox, monkeypatch, capsys
):
    register_oauth_source(monkeypatch, RevocableSource())
    made = _client(runtime, sandbox, "sk_test_revocation_3")
    grant = _connect_oauth(runtime, sandbox, made["tenant"])
    made["connections"].append(grant)
    _, secret_variable = client_variables(RevocableSource.name)
    good_secret = os.environ[secret_variable]
    monkeypatch.setenv(secret_variable, "a-client-secret-the-provider-refuses")

    report = run_erasure(runtime, made["tenant"])
    assert report.ok and report.needs_action
    assert report.outcome == "erased and verified; needs operator action"
    assert sandbox.counters["oauth.revocations"] == 0
    request = _request(runtime)
    assert request.status == "done" and request.verified
    assert request.revocations == {"attempted": 1, "revoked": 0, "failed": 1, "unsupported": 0}
    assert request.actions == [
        {
            "kind": "client_should_revoke",
            "source": "stripe",
            "auth_kind": "api_key",
            "what": "ask the client to revoke the API key it gave us at the provider"
            f" (connected on {dt.datetime.now(dt.UTC).date()})",
        },
        {
            "kind": "revocation_failed",
            "source": RevocableSource.name,
            "auth_kind": "oauth2",
            "what": "revoking the grant failed (the provider answered HTTP 401)",
            "command": f"writevue tenant revoke-grants {request.id}",
        },
    ]
    text = "\n".join(report.lines())
    assert "needs operator action:" in text and "writevue tenant revoke-grants" in text
    # The kept grant is ciphertext: no connection id, no token in any table.
    _assert_erased(runtime, made)

    # Still refused: the command says so and keeps the tokens for the next try.
    assert cli.main(["tenant", "revoke-grants", request.id]) == 2
    assert "still fail" in capsys.readouterr().err
    monkeypatch.setenv(secret_variable, good_secret)
    assert cli.main(["tenant", "revoke-grants", request.id]) == 0
    assert f"{RevocableSource.name}: revoked" in capsys.readouterr().out
    assert sandbox.counters["oauth.revocations"] == 1
    request = _request(runtime)
    assert request.retry_ct is None
    assert [a["kind"] for a in request.actions] == ["client_should_revoke"]
    assert request.revocations["revoked"] == 1 and request.revocations["failed"] == 0
    assert cli.main(["tenant", "revoke-grants", request.id]) == 0
    assert "none left to retry" in capsys.readouterr().out


def test_the_operator_can_confirm_the_client_revoked_a_grant_itself(
    runtime, sandbox, monkeypatch, capsys
):
    register_oauth_source(monkeypatch, RevocableSource())
    tenant_id = add_tenant(runtime, NAME, EMAIL)
    _connect_oauth(runtime, sandbox, tenant_id)
    _, secret_variable = client_variables(RevocableSource.name)
    monkeypatch.setenv(secret_variable, "refused-secret-000")
    report = run_erasure(runtime, tenant_id)
    assert report.ok and [a["kind"] for a in report.actions] == ["revocation_failed"]
    with pytest.raises(Exception, match=r"already erased on .* 1 grant revocation"):
        run_erasure(runtime, tenant_id)
    request = _request(runtime)
    assert cli.main(["tenant", "revoke-grants", request.id, "--confirm-revoked"]) == 0
    assert "tokens deleted" in capsys.readouterr().out
    request = _request(runtime)
    assert request.retry_ct is None and request.actions == []
    assert request.revocations["confirmed_by_operator"] == 1


# -- killed at every step, finished by running it again ------------------------------------

_KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    from writevue_pipelines.privacy import erasure
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    step = sys.argv[1]

    def kill(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    erasure.step_hooks.append(kill)
    runtime = Runtime(Settings.from_env())
    erasure.run_erasure(runtime, sys.argv[2])
    """
)


@pytest.mark.parametrize("step", erasure.STEPS)
def test_an_erasure_killed_at_any_step_is_finished_by_running_it_again(any_runtime, sandbox, step):
    runtime = any_runtime
    made = _client(runtime, sandbox, f"sk_test_killed_at_{step}")
    request_id = request_erasure(runtime, made["tenant"], "dpo")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AT, step, request_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    request = _request(runtime)
    assert request.status != "done", f"killed at {step}, the request must stay open"
    if step in ("deleted", "logs", "bytes", "verified"):
        # The rows went in one step with their staging: nothing readable stays on disk.
        assert not (runtime.settings.staging_dir / made["connections"][0]).exists()
    # The operator's command (or the sensor's run) finishes it and proves it.
    assert cli.main(["tenant", "erase", made["tenant"], "--yes"]) == 0
    _assert_erased(runtime, made)
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(DeletionRequest)) == 1


def test_an_erasure_left_done_but_unverified_by_an_older_version_is_reopened(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, text

    from writevue_pipelines.database import alembic_config

    url = f"sqlite:///{tmp_path / 'w.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0008")
    engine = create_engine(url)
    insert = text(
        "INSERT INTO deletion_requests (id, tenant_id, requested_by, requested_at, status, "
        "removed, revocations, verified) VALUES (:id, :t, 'dpo', '2026-11-01', :s, '{}', '{}', :v)"
    )
    with engine.begin() as conn:
        conn.execute(insert, {"id": "r-killed", "t": "t1", "s": "done", "v": None})
        conn.execute(insert, {"id": "r-proven", "t": "t2", "s": "done", "v": True})
        conn.execute(insert, {"id": "r-found", "t": "t3", "s": "done", "v": False})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM deletion_requests")).all())
    assert rows == {"r-killed": "failed", "r-proven": "done", "r-found": "failed"}
    command.downgrade(config, "0008")
    engine.dispose()


def test_an_erasure_in_progress_survives_a_key_rotation(runtime, sandbox):
    from writevue_pipelines.privacy import retire_key, rotate_keys
    from writevue_pipelines.runtime import Runtime

    made = _client(runtime, sandbox, "sk_test_rotation_in_erasure")
    request_id = request_erasure(runtime, made["tenant"], "dpo")
    erasure.mark_erasing(runtime, request_id)  # then the process died
    old = runtime.keys.primary
    report = rotate_keys(runtime)
    assert report.total_rotated > 0
    fresh = Runtime(runtime.settings)  # a new process, with the new ring
    try:
        retire_key(fresh, old)
        assert run_erasure(fresh, request_id).ok
    finally:
        fresh.close()
    _assert_erased(runtime, made)


def test_a_folder_the_verification_cannot_list_fails_it_and_is_named(runtime, sandbox, monkeypatch):
    made = _client(runtime, sandbox, "sk_test_unlistable_1")
    hidden = runtime.settings.home / "private"
    hidden.mkdir()
    real_scandir = os.scandir

    def scandir(path=".", *args):  # as a folder of mode 000 is for a user other than root
        if isinstance(path, str | os.PathLike) and Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    report = run_erasure(runtime, made["tenant"])
    assert not report.ok
    assert report.verification.unchecked == ["folder private (PermissionError)"]
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert run_erasure(runtime, made["tenant"]).ok


def test_contact_fields_that_cannot_be_decrypted_fail_the_verification(runtime, sandbox):
    from sqlalchemy import update

    from writevue_pipelines.models import Tenant

    made = _client(runtime, sandbox, "sk_test_garbled_0001")
    with runtime.db.session() as session:  # a blob damaged on disk, or under a lost key
        session.execute(
            update(Tenant).where(Tenant.id == made["tenant"]).values(email_ct=b"\x00garbled")
        )
    report = run_erasure(runtime, made["tenant"])
    assert not report.ok
    assert any("name or email" in u for u in report.verification.unchecked)
    assert _request(runtime).status == "failed"
