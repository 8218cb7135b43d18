"""The operator's journey as a new operator walks it: what `--help` and the docs say to do
works as written, and every message on the way says what happened and what to do next.

Real peers throughout: a SQLite warehouse under a temporary WRITEVUE_HOME, the sandbox
over HTTP on loopback (its OAuth server and GA4 API), `writevue` in this process or its
own where output streams are the point.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest
from support import (
    add_stripe_connection,
    add_tenant,
    add_tenant_with_facts,
    free_port,
    run_cli,
    run_writevue,
)

from writevue_pipelines import registry
from writevue_pipelines.defs.checks import (
    FRESH,
    KEYS_UNIQUE,
    VALUES_SANE,
    VALUES_USUAL,
    VOLUME_STEADY,
)
from writevue_pipelines.runtime import Runtime

DEMO_KEY = "rk_test_writevue_demo_account"


def _help_field(text: str, label: str) -> str:
    match = re.search(rf"^\s*{label}\s+(\S+)", text, re.MULTILINE)
    assert match, f"`writevue sandbox --help` names no {label}:\n{text}"
    return match.group(1)


def _consent_as_a_browser(authorize_url: str) -> str:
    """Open the consent page, press Allow, and return where the browser is sent next."""
    with httpx.Client(timeout=30) as browser:
        page = browser.get(authorize_url)
        assert page.status_code == 200, page.text
        form = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page.text))
        action = re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1)
        answer = browser.post(
            httpx.URL(authorize_url).join(action), data={**form, "decision": "allow"}
        )
        assert answer.status_code in (302, 303), answer.text
        return answer.headers["location"]


# -- OAuth (GA4) against the sandbox, exactly as documented -----------------------------


def test_ga4_oauth_against_the_sandbox_works_as_its_help_says(
    runtime, sandbox, monkeypatch, capsys, tmp_path
):
    from writevue_sandbox import google_oauth

    # What a new operator reads first: the sandbox's help and `authorize --help`.
    sandbox_help = run_writevue(tmp_path / "other", "sandbox", "--help", timeout=60).stdout
    client_id = _help_field(sandbox_help, "client id")
    client_secret = _help_field(sandbox_help, "client secret")
    property_id = _help_field(sandbox_help, "ga4 property ids")
    property_id = property_id.rstrip(",")
    with pytest.raises(SystemExit):
        run_cli(monkeypatch, capsys, "connection", "authorize", "--help")
    authorize_help = capsys.readouterr().out
    for needed in ("auth_base_url", "WRITEVUE_OAUTH_GA4_CLIENT_ID", "property_id", "complete"):
        assert needed in authorize_help, needed

    nothing_there = f"http://127.0.0.1:{free_port()}"  # no dashboard server answers
    env = {
        "WRITEVUE_OAUTH_GA4_CLIENT_ID": client_id,
        "WRITEVUE_OAUTH_GA4_CLIENT_SECRET": client_secret,
        "WRITEVUE_DASHBOARD_URL": nothing_there,
    }
    tenant_id = add_tenant(runtime, "Northwind Coffee", "ops@northwind.example")
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "connection",
        "authorize",
        tenant_id[:8],
        "ga4",
        "--option",
        f"property_id={property_id}",
        "--option",
        f"base_url={sandbox.url}",
        "--option",
        f"auth_base_url={sandbox.url}",
        env=env,
    )
    assert code == 0, err
    authorize_url = out.strip().splitlines()[-1]
    assert authorize_url.startswith(sandbox.url)
    # It says where the browser goes and what finishes the connection there or here.
    assert f"{nothing_there}/oauth/callback" in err and "connection complete" in err

    callback = _consent_as_a_browser(authorize_url)
    assert callback.startswith(f"{nothing_there}/oauth/callback?")
    code, out, err = run_cli(monkeypatch, capsys, "connection", "complete", stdin=callback)
    assert code == 0, err
    connection_id = out.strip().splitlines()[-1]
    assert "warning" not in err, err
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
    assert (connection.source, connection.status) == ("ga4", "active")

    code, out, err = run_cli(monkeypatch, capsys, "connection", "test", connection_id[:8])
    assert code == 0, err
    assert out.startswith(f"ok: ga4 connection {connection_id} answered ")
    code, out, err = run_cli(monkeypatch, capsys, "refresh", "--tenant", tenant_id[:8])
    assert code == 0, err
    assert "1 of 1 connection refreshed" in out

    # Removing it revokes the grant with WriteVue's OAuth client: without it, one line
    # naming the variables, and nothing changed.
    monkeypatch.delenv("WRITEVUE_OAUTH_GA4_CLIENT_ID")
    code, _, err = run_cli(monkeypatch, capsys, "connection", "remove", connection_id, "--yes")
    assert code == 2
    assert "WRITEVUE_OAUTH_GA4_CLIENT_ID" in err and "Nothing was changed" in err, err
    assert "InvalidInput" not in err
    with runtime.db.session() as session:
        assert registry.get_connection(session, connection_id).status == "active"
    code, out, err = run_cli(
        monkeypatch, capsys, "connection", "remove", connection_id, "--yes", env=env
    )
    assert code == 0, err
    assert "OAuth grant: revoked at the provider" in out
    assert len(google_oauth.revocations(sandbox.app.settings)) == 1


def test_authorize_against_a_moved_api_says_where_the_authorisation_goes(
    runtime, sandbox, monkeypatch, capsys
):
    tenant_id = add_tenant(runtime)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "connection",
        "authorize",
        tenant_id,
        "ga4",
        "--option",
        "property_id=123456789",
        "--option",
        f"base_url={sandbox.url}",
        env={"WRITEVUE_OAUTH_GA4_CLIENT_ID": "x", "WRITEVUE_OAUTH_GA4_CLIENT_SECRET": "y"},
    )
    assert code == 0, err
    assert urlsplit(out.strip()).hostname == "accounts.google.com"
    # base_url moved the API but not the authorisation: the operator is told, with the fix.
    assert "accounts.google.com" in err and f"auth_base_url={sandbox.url}" in err, err


def test_completing_oauth_to_a_property_the_account_cannot_read_marks_it_failing(
    runtime, sandbox, monkeypatch, capsys
):
    env = {
        "WRITEVUE_OAUTH_GA4_CLIENT_ID": "writevue-sandbox",
        "WRITEVUE_OAUTH_GA4_CLIENT_SECRET": "sandbox-client-secret",
        "WRITEVUE_DASHBOARD_URL": f"http://127.0.0.1:{free_port()}",
    }
    tenant_id = add_tenant(runtime)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "connection",
        "authorize",
        tenant_id,
        "ga4",
        "--option",
        "property_id=123456",  # not one of the sandbox account's properties
        "--option",
        f"base_url={sandbox.url}",
        "--option",
        f"auth_base_url={sandbox.url}",
        env=env,
    )
    assert code == 0, err
    callback = _consent_as_a_browser(out.strip())

    code, out, err = run_cli(monkeypatch, capsys, "connection", "complete", stdin=callback)

    assert code == 0, err
    connection_id = out.strip().splitlines()[-1]
    assert "warning:" in err and "403" in err and "connection remove" in err, err
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
    assert connection.status == "failing" and "403" in connection.last_error
    code, out, _ = run_cli(monkeypatch, capsys, "connection", "list", "--tenant", tenant_id)
    assert "failing" in out and "403" in out  # the list shows its last error


# -- the sandbox explains itself ------------------------------------------------------


def test_the_sandbox_help_says_how_to_connect_ga4_to_it(tmp_path):
    from writevue_sandbox import ga4_data, oauth

    text = run_writevue(tmp_path / "home", "sandbox", "--help", timeout=60).stdout

    for property_id in ga4_data.properties_for(oauth.DEFAULT_ACCOUNT):
        assert property_id in text
    assert "auth_base_url" in text and "base_url" in text
    # The Google-shaped consent is a page with Allow; the help does not promise otherwise.
    assert "Allow" in text


# -- commands say what they do, and what was wrong ------------------------------------


def test_every_command_help_starts_with_what_it_does(monkeypatch, capsys):
    from writevue_pipelines.cli import app

    for cmd in app.commands():
        if not cmd.add_help:
            continue  # `writevue sandbox`: the sandbox's own help
        with pytest.raises(SystemExit):
            run_cli(monkeypatch, capsys, *cmd.path, "--help")
        shown = " ".join(capsys.readouterr().out.split())
        assert " ".join(cmd.help.split()) in shown, cmd.name


def test_an_unknown_option_is_named_with_the_commands_help_and_no_value(
    runtime, monkeypatch, capsys
):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "tenant",
        "add",
        "Acme",
        "--email",
        "a@acme.example",
        "--reason",
        "T-1",
        "--api-key=sk_live_do_not_echo",
        "stray_positional_secret",
    )
    assert code == 2
    assert "--reason" in err and "--api-key" in err
    assert "`writevue tenant add --help`" in err
    assert "sk_live_do_not_echo" not in err and "stray_positional_secret" not in err
    assert "T-1" not in err


def test_a_key_that_cannot_be_checked_names_the_api_root_tried(runtime, monkeypatch, capsys):
    tenant_id = add_tenant(runtime)
    nowhere = f"http://127.0.0.1:{free_port()}"

    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "connection",
        "add",
        tenant_id,
        "stripe",
        "--option",
        f"base_url={nowhere}",
        stdin="rk_test_abc\n",
    )

    assert code == 2
    assert nowhere in err and "--no-verify" in err and "rk_test_abc" not in err


def test_refresh_into_one_log_prints_each_connection_once(runtime, sandbox, tmp_path):
    tenant_id = add_tenant(runtime)
    connection_id = add_stripe_connection(runtime, sandbox.url, DEMO_KEY, tenant_id=tenant_id)[1]
    log = tmp_path / "refresh.log"
    environ = {**os.environ, "WRITEVUE_HOME": str(runtime.settings.home)}
    environ.pop("WRITEVUE_DATABASE_URL", None)
    environ.pop("DAGSTER_HOME", None)

    with log.open("w") as out:  # `writevue refresh >> refresh.log 2>&1`, as cron does
        subprocess.run(
            [sys.executable, "-m", "writevue_pipelines.cli", "refresh"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            timeout=300,
            check=True,
        )

    text = log.read_text()
    assert text.count(connection_id) == 1, text
    assert "1 of 1 connection refreshed" in text


def test_key_messages_name_the_versions(runtime, monkeypatch, capsys):
    add_tenant(runtime)
    code, out, err = run_cli(monkeypatch, capsys, "keys", "rotate")
    assert code == 0, err
    assert "`writevue keys retire 1`" in err, err
    code, out, err = run_cli(monkeypatch, capsys, "keys", "retire", "1")
    assert code == 0, err
    assert out.strip() == "retired key version 1; the ring holds key version 2"


def test_no_s_plurals_left_in_connection_and_doctor_messages():
    from pathlib import Path

    cli_dir = Path(__file__).resolve().parents[1] / "writevue_pipelines" / "cli"
    for name in ("connection", "doctor", "inputs", "notify", "goal", "audit"):
        text = (cli_dir / f"{name}.py").read_text().replace("http(s)", "")  # a scheme
        assert not re.search(r"\w\(s\)", text), name


# -- checks: a paused connection is not stale -----------------------------------------


def _facts(days: int):
    import polars as pl

    today = dt.datetime.now(dt.UTC).date()
    rows = [
        ("charges", "", today - dt.timedelta(days=back), 10.0 + back % 3)
        for back in range(1, days + 1)
    ]
    return pl.DataFrame(
        rows,
        orient="row",
        schema={"metric": pl.String, "dimension": pl.String, "day": pl.Date, "value": pl.Float64},
    )


def _evaluate(runtime: Runtime, connection_id: str) -> dict:
    from writevue_pipelines.defs.assets import SOURCE_ASSETS
    from writevue_pipelines.defs.checks import ConnectionState, evaluate
    from writevue_pipelines.sources import SOURCES

    results = evaluate(
        runtime,
        SOURCES["stripe"],
        SOURCE_ASSETS["stripe"].daily_metrics_key,
        {connection_id: ConnectionState(failing=False)},
        {},
    )
    return {e.check_name: e for e in results}


def test_a_paused_connection_passes_fresh_with_a_paused_note(runtime):
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    _, stale = add_tenant_with_facts(runtime, "Stale Ltd", _facts(30), refreshed_at=two_days_ago)
    _, paused = add_tenant_with_facts(runtime, "Paused Ltd", _facts(30), refreshed_at=two_days_ago)
    with runtime.db.session() as session:
        registry.set_paused(session, paused, True)

    assert not _evaluate(runtime, stale)[FRESH].passed  # the same age, not paused: stale
    fresh = _evaluate(runtime, paused)[FRESH]

    assert fresh.passed
    assert "paused" in fresh.description
    assert fresh.metadata["paused"].value is True
    assert fresh.metadata["last_refreshed_at"].value == two_days_ago.isoformat()


def test_passing_checks_say_what_they_found_and_keep_their_severity(runtime):
    _, connection_id = add_tenant_with_facts(runtime, "Steady Ltd", _facts(60))

    by_check = _evaluate(runtime, connection_id)

    assert by_check[KEYS_UNIQUE].passed and by_check[KEYS_UNIQUE].description == (
        "60 facts, no (metric, dimension, day) twice"
    )
    assert by_check[VALUES_SANE].description == "60 facts, all finite, none negative"
    assert by_check[FRESH].description.startswith("refreshed ")
    # The warning checks pass as warnings: the UI shows WARN beside them, as documented.
    for name in (VOLUME_STEADY, VALUES_USUAL):
        assert by_check[name].passed and by_check[name].severity.value == "WARN", name


def test_an_erasure_that_cannot_revoke_for_want_of_the_oauth_client_names_it(
    runtime, monkeypatch, capsys
):
    monkeypatch.delenv("WRITEVUE_OAUTH_GA4_CLIENT_ID", raising=False)
    tenant_id = add_tenant(runtime)
    with runtime.db.session() as session:
        registry.add_connection(
            session,
            runtime.keys,
            tenant_id,
            "ga4",
            "oauth2",
            {"property_id": "347935571", "base_url": "http://127.0.0.1:9"},
            {"access_token": "ya29.journey-access", "refresh_token": "1//journey-refresh"},
        )

    _, out, err = run_cli(monkeypatch, capsys, "tenant", "erase", tenant_id, "--yes")

    assert "WRITEVUE_OAUTH_GA4_CLIENT_ID" in out + err, out + err
    assert "InvalidInput" not in out + err
