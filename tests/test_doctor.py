"""`writevue doctor`: each check passes on a sound deployment and fails, with what to do,
on a broken one; exit 1 only when something must be fixed; `--json`; no secret shown.

Everything is real: SQLite files, the PostgreSQL server, Dagster instances and a running
`dagster-daemon`, an SMTP server, files with the wrong permissions."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from support import (
    add_connection,
    add_tenant,
    deploy_dagster_home,
    new_stripe_key,
    remember_secret,
    run_cli,
    run_writevue,
    start_smtp_server,
)

from writevue_pipelines.database import alembic_config
from writevue_pipelines.home import init_home
from writevue_pipelines.notifications import config as notify_config
from writevue_pipelines.processes import free_port, spawn, wait_until
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings
from writevue_pipelines.vault import KeyRing

STATUSES = {"ok", "warn", "fail"}
CHECKS = [
    "environment",
    "key_ring",
    "session_secret",
    "database",
    "dagster_instance",
    "dagster_daemon",
    "sandbox_connections",
    "dashboard_url",
    "smtp",
    "disk",
]


def doctor(monkeypatch, capsys, **env: str) -> tuple[int, dict[str, dict], dict]:
    """`writevue doctor --json` in this process: (exit code, checks by name, the report)."""
    code, out, err = run_cli(monkeypatch, capsys, "doctor", "--json", env=env)
    assert not err, err
    report = json.loads(out)
    return code, {c["check"]: c for c in report["checks"]}, report


def assert_fix(check: dict, *words: str) -> None:
    assert check["status"] in ("warn", "fail")
    assert check["fix"], check
    for word in words:
        assert word in check["fix"], (word, check)


@pytest.fixture
def home_ready(home) -> Path:
    init_home(Settings.from_env())
    return home


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder apart from the home, as production keeps its secrets (0700)."""
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700)
    return folder


def production_keys(monkeypatch, outside: Path) -> None:
    """Production, with the key ring and the session secret apart from the data."""
    monkeypatch.setenv("WRITEVUE_ENV", "production")
    monkeypatch.setenv("WRITEVUE_KEY_FILE", str(outside / "keys.json"))
    monkeypatch.setenv("WRITEVUE_SESSION_SECRET_FILE", str(outside / "session-secret"))
    monkeypatch.setenv("WRITEVUE_DASHBOARD_URL", "https://dash.agency.example")


# -- the report's shape and exit codes ----------------------------------------------------------


def test_a_fresh_development_home_has_nothing_to_fix(home_ready, monkeypatch, capsys):
    code, checks, report = doctor(monkeypatch, capsys)
    assert code == 0
    assert list(checks) == CHECKS
    assert report["production"] is False
    assert report["status"] in ("ok", "warn")
    for check in report["checks"]:
        assert set(check) == {"check", "status", "summary", "fix"}
        assert check["status"] in STATUSES
        assert check["summary"]
        assert (check["fix"] is None) == (check["status"] == "ok"), check
    for name in ("key_ring", "session_secret", "database", "dagster_instance", "smtp", "disk"):
        assert checks[name]["status"] == "ok", checks[name]
    # No daemon runs here: in development a warning, since `writevue refresh` still works.
    assert checks["dagster_daemon"]["status"] == "warn"
    assert_fix(checks["dagster_daemon"], "dagster-daemon run")


def test_the_text_report_and_exit_code_from_a_shell(tmp_path):
    home = tmp_path / "home"
    assert run_writevue(home, "init").returncode == 0
    good = run_writevue(home, "doctor")
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert lines[0].startswith("writevue doctor: development")
    assert any(line.startswith("ok    key ring") for line in lines)
    assert any(line.startswith("warn  dagster daemon") for line in lines)
    assert lines[-1].endswith("nothing must be fixed")
    (home / "keys.json").chmod(0o644)
    bad = run_writevue(home, "doctor")
    assert bad.returncode == 1
    assert any(line.startswith("FAIL  key ring") for line in bad.stdout.splitlines())
    assert f"fix: chmod 600 {home / 'keys.json'}" in bad.stdout
    assert bad.stdout.splitlines()[-1].endswith("1 must be fixed")


