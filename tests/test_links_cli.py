"""Operators manage links and invites from the command line; tokens are shown once, last."""

from __future__ import annotations

import json

from support import add_tenant, remember_secret

from writevue_pipelines import invites, links
from writevue_pipelines.cli import main


def test_link_create_list_rotate_revoke(runtime, capsys):
    tenant_id = add_tenant(runtime)
    assert main(["link", "create", tenant_id, "--label", "board room", "--expires-in", "30"]) == 0
    first_url = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["link", "list", tenant_id, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert set(listed) == {"id", "label", "created_at", "expires_at", "revoked_at", "last_used_at"}
    assert listed["label"] == "board room" and listed["expires_at"] and not listed["revoked_at"]

    assert main(["link", "rotate", listed["id"]]) == 0
    out = capsys.readouterr()
    new_url = remember_secret(out.out.strip().splitlines()[-1])
    assert new_url != first_url and new_url.startswith(runtime.settings.dashboard_base_url + "/d/")
    old_token, new_token = first_url.rsplit("/", 1)[1], new_url.rsplit("/", 1)[1]
    with runtime.db.session() as session:
        assert links.resolve_token(session, old_token) is None
        assert links.resolve_token(session, new_token).id == listed["id"]

    assert main(["link", "revoke", listed["id"]]) == 0
    assert main(["link", "rotate", listed["id"]]) == 2
    assert "revoked" in capsys.readouterr().err
    assert main(["link", "list", tenant_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert new_token not in capsys.readouterr().out


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
