"""The `writevue` command line: its contract, and bad input that changes nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from support import run_writevue

from writevue_pipelines import links
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

SECRET = "sk_test_cli_secret_key_0042"


def run(home, *args, stdin: str | None = None, env: dict | None = None, check: bool = True):
    result = run_writevue(home, *args, stdin=stdin or "", env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"writevue {' '.join(args)} failed: {result.stderr}")
    return result


def last_line(result) -> str:
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def cli_home(tmp_path):
    home = tmp_path / "home"
    run(home, "init")
    return home


def _snapshot(home):
    rt = Runtime(Settings.from_env({"WRITEVUE_HOME": str(home)}))
    try:
        with rt.db.engine.connect() as conn:
            return {
                table: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar()  # noqa: S608
                for table in ("tenants", "connections", "credentials", "dashboard_links")
            }
    finally:
        rt.close()


def test_init_is_idempotent(cli_home):
    again = run(cli_home, "init")
    assert "key ring: kept" in again.stdout


def test_the_documented_flow(cli_home):
    tenant = last_line(run(cli_home, "tenant", "add", "Acme Ltd", "--email", "ops@acme.test"))
    listed = json.loads(run(cli_home, "tenant", "list", "--json").stdout)
    assert listed[0]["id"] == tenant and listed[0]["name"] == "Acme Ltd"

    by_stdin = run(
        cli_home,
        "connection",
        "add",
        tenant,
        "stripe",
        "--option",
        "base_url=http://127.0.0.1:9",
        "--no-verify",  # nothing listens there: saved unchecked, as offline
        stdin=SECRET + "\n",
    )
    by_env = run(
        cli_home,
        "connection",
        "add",
        tenant,
        "stripe",
        "--api-key-env",
        "WV_KEY",
        "--no-verify",  # the real Stripe: never called by the tests
        env={"WV_KEY": "rk_test_x"},
    )
    for result in (by_stdin, by_env):
        assert len(last_line(result)) == 36
    assert "restricted key" in by_stdin.stderr and "restricted key" not in by_env.stderr

    url = last_line(run(cli_home, "link", "create", tenant, "--label", "office TV"))
    assert url.startswith("http://127.0.0.1:5006/d/")
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 43
    listed_links = json.loads(run(cli_home, "link", "list", tenant, "--json").stdout)
    assert [item["label"] for item in listed_links] == ["office TV"]
    assert token not in json.dumps(listed_links)
    assert set(listed_links[0]) == {
        "id",
        "label",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    }

    run(cli_home, "link", "revoke", listed_links[0]["id"])
    rt = Runtime(Settings.from_env({"WRITEVUE_HOME": str(cli_home)}))
    with rt.db.session() as session:
        assert links.resolve_token(session, token) is None
    rt.close()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["tenant", "add", "Acme", "--email", "nope"], None, "not an email"),
        (
            ["connection", "add", "00000000-0000-0000-0000-000000000000", "stripe"],
            SECRET,
            "No tenant",
        ),
        (["connection", "add", "TENANT", "nosuchsource"], SECRET, "Unknown source"),
        (["connection", "add", "TENANT", "stripe"], "  \n", "API key is empty"),
        (
            ["connection", "add", "TENANT", "stripe", "--option", "base_url"],
            SECRET,
            "not KEY=VALUE",
        ),
        (
            ["connection", "add", "TENANT", "stripe", "--option", "colour=red"],
            SECRET,
            "no option 'colour'",
        ),
        (
            ["connection", "add", "TENANT", "stripe", "--option", "base_url=ftp://x"],
            SECRET,
            "http(s) URL",
        ),
        (
            ["connection", "add", "TENANT", "stripe", "--api-key-env", "WV_UNSET_VAR"],
            None,
            "not set",
        ),
        (["link", "create", "not-a-uuid"], None, "not a valid id"),
        (["link", "revoke", "00000000-0000-0000-0000-000000000000"], None, "No dashboard link"),
        (["tenant", "frobnicate"], None, "invalid choice"),
        (["tenant", "list", "--password", SECRET], None, "unrecognized arguments"),
    ],
)
def test_bad_input_gets_one_line_and_changes_nothing(cli_home, args, stdin, message):
    tenant = last_line(run(cli_home, "tenant", "add", "Acme", "--email", "a@acme.test"))
    args = [tenant if a == "TENANT" else a for a in args]
    before = _snapshot(cli_home)
    result = run(cli_home, *args, stdin=stdin, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert _snapshot(cli_home) == before


def test_connection_add_checks_the_key_with_the_source_before_saving(cli_home, sandbox):
    tenant = last_line(run(cli_home, "tenant", "add", "Acme", "--email", "a@acme.test"))
    add = ["connection", "add", tenant, "stripe", "--option"]
    before = _snapshot(cli_home)

    refused = run(cli_home, *add, f"base_url={sandbox.url}", stdin="not-a-stripe-key", check=False)
    unreachable = run(cli_home, *add, "base_url=http://127.0.0.1:9", stdin=SECRET, check=False)

    assert refused.returncode != 0 and unreachable.returncode != 0
    assert refused.stderr.strip() == (
        "writevue: error: Stripe refused the key (HTTP 401); nothing was saved. "
        "Check the key and its permissions, then run this again."
    )
    (line,) = unreachable.stderr.strip().splitlines()
    assert line.startswith(
        "writevue: error: Could not check the key with Stripe at http://127.0.0.1:9 (no answer)"
    )
    assert "--no-verify" in line
    assert "refused" not in line
    for result in (refused, unreachable):
        assert "not-a-stripe-key" not in result.stderr and SECRET not in result.stderr
    assert _snapshot(cli_home) == before

    checked = run(cli_home, *add, f"base_url={sandbox.url}", stdin=SECRET)
    offline = run(cli_home, *add, "base_url=http://127.0.0.1:9", "--no-verify", stdin=SECRET)
    assert len(last_line(checked)) == len(last_line(offline)) == 36
    assert _snapshot(cli_home)["connections"] == before["connections"] + 2


def test_commands_before_init_say_what_to_do(tmp_path):
    result = run(tmp_path / "empty", "tenant", "list", check=False)
    assert result.returncode != 0
    assert "writevue init" in result.stderr


def test_no_secret_is_accepted_as_an_argument():
    from writevue_pipelines.cli.app import commands

    registered = commands()
    assert len(registered) >= 24  # every command of every group, from the registry
    flags = {flag for cmd in registered for argument in cmd.args for flag in argument.flags}
    # Flags that would carry a secret itself (naming an environment variable is fine).
    secret = re.compile(r"^--(api-key|password|token|secret|client-secret|key)$")
    assert not [flag for flag in flags if secret.match(flag)]
    assert {"--api-key-env", "--password-env"} <= flags
    sub = subprocess.run(
        [sys.executable, "-m", "writevue_pipelines.cli", "connection", "add", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--api-key-env" in sub and not re.search(r"--api-key(?![-\w])", sub)