def test_doctor_is_registered_with_an_example_and_no_audit():
    from writevue_pipelines.cli.app import commands

    (cmd,) = [c for c in commands() if c.name == "doctor"]
    assert cmd.audit is False
    assert cmd.example and "writevue doctor --json" in cmd.example


def test_a_setting_that_cannot_be_read_is_a_failed_check(home_ready, monkeypatch, capsys):
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_ENV="staging")
    assert code == 1
    assert checks["environment"]["status"] == "fail"
    assert "WRITEVUE_ENV" in checks["environment"]["summary"]


# -- key ring and session secret ----------------------------------------------------------------


def test_a_key_file_readable_by_others_fails(home_ready, monkeypatch, capsys):
    key_file = home_ready / "keys.json"
    key_file.chmod(0o640)
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1
    assert checks["key_ring"]["status"] == "fail"
    assert_fix(checks["key_ring"], f"chmod 600 {key_file}")


def test_a_missing_or_broken_key_file_fails(home_ready, monkeypatch, capsys, outside):
    missing = outside / "nowhere.json"
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_KEY_FILE=str(missing))
    assert code == 1 and checks["key_ring"]["status"] == "fail"
    assert str(missing) in checks["key_ring"]["summary"]
    assert_fix(checks["key_ring"], "WRITEVUE_KEY_FILE")
    broken = outside / "broken.json"
    broken.write_text('{"primary": 1, "keys": {}}')
    broken.chmod(0o600)
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_KEY_FILE=str(broken))
    assert code == 1 and checks["key_ring"]["status"] == "fail"
    assert "not a valid key ring" in checks["key_ring"]["summary"]


def test_a_key_folder_open_to_others_is_a_warning(home_ready, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    key_file = folder / "keys.json"
    key_file.write_text((home_ready / "keys.json").read_text())
    key_file.chmod(0o600)
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_KEY_FILE=str(key_file))
    assert code == 0
    assert checks["key_ring"]["status"] == "warn"
    assert_fix(checks["key_ring"], f"chmod 700 {folder}")


def test_in_production_a_key_ring_beside_the_data_fails(home_ready, monkeypatch, capsys):
    monkeypatch.setenv("WRITEVUE_ENV", "production")
    code, checks, report = doctor(monkeypatch, capsys)
    assert code == 1 and report["production"] is True
    for name in ("key_ring", "session_secret"):
        assert checks[name]["status"] == "fail", checks[name]
        assert "beside the data" in checks[name]["summary"]
    assert_fix(checks["key_ring"], "WRITEVUE_KEY_FILE", "outside")
    assert_fix(checks["session_secret"], "WRITEVUE_SESSION_SECRET_FILE")


def test_in_production_a_key_file_beside_a_sqlite_warehouse_outside_the_home_fails(
    home_ready, monkeypatch, capsys, tmp_path, outside
):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (home_ready / "warehouse.db").rename(data / "warehouse.db")
    production_keys(monkeypatch, outside)
    monkeypatch.setenv("WRITEVUE_DATABASE_URL", f"sqlite:///{data / 'warehouse.db'}")
    monkeypatch.setenv("WRITEVUE_KEY_FILE", str(data / "keys" / "keys.json"))
    init_home(Settings.from_env())
    code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["key_ring"]["status"] == "fail"
    assert "beside the data" in checks["key_ring"]["summary"]
    assert code == 1


def test_in_production_keys_apart_from_the_data_pass(home_ready, monkeypatch, capsys, outside):
    production_keys(monkeypatch, outside)
    init_home(Settings.from_env())
    _code, checks, report = doctor(monkeypatch, capsys)
    assert report["production"] is True
    assert checks["key_ring"]["status"] == "ok", checks["key_ring"]
    assert checks["session_secret"]["status"] == "ok", checks["session_secret"]
    assert checks["dashboard_url"]["status"] == "ok"


