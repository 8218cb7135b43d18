"""Keys apart from data: the key ring in a file outside ``WRITEVUE_HOME``
(``WRITEVUE_KEY_FILE``) or in the environment (``WRITEVUE_KEYS``), the same ring in every
process, and nothing of it under the home."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
from pathlib import Path

import httpx
import pytest
from support import (
    add_stripe_connection,
    new_stripe_key,
    remember_secret,
    run_cli,
    run_writevue,
    start_dashboard_server,
)

from writevue_pipelines import links
from writevue_pipelines.home import init_home
from writevue_pipelines.privacy.keys import count_by_version
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings
from writevue_pipelines.vault import KeyRing, load_key_ring


def _ring_material(ring_json: str) -> list[bytes]:
    """Every key of a ring as it could sit in a file: base64 text and raw bytes."""
    found = []
    for text in json.loads(ring_json)["keys"].values():
        remember_secret(text)
        found += [text.encode(), base64.b64decode(text)]
    return found


def _assert_no_key_material_under(folder: Path, ring_json: str) -> None:
    material = _ring_material(ring_json)
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files  # the warehouse at least: the search looked at something
    for path in files:
        data = path.read_bytes()
        for piece in material:
            assert piece not in data, f"key material in {path.relative_to(folder)}"
    assert not list(folder.rglob("keys.json"))


@pytest.fixture
def outside_key_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "secrets" / "writevue" / "keys.json"
    monkeypatch.setenv("WRITEVUE_KEY_FILE", str(path))
    return path


@pytest.fixture
def env_ring(monkeypatch) -> str:
    ring_json = KeyRing.generate().to_json()
    _ring_material(ring_json)  # watched by the suite's leak net
    monkeypatch.setenv("WRITEVUE_KEYS", ring_json)
    return ring_json


def _served_tenant_name(home: Path, log: Path, env: dict[str, str], runtime: Runtime, tenant):
    """The tenant name a separate dashboard process decrypts for the tenant's link."""
    with runtime.db.session() as session:
        _link, token = links.create_link(session, tenant)
    server, base = start_dashboard_server(home, log, **env)
    try:
        today = dt.date.today()
        week = f"from={today - dt.timedelta(days=6)}&to={today}"
        response = httpx.get(f"{base}/d/{token}?format=json&{week}", timeout=30)
    finally:
        server.stop()
    assert response.status_code == 200, response.text[:300]
    return response.json()["tenant"]


def _check_other_processes_decrypt(home, tmp_path, sandbox, runtime, env) -> None:
    tenant, _connection = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name="Keys Apart Ltd"
    )
    # `writevue refresh` in its own process decrypts the Stripe key and fetches with it.
    result = run_writevue(home, "refresh", env=env)
    assert result.returncode == 0, result.stderr
    assert "1 of 1" not in result.stderr
    assert _served_tenant_name(home, tmp_path / "serve.log", env, runtime, tenant) == (
        "Keys Apart Ltd"
    )


def test_init_writes_the_key_file_outside_the_home_private(tmp_path, outside_key_file):
    home = tmp_path / "home"
    result = run_writevue(home, "init", env={"WRITEVUE_KEY_FILE": str(outside_key_file)})
    assert result.returncode == 0, result.stderr
    assert f"key ring: created at {outside_key_file}" in result.stdout
    assert stat.S_IMODE(outside_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(outside_key_file.parent.stat().st_mode) == 0o700
    assert load_key_ring(outside_key_file).versions == [1]
    _assert_no_key_material_under(home, outside_key_file.read_text())


def test_credentials_sealed_with_an_outside_key_file_decrypt_in_other_processes(
    home, tmp_path, outside_key_file, sandbox
):
    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    try:
        env = {"WRITEVUE_KEY_FILE": str(outside_key_file)}
        _check_other_processes_decrypt(home, tmp_path, sandbox, runtime, env)
        # A rotation rewrites the outside file, never one under the home.
        result = run_writevue(home, "keys", "rotate", env=env)
        assert result.returncode == 0, result.stderr
        assert load_key_ring(outside_key_file).versions == [2, 1]
        assert set(count_by_version(runtime)) == {2}
        _assert_no_key_material_under(home, outside_key_file.read_text())
    finally:
        runtime.close()


def test_a_ring_from_the_environment_serves_every_process_and_is_never_written(
    home, tmp_path, env_ring, sandbox
):
    settings = Settings.from_env()
    report = init_home(settings)
    assert not report.key_file_created
    runtime = Runtime(settings)
    try:
        _check_other_processes_decrypt(
            home, tmp_path, sandbox, runtime, {"WRITEVUE_KEYS": env_ring}
        )
        _assert_no_key_material_under(home, env_ring)
    finally:
        runtime.close()


@pytest.mark.parametrize("action", [["keys", "rotate"], ["keys", "retire", "1"]])
def test_an_environment_ring_refuses_rotation_and_says_what_to_do(
    home, env_ring, monkeypatch, capsys, action
):
    runtime = Runtime(Settings.from_env())
    init_home(runtime.settings)
    add_stripe_connection(runtime, "http://127.0.0.1:9", new_stripe_key())
    before = count_by_version(runtime)
    code, out, err = run_cli(monkeypatch, capsys, *action)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1
    assert "WRITEVUE_KEYS" in err and "cannot" in err and "WRITEVUE_KEY_FILE" in err
    assert count_by_version(runtime) == before == {1: before[1]}
    assert not list(home.rglob("keys.json"))
    runtime.close()


def test_init_says_where_an_environment_ring_comes_from(home, env_ring, monkeypatch, capsys):
    code, out, _err = run_cli(monkeypatch, capsys, "init")
    assert code == 0
    assert "key ring: from WRITEVUE_KEYS (not written to disk)" in out
    assert not list(home.rglob("keys.json"))


@pytest.mark.parametrize(
    "text",
    [
        "not json at all, maybe a pasted secret",
        '{"primary": 2, "keys": {"1": "c2VjcmV0LXNob3J0"}}',
        '{"primary": 1, "keys": {"1": "c2VjcmV0LXNob3J0"}}',
    ],
)
def test_a_bad_environment_ring_is_one_line_that_echoes_nothing(home, monkeypatch, capsys, text):
    code, _out, err = run_cli(monkeypatch, capsys, "init", env={"WRITEVUE_KEYS": text})
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "WRITEVUE_KEYS" in err
    for piece in ("pasted", "c2VjcmV0"):
        assert piece not in err


def test_a_key_file_and_an_environment_ring_together_are_refused(
    home, outside_key_file, env_ring, monkeypatch, capsys
):
    code, _out, err = run_cli(monkeypatch, capsys, "init")
    assert code == 2
    assert "WRITEVUE_KEY_FILE or WRITEVUE_KEYS, not both" in err
    assert not outside_key_file.exists()
