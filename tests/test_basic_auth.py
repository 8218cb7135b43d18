"""HTTP basic connections: the last resort, stored encrypted, advised once, never an argument."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import httpx
import polars as pl
import pytest
from support import (
    add_connection,
    add_tenant,
    fetch_to_staging,
    remember_secret,
    run_cli,
    run_writevue,
)

from writevue_pipelines import refresh, registry
from writevue_pipelines.models import Credential
from writevue_pipelines.sources import SOURCES
from writevue_pipelines.sources.auth import BasicAuth
from writevue_pipelines.sources.base import FetchRequest, FetchResult, Source
from writevue_pipelines.sources.http import get_json
from writevue_sandbox.base import SandboxHandler

PASSWORD = remember_secret("pw_correct horse battery staple")


class BasicProbe(Source):
    """A test connector for a provider that offers nothing better than a password."""

    name = "basic_probe"
    title = "Basic probe"
    description = "Test connector for HTTP basic auth."
    auth_kinds = ("api_key", "basic")
    default_base_url = "https://basic.example.invalid"
    metrics = {"seen": "Seen"}

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        body, _ = await get_json(
            client, "/_basic/whoami", connection_id=request.connection.id, auth=request.auth
        )
        return FetchResult(pl.DataFrame({"user": [body["user"]]}), None, 1, 0.0)

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame(
            {"metric": ["seen"], "dimension": [""], "day": [dt.date.today()], "value": [1.0]}
        )


class BasicWhoAmI(SandboxHandler):
    def get(self) -> None:
        header = self.request.headers.get("Authorization", "")
        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        if password != PASSWORD:
            self.write_json(401, {"message": "bad credentials"})
            return
        self.count("basic.whoami")
        self.write_json(200, {"user": user})


@pytest.fixture
def basic_probe(sandbox, monkeypatch):
    monkeypatch.setitem(SOURCES, BasicProbe.name, BasicProbe())
    sandbox.app.add_handlers(r".*", [(r"/_basic/whoami", BasicWhoAmI)])
    return sandbox


def _counts(runtime) -> tuple[int, int]:
    with runtime.db.session() as session:
        return len(registry.list_connections(session)), session.query(Credential).count()


@pytest.mark.parametrize("via", ["env", "stdin"])
def test_basic_connection_is_stored_encrypted_and_reads_the_source(
    runtime, basic_probe, monkeypatch, capsys, via
):
    tenant_id = add_tenant(runtime)
    args = ["connection", "add", tenant_id, "basic_probe", "--auth", "basic"]
    args += ["--username", "reporting-reader", "--option", f"base_url={basic_probe.url}"]
    if via == "env":
        code, out, err = run_cli(
            monkeypatch, capsys, *args, "--password-env", "WV_PW", env={"WV_PW": PASSWORD}
        )
    else:
        code, out, err = run_cli(monkeypatch, capsys, *args, stdin=PASSWORD + "\n")
    assert code == 0, err
    connection_id = out.strip().splitlines()[-1]
    assert err.count("dedicated read-only account") == 1
    assert PASSWORD not in out + err

    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        assert connection.auth_kind == "basic"
        secrets = registry.get_secrets(session, runtime.keys, connection)
        rows = session.query(Credential).filter_by(connection_id=connection_id).all()
    assert secrets == {"username": "reporting-reader", "password": PASSWORD}
    assert {row.field for row in rows} == {"username", "password"}
    for row in rows:
        assert b"reporting-reader" not in row.ciphertext and PASSWORD.encode() not in row.ciphertext
    auth = BasicProbe().build_auth(connection, secrets)
    assert isinstance(auth, BasicAuth) and PASSWORD not in repr(auth)

    # One read checked the password before it was saved, one refresh read since.
    assert basic_probe.counters["basic.whoami"] == 1
    assert fetch_to_staging(runtime, connection_id).records == 1
    assert basic_probe.counters["basic.whoami"] == 2


def test_a_wrong_password_is_a_clear_error_without_the_password(runtime, basic_probe):
    _, connection_id = add_connection(
        runtime,
        "basic_probe",
        "basic",
        {"base_url": basic_probe.url},
        {"username": "reader", "password": remember_secret("pw_wrong_password_1")},
    )
    results = asyncio.run(refresh.fetch_connections(runtime, [connection_id]))
    message = str(results[connection_id])
    assert "refused the credentials" in message and "pw_wrong" not in message

    refresh.record_failure(runtime, connection_id, results[connection_id])
    with runtime.db.session() as session:
        stored = registry.get_connection(session, connection_id)
    assert stored.status == "needs_reauth"  # retrying would be refused again
    assert stored.last_error.startswith("needs reconnect: ") and "pw_wrong" not in stored.last_error


def test_a_wrong_password_is_refused_before_it_is_saved(runtime, basic_probe, monkeypatch, capsys):
    tenant_id = add_tenant(runtime)
    before = _counts(runtime)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *["connection", "add", tenant_id, "basic_probe", "--auth", "basic"],
        *["--username", "reader", "--option", f"base_url={basic_probe.url}"],
        stdin=remember_secret("pw_wrong_password_2") + "\n",
    )
    assert code != 0 and out == ""
    (line,) = err.strip().splitlines()
    assert line.endswith(
        "Basic probe refused the password (HTTP 401); nothing was saved. "
        "Check the password and its permissions, then run this again."
    ), err
    assert "pw_wrong" not in err
    assert _counts(runtime) == before


@pytest.mark.parametrize(
    ("extra", "stdin", "message"),
    [
        (["--auth", "basic"], PASSWORD, "needs --username"),
        (["--auth", "basic", "--username", "u", "--api-key-env", "X"], "", "--password-env"),
        (["--username", "u"], "key", "are for --auth basic"),
        (["--auth", "basic", "--username", "u"], "\n", "password is empty"),
        (["--auth", "basic", "--username", "u", "--password-env", "WV_UNSET_PW"], "", "not set"),
        (["--auth", "basic", "--username", "u", "--password-env", PASSWORD], "", "not an env"),
        (["--auth", "basic", "--username", "u", "--password", PASSWORD], "", "unrecognized"),
        (["--auth", "oauth2"], "", "invalid choice"),
    ],
)
def test_bad_basic_input_gets_one_line_and_stores_nothing(
    runtime, basic_probe, monkeypatch, capsys, extra, stdin, message
):
    tenant_id = add_tenant(runtime)
    before = _counts(runtime)
    monkeypatch.delenv("WV_UNSET_PW", raising=False)
    code, out, err = run_cli(
        monkeypatch, capsys, "connection", "add", tenant_id, "basic_probe", *extra, stdin=stdin
    )
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert _counts(runtime) == before
    if "--password" not in extra:  # argparse itself echoes what it does not know
        assert PASSWORD not in err


def test_built_in_sources_refuse_basic_auth(tmp_path):
    for name in ("stripe", "github", "ga4"):
        if name in SOURCES:
            assert "basic" not in SOURCES[name].auth_kinds, name
    home = tmp_path / "home"
    assert run_writevue(home, "init").returncode == 0
    tenant = run_writevue(home, "tenant", "add", "Acme", "--email", "a@acme.test").stdout.strip()
    result = run_writevue(
        home,
        "connection",
        "add",
        tenant,
        "stripe",
        "--auth",
        "basic",
        "--username",
        "admin",
        stdin=PASSWORD,
    )
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "takes api_key, not basic" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert run_writevue(home, "connection", "list", "--json").stdout.strip() == "[]"