def test_a_key_ring_from_the_environment_passes_and_a_bad_one_fails(
    home_ready, monkeypatch, capsys
):
    ring = KeyRing.generate().to_json()
    for key in json.loads(ring)["keys"].values():
        remember_secret(key)
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_KEYS=ring)
    assert checks["key_ring"]["status"] == "ok"
    assert "WRITEVUE_KEYS" in checks["key_ring"]["summary"]
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_KEYS="[1, 2, 3]")
    assert code == 1 and checks["key_ring"]["status"] == "fail"
    assert "WRITEVUE_KEYS" in checks["key_ring"]["summary"]


def test_a_session_secret_readable_by_others_fails(home_ready, monkeypatch, capsys):
    (home_ready / "session-secret").chmod(0o604)
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["session_secret"]["status"] == "fail"
    assert_fix(checks["session_secret"], "chmod 600")


# -- the database -------------------------------------------------------------------------------


def test_a_missing_sqlite_warehouse_fails_and_is_not_created(home_ready, monkeypatch, capsys):
    (home_ready / "warehouse.db").unlink()
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["database"]["status"] == "fail"
    assert_fix(checks["database"], "writevue init")
    assert not (home_ready / "warehouse.db").exists()


def test_postgres_at_head_passes_and_its_password_is_masked(
    home_ready, monkeypatch, capsys, postgres_url
):
    password = remember_secret(f"pw-{os.urandom(6).hex()}")  # trust auth ignores it
    url = postgres_url.replace("://postgres@", f"://postgres:{quote(password)}@")
    assert password in url
    monkeypatch.setenv("WRITEVUE_DATABASE_URL", url)
    init_home(Settings.from_env())
    _code, out, _err = run_cli(monkeypatch, capsys, "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert checks["database"]["status"] == "ok", checks["database"]
    assert "postgres:***@" in checks["database"]["summary"]
    assert "at the newest migration" in checks["database"]["summary"]
    assert password not in out
    _code, text, _err = run_cli(monkeypatch, capsys, "doctor")
    assert password not in text


def test_an_unmigrated_or_outdated_postgres_fails(home_ready, monkeypatch, capsys, postgres_url):
    from alembic import command
    from alembic.script import ScriptDirectory

    monkeypatch.setenv("WRITEVUE_DATABASE_URL", postgres_url)
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["database"]["status"] == "fail"
    assert "no schema" in checks["database"]["summary"]
    assert_fix(checks["database"], "writevue init")

    cfg = alembic_config(postgres_url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    command.upgrade(cfg, "0011")
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["database"]["status"] == "fail"
    summary = checks["database"]["summary"]
    assert "0011" in summary and head in summary
    command.upgrade(cfg, "head")
    _code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["database"]["status"] == "ok"


def test_an_unreachable_postgres_fails_without_its_password(home_ready, monkeypatch, capsys):
    password = remember_secret(f"pw-{os.urandom(6).hex()}")
    url = f"postgresql://writevue:{password}@127.0.0.1:{free_port()}/writevue"
    code, out, _err = run_cli(
        monkeypatch, capsys, "doctor", "--json", env={"WRITEVUE_DATABASE_URL": url}
    )
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and checks["database"]["status"] == "fail"
    assert "cannot connect" in checks["database"]["summary"]
    assert password not in out


# -- Dagster ------------------------------------------------------------------------------------


def test_a_missing_dagster_instance_fails(home_ready, monkeypatch, capsys):
    (home_ready / "dagster" / "dagster.yaml").unlink()
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["dagster_instance"]["status"] == "fail"
    assert_fix(checks["dagster_instance"], "deploy/dagster.yaml")


def test_unreachable_dagster_storage_fails_without_its_password(
    home_ready, monkeypatch, capsys, tmp_path, postgres_url
):
    deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster-home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster-home"))
    code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["dagster_instance"]["status"] == "ok", checks["dagster_instance"]
    assert "PostgreSQL" in checks["dagster_instance"]["summary"]
    password = remember_secret(f"pw-{os.urandom(6).hex()}")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", password)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(free_port()))
    code, out, _err = run_cli(monkeypatch, capsys, "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert code == 1 and checks["dagster_instance"]["status"] == "fail"
    assert password not in out


def test_in_production_dagster_on_sqlite_is_a_warning(home_ready, monkeypatch, capsys, outside):
    production_keys(monkeypatch, outside)
    init_home(Settings.from_env())
    _code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["dagster_instance"]["status"] == "warn"
    assert_fix(checks["dagster_instance"], "deploy/dagster.yaml")


@pytest.fixture
def daemon(home_ready, tmp_path):
    """A real `dagster-daemon run` on the home's instance, once every daemon heartbeats."""
    from dagster import DagsterInstance

    defs = tmp_path / "empty_defs.py"
    defs.write_text("import dagster as dg\n\ndefs = dg.Definitions()\n")
    dagster_home = home_ready / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    executable = Path(sys.executable).with_name("dagster-daemon")
    child = spawn(
        "dagster-daemon", [str(executable), "run", "-f", str(defs)], env=env, cwd=tmp_path
    )

    def heartbeating() -> bool:
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            beats = instance.get_daemon_heartbeats()
            return set(instance.get_required_daemon_types()) <= set(beats)

    try:
        wait_until(heartbeating, timeout=90, what="dagster-daemon heartbeats", child=child)
        yield child
    finally:
        child.stop()


def test_a_heartbeating_daemon_passes_and_a_silent_one_fails(
    home_ready, daemon, monkeypatch, capsys
):
    from writevue_pipelines.cli.doctor import check_dagster_daemon

    _code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["dagster_daemon"]["status"] == "ok", checks["dagster_daemon"]
    settings = Settings.from_env()
    # The same heartbeats, judged ten minutes on: the daemon has stopped.
    later = check_dagster_daemon(settings, now=time.time() + 600)
    assert later.status == "warn" and "ago" in later.summary
    production = Settings.from_env({**os.environ, "WRITEVUE_ENV": "production"})
    later = check_dagster_daemon(production, now=time.time() + 600)
    assert later.status == "fail"
    assert "dagster-daemon run" in later.fix


def test_in_production_no_daemon_fails(home_ready, monkeypatch, capsys, outside):
    production_keys(monkeypatch, outside)
    init_home(Settings.from_env())
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["dagster_daemon"]["status"] == "fail"
    assert "no heartbeat" in checks["dagster_daemon"]["summary"]


# -- connections on the sandbox, the dashboard URL ----------------------------------------------


def test_connections_on_the_sandbox_are_named_and_fail_in_production(
    home_ready, monkeypatch, capsys, outside
):
    runtime = Runtime(Settings.from_env())
    try:
        tenant, real = add_connection(
            runtime, "stripe", "api_key", {}, {"api_key": new_stripe_key()}
        )
        _, local = add_connection(
            runtime,
            "stripe",
            "api_key",
            {"base_url": "http://127.0.0.1:8765"},
            {"api_key": new_stripe_key()},
            tenant_id=tenant,
        )
    finally:
        runtime.close()
    _code, checks, _ = doctor(monkeypatch, capsys)
    sandbox = checks["sandbox_connections"]
    assert sandbox["status"] == "ok"  # development: the demo's own
    assert local in sandbox["summary"] and real not in sandbox["summary"]
    assert "http://127.0.0.1:8765" in sandbox["summary"]
    production_keys(monkeypatch, outside)
    code, checks, _ = doctor(monkeypatch, capsys)
    sandbox = checks["sandbox_connections"]
    assert code == 1 and sandbox["status"] == "fail"
    assert local in sandbox["summary"]
    assert_fix(sandbox, "connection remove")


def test_no_sandbox_connection_passes(home_ready, monkeypatch, capsys):
    _code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["sandbox_connections"]["status"] == "ok"
    assert "none" in checks["sandbox_connections"]["summary"]


def test_in_production_the_dashboard_url_must_be_https(home_ready, monkeypatch, capsys, outside):
    production_keys(monkeypatch, outside)
    code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_DASHBOARD_URL="http://dash.example")
    assert code == 1 and checks["dashboard_url"]["status"] == "fail"
    assert_fix(checks["dashboard_url"], "https://")
    _code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_DASHBOARD_URL="https://dash.example")
    assert checks["dashboard_url"]["status"] == "ok"


def test_production_is_inferred_from_postgres_or_https(home_ready, monkeypatch, capsys):
    _code, checks, report = doctor(monkeypatch, capsys, WRITEVUE_DASHBOARD_URL="https://d.example")
    assert report["production"] is True
    assert "https" in checks["environment"]["summary"]
    _code, checks, report = doctor(
        monkeypatch, capsys, WRITEVUE_ENV="development", WRITEVUE_DASHBOARD_URL="https://d.example"
    )
    assert report["production"] is False


# -- SMTP ---------------------------------------------------------------------------------------


def test_smtp_is_checked_by_a_greeting_and_no_mail(home_ready, monkeypatch, capsys, tmp_path):
    password = remember_secret(f"pw-{os.urandom(6).hex()}")
    with start_smtp_server(tmp_path / "smtp", tls="starttls", user="wv", password=password) as peer:
        _code, out, _err = run_cli(
            monkeypatch,
            capsys,
            "doctor",
            "--json",
            env={
                "WRITEVUE_SMTP_URL": peer.url,
                "WRITEVUE_SMTP_USER": "wv",
                "WRITEVUE_SMTP_PASSWORD": password,
                "WRITEVUE_SMTP_CA_FILE": str(peer.ca_file),
            },
        )
        checks = {c["check"]: c for c in json.loads(out)["checks"]}
        assert checks["smtp"]["status"] == "ok", checks["smtp"]
        assert "logged in" in checks["smtp"]["summary"]
        assert password not in out
        assert peer.messages == []
        # A wrong password: the server refuses the login.
        _code, checks, _ = doctor(monkeypatch, capsys, WRITEVUE_SMTP_PASSWORD="wrong-password")
        assert checks["smtp"]["status"] == "fail"
        assert "smtp 535" in checks["smtp"]["summary"]


def test_an_unreachable_smtp_server_fails(home_ready, monkeypatch, capsys):
    code, checks, _ = doctor(
        monkeypatch, capsys, WRITEVUE_SMTP_URL=f"smtp://127.0.0.1:{free_port()}"
    )
    assert code == 1 and checks["smtp"]["status"] == "fail"
    assert "refused" in checks["smtp"]["summary"]
    assert_fix(checks["smtp"], "WRITEVUE_SMTP_URL")


def test_email_notifications_without_smtp_fail(home_ready, monkeypatch, capsys):
    runtime = Runtime(Settings.from_env())
    try:
        tenant = add_tenant(runtime)
        with runtime.db.session() as session:
            notify_config.add_alert(
                session,
                runtime.keys,
                tenant,
                metric="stripe.charges",
                condition="below",
                threshold=10,
                emails=["ana@client.test"],
            )
    finally:
        runtime.close()
    code, checks, _ = doctor(monkeypatch, capsys)
    assert code == 1 and checks["smtp"]["status"] == "fail"
    assert "1 email recipient" in checks["smtp"]["summary"]
    assert_fix(checks["smtp"], "WRITEVUE_SMTP_URL")


def test_no_notifications_and_no_smtp_need_nothing(home_ready, monkeypatch, capsys):
    _code, checks, _ = doctor(monkeypatch, capsys)
    assert checks["smtp"]["status"] == "ok"
    assert "not needed" in checks["smtp"]["summary"]


# -- disk space ---------------------------------------------------------------------------------


def test_disk_space_is_judged_by_free_bytes_and_share(home_ready):
    from writevue_pipelines.cli.doctor import GB, MB, judge_disk

    real = judge_disk(home_ready, *_usage(home_ready))
    assert real.status == "ok" and str(home_ready) in real.summary
    assert judge_disk(home_ready, 150 * MB, 100 * GB).status == "fail"
    assert judge_disk(home_ready, 800 * MB, 4 * GB).status == "warn"  # under 1 GB
    assert judge_disk(home_ready, 5 * GB, 100 * GB).status == "warn"  # under 10%
    assert judge_disk(home_ready, 20 * GB, 100 * GB).status == "ok"
    assert_fix(judge_disk(home_ready, 150 * MB, 100 * GB).as_dict(), "free")


def _usage(path: Path) -> tuple[int, int]:
    import shutil

    usage = shutil.disk_usage(path)
    return usage.free, usage.total
