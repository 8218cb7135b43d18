"""Operators manage links and invites from the command line; tokens are shown once, last."""

from __future__ import annotations

import json
import subprocess
import sys
from secrets import token_hex

from support import (
    CHILD_LOGS,
    OUTPUTS,
    SECRETS,
    add_tenant,
    find_leaks,
    remember_secret,
    run_writevue,
    watch_output,
)

from writevue_pipelines import invites, links, processes
from writevue_pipelines.cli import main


def test_link_create_list_rotate_revoke(runtime, capsys):
    tenant_id = add_tenant(runtime)
    assert main(["link", "create", tenant_id, "--label", "board room", "--expires-in", "30"]) == 0
    created = capsys.readouterr()
    first_url = created.out.strip().splitlines()[-1]
    assert created.out.strip() == first_url  # stdout is the URL alone
    assert first_url.rsplit("/", 1)[1] not in created.err
    assert main(["link", "list", tenant_id, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert set(listed) == {"id", "label", "created_at", "expires_at", "revoked_at", "last_used_at"}
    assert listed["label"] == "board room" and listed["expires_at"] and not listed["revoked_at"]

    assert main(["link", "rotate", listed["id"]]) == 0
    out = capsys.readouterr()
    new_url = remember_secret(out.out.strip().splitlines()[-1])
    assert new_url != first_url and new_url.startswith(runtime.settings.dashboard_base_url + "/d/")
    old_token, new_token = first_url.rsplit("/", 1)[1], new_url.rsplit("/", 1)[1]
    assert out.out.strip() == new_url and new_token not in out.err and old_token not in out.err
    with runtime.db.session() as session:
        assert links.resolve_token(session, old_token) is None
        assert links.resolve_token(session, new_token).id == listed["id"]

    assert main(["link", "revoke", listed["id"]]) == 0
    assert main(["link", "rotate", listed["id"]]) == 2
    refused = capsys.readouterr()
    assert "revoked" in refused.err
    # Nothing any later command prints holds a token: not the old, not the new one.
    for output in (refused.out, refused.err):
        assert new_token not in output and old_token not in output
    assert main(["link", "list", tenant_id]) == 0
    plain = capsys.readouterr()
    assert main(["link", "list", tenant_id, "--json"]) == 0
    as_json = capsys.readouterr()
    assert f"{listed['id']}  revoked" in plain.out and json.loads(as_json.out)[0]["revoked_at"]
    for output in (plain.out, plain.err, as_json.out, as_json.err):
        assert new_token not in output and old_token not in output


def test_connection_invite_prints_the_connect_url_last(runtime, capsys):
    tenant_id = add_tenant(runtime)
    code = main(
        [
            "connection", "invite", tenant_id,
            "--source", "stripe",
            "--option", "stripe.base_url=http://127.0.0.1:9",
            "--expires-in", "2",
        ]
    )  # fmt: skip
    assert code == 0
    url = remember_secret(capsys.readouterr().out.strip().splitlines()[-1])
    assert url.startswith(runtime.settings.dashboard_base_url + "/connect/")
    with runtime.db.session() as session:
        invite = invites.resolve_invite(session, url.rsplit("/", 1)[1])
    assert invite.sources == ["stripe"]
    assert invite.options == {"stripe": {"base_url": "http://127.0.0.1:9"}}
    assert main(["connection", "invite", tenant_id, "--option", "stripe.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


# -- the leak check reads what the suite's children print --------------------------------------


def _read_since(start: int) -> list:
    """The child outputs recorded since ``start``, taken out of the session's record (they
    hold leaks made on purpose)."""
    recorded = OUTPUTS[start:]
    del OUTPUTS[start:]
    return recorded


def test_a_token_a_child_prints_is_a_secret_allowed_only_in_the_stdout_that_made_it(home):
    assert run_writevue(home, "init").returncode == 0
    tenant_id = run_writevue(home, "tenant", "add", "Acme", "--email", "a@acme.test").stdout
    start = len(OUTPUTS)
    created = run_writevue(home, "link", "create", tenant_id.strip())
    assert created.returncode == 0
    url = created.stdout.strip()
    token = url.rsplit("/", 1)[1]
    assert token in SECRETS  # made in the child, registered from its output
    assert not find_leaks(OUTPUTS[start:], SECRETS)  # its own stdout is where it belongs

    start = len(OUTPUTS)
    for stream in ("stdout", "stderr"):  # any later child that prints it leaks it
        printed = f"import sys; print('here:', {url!r}, file=sys.{stream})"
        subprocess.run([sys.executable, "-c", printed], capture_output=True, check=True)
    leaks = find_leaks(_read_since(start), SECRETS)
    assert len(leaks) == 1 and leaks[0].startswith(token[:4]) and "of python -c" in leaks[0]
    for stream in ("stdout", "stderr"):
        printed = f"import sys; print({url!r}, file=sys.{stream})"
        subprocess.run([sys.executable, "-c", printed], capture_output=True, check=True)
        (leak,) = find_leaks(_read_since(len(OUTPUTS) - 2), SECRETS)
        assert f"{stream} of python -c" in leak


def test_a_new_token_a_child_prints_anywhere_but_its_last_line_is_a_leak():
    secrets: set[str] = set()
    outputs: list = []
    made, stray = "A" * 43, "B" * 43
    watch_output(
        "writevue link create",
        f"http://x/d/{stray}\nhttp://x/d/{made}\n",
        f"http://x/connect/{stray}x",
        secrets=secrets,
        outputs=outputs,
    )
    assert {made, stray, stray + "x"} <= secrets
    assert sorted(find_leaks(outputs, secrets)) == sorted(
        [
            "BBBB… (43 chars) appeared in stdout of writevue link create",
            "BBBB… (44 chars) appeared in stderr of writevue link create",
        ]
    )


def test_what_a_spawned_child_writes_is_read_too(tmp_path):
    secret = remember_secret(f"sk_test_{token_hex(12)}")
    start = len(CHILD_LOGS)
    printed = "import sys; print(sys.argv[1][::-1], file=sys.stderr)"  # reversed on the line
    child = processes.spawn("printer", [sys.executable, "-c", printed, secret[::-1]])
    assert child.process.wait(30) == 0
    ((where, path),) = CHILD_LOGS[start:]
    assert "printer" in where and secret in path.read_text()
    assert find_leaks([(where, path.read_text())], SECRETS)
    path.write_text("")  # the leak made on purpose, out of the session's check
