"""The production layout (deploy/) started and checked on this machine, and what it needs
of the dashboard server: the client's address from the proxy in front, and only from it.

The whole check (``make production-check``: PostgreSQL, the code server, the webserver,
one daemon, two dashboard processes, nginx with TLS) takes minutes, so it carries the
``production`` marker and runs where CI runs it (.ci/run, ``make production-check``), not in
the quick suite; run it here with ``-m production``.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import home_runtime, remember_secret, start_dashboard_server

from writevue_devtools import production_check
from writevue_pipelines.settings import ConfigError, Settings

REPO = Path(__file__).resolve().parents[1]
BAD_TOKEN = "x" * 43


def _guess(base: str, client: str) -> int:
    """One wrong token from ``client``, as nginx forwards it; the status."""
    headers = {"X-Forwarded-For": client, "X-Real-IP": client}
    return httpx.get(f"{base}/d/{BAD_TOKEN}", headers=headers, timeout=30).status_code


def test_trusted_proxies_are_addresses_or_networks():
    settings = Settings.from_env({"WRITEVUE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    assert [str(net) for net in settings.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert Settings.from_env({}).trusted_proxies == ()
    with pytest.raises(ConfigError, match="WRITEVUE_TRUSTED_PROXIES"):
        Settings.from_env({"WRITEVUE_TRUSTED_PROXIES": "nginx.internal"})


def test_the_settings_never_show_a_database_password():
    """WRITEVUE_DATABASE_URL may carry the password (a secrets file's way): a repr of the
    settings (a log line, a traceback's locals) must not show it."""
    password = remember_secret(f"pw-{secrets.token_hex(12)}")
    settings = Settings.from_env(
        {
            "WRITEVUE_DATABASE_URL": f"postgresql://writevue:{password}@db.internal/writevue",
            "WRITEVUE_DAGSTER_DATABASE_URL": f"postgresql://dagster:{password}@db.internal/d",
            "WRITEVUE_CELERY_BROKER": f"pyamqp://writevue:{password}@mq.internal//",
            "WRITEVUE_SMTP_PASSWORD": password,
        }
    )
    assert settings.database_url.endswith("@db.internal/writevue")  # it is still there
    assert password not in repr(settings) and password not in str(settings)


def test_the_client_is_the_right_most_address_no_trusted_proxy_added():
    from tornado.httputil import HTTPHeaders

    from dashboard_server.client_address import client_address

    trusted = Settings.from_env({"WRITEVUE_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"})
    nets = trusted.trusted_proxies

    def seen(peer: str, **headers: str) -> str | None:
        names = {"xff": "X-Forwarded-For", "real": "X-Real-IP"}
        return client_address(peer, HTTPHeaders({names[k]: v for k, v in headers.items()}), nets)

    # what the client wrote itself (left) is not believed; what the proxies added is
    assert seen("127.0.0.1", xff="1.2.3.4, 203.0.113.7") == "203.0.113.7"
    assert seen("127.0.0.1", xff="1.2.3.4, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert seen("127.0.0.1", real="203.0.113.8") == "203.0.113.8"
    # not from a trusted proxy: the headers mean nothing
    assert seen("198.51.100.1", xff="203.0.113.7", real="203.0.113.7") == "198.51.100.1"
    # garbage in the chain: counted under the proxy, never under a made-up name
    assert seen("127.0.0.1", xff="203.0.113.7, not-an-address") == "127.0.0.1"


@pytest.mark.parametrize("trusted", [True, False], ids=["behind-trusted-proxy", "untrusted"])
def test_guessing_is_counted_per_client_only_behind_a_trusted_proxy(tmp_path, trusted):
    """Behind nginx every request comes from nginx's address: the limiter must count the
    client nginx names, or one guesser would lock every client out. A request from an
    address not listed is counted under its own address, whatever headers it sends."""
    runtime = home_runtime(tmp_path)
    env = {"WRITEVUE_GUESS_LIMIT": "2"}
    if trusted:
        env["WRITEVUE_TRUSTED_PROXIES"] = "127.0.0.1"
    server, base = start_dashboard_server(runtime.settings.home, tmp_path / "serve.log", **env)
    try:
        guesser = [_guess(base, "203.0.113.7") for _ in range(3)]
        assert guesser == [404, 404, 429]
        # another client behind the same proxy is not the guesser, if the proxy is trusted
        assert _guess(base, "198.51.100.9") == (404 if trusted else 429)
    finally:
        server.stop()
    log = (tmp_path / "serve.log").read_text()
    # the server's request log names the client (truncated), never the proxy, when trusted
    assert ("203.0.113.0" in log) is trusted


@pytest.mark.production
def test_production_layout_runs_end_to_end(tmp_path, request):
    """``make production-check``: every step passes and everything it started is gone."""
    if "production" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("minutes long: make production-check (and CI) runs it, or -m production")
    result = subprocess.run(
        [sys.executable, "-m", "writevue_devtools.production_check", "--keep-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"^PASS ", result.stdout, re.M), output[-3000:]
    assert "nginx never logged a link token" in result.stdout


def test_the_check_renders_the_nginx_template_with_every_placeholder_filled(tmp_path):
    rendered = production_check.render_nginx(
        REPO / "deploy" / "nginx.conf",
        listen=8443,
        server_name="dash.example.test",
        cert=tmp_path / "cert.pem",
        key=tmp_path / "key.pem",
        upstreams=["127.0.0.1:5006", "127.0.0.1:5007"],
    )
    assert "${" not in rendered
    assert "server 127.0.0.1:5006;" in rendered and "server 127.0.0.1:5007;" in rendered
    # nginx's own variables are left alone
    assert "$proxy_add_x_forwarded_for" in rendered and "$remote_addr" in rendered


def test_the_refresh_worker_unit_starts_the_celery_app_on_the_queue_of_the_settings():
    """deploy/systemd/writevue-refresh-worker@.service as systemd runs it: its defaults
    (Environment=) unless the environment file says otherwise, the app module that exists.
    (tests/test_scaleout.py starts real workers with this very command.)"""
    import importlib.util
    import socket

    argv = production_check.unit_command("writevue-refresh-worker@.service", {}, instance="7")
    assert Path(argv[0]).name == "celery" and Path(argv[0]).parent == Path(sys.executable).parent
    app = argv[argv.index("-A") + 1]
    assert importlib.util.find_spec(app) is not None
    assert argv[argv.index("-Q") + 1] == "writevue"  # the unit's default
    assert argv[argv.index("--concurrency") + 1] == "2"
    assert argv[argv.index("-n") + 1] == f"refresh-7@{socket.gethostname()}"
    chosen = production_check.unit_command(
        "writevue-refresh-worker@.service", {"WRITEVUE_CELERY_QUEUE": "refresh-eu"}, instance="7"
    )
    assert chosen[chosen.index("-Q") + 1] == "refresh-eu"
    # the queue the example environment file names is the one the runs use by default
    example = production_check.read_env_file(REPO / "deploy" / "writevue.env.example")
    assert example["WRITEVUE_CELERY_QUEUE"] == Settings.from_env({}).celery_queue


def test_nginx_limits_each_address_under_a_token_and_nothing_else(tmp_path):
    """deploy/nginx.conf, run by the real nginx: past a generous burst, one address gets 429
    for pages under a token (/d/, /connect/, /unsubscribe/); other paths are not counted.
    (No dashboard process behind it: what is not refused is nginx's 502.)"""
    from writevue_devtools.tls import make_tls_cert
    from writevue_pipelines.processes import free_port, spawn, wait_until

    cert, key = make_tls_cert(tmp_path / "tls")
    port, upstream = free_port(), free_port()  # nothing listens on the upstream's port
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        production_check.render_nginx(
            REPO / "deploy" / "nginx.conf",
            listen=f"127.0.0.1:{port}",
            server_name="127.0.0.1",
            cert=cert,
            key=key,
            upstreams=[f"127.0.0.1:{upstream}"],
        )
    )
    argv = [production_check.NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(conf)]
    tested = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=30)
    assert tested.returncode == 0, tested.stderr
    nginx = spawn("nginx", argv, log_path=tmp_path / "nginx.log")
    try:
        base = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=str(cert), timeout=30) as client:
            wait_until(
                lambda: client.get(f"{base}/robots.txt").status_code == 502,
                timeout=30,
                what="nginx",
                child=nginx,
            )
            burst = []
            while 429 not in burst and len(burst) < 5000:  # far faster than 20 a second
                burst.append(client.get(f"{base}/d/{BAD_TOKEN}").status_code)
            assert set(burst[:400]) == {502}  # a TV wall or an office's burst passes
            assert burst[-1] == 429  # a flood does not
            for path in ("/connect/x", "/unsubscribe/x"):  # the same budget
                # The bucket drains one request every 50 ms, so on a loaded machine a request
                # or two may pass again; a budget of their own would let 400 through.
                tries = []
                while 429 not in tries and len(tries) < 100:
                    tries.append(client.get(f"{base}{path}").status_code)
                assert tries[-1] == 429, (path, len(tries))
            assert client.get(f"{base}/static/app.js").status_code == 502  # never counted
    finally:
        nginx.stop()
    assert BAD_TOKEN not in (prefix / "logs" / "error.log").read_text()
