"""`make production-check`: the production layout in deploy/ started on this machine and
checked end to end, then stopped.

It runs what an operator runs, from the files an operator copies: the settings from
``deploy/writevue.env.example`` (with this run's ports, folders and databases), the
commands from ``deploy/systemd/*.service``, ``deploy/dagster.yaml`` and
``deploy/workspace.yaml`` for Dagster, ``deploy/nginx.conf`` rendered for nginx. On the
local PostgreSQL server it makes two databases of its own (the warehouse and Dagster's),
keeps the key ring outside ``WRITEVUE_HOME``, and starts the sandbox provider, the code
server, the Dagster webserver, one daemon, two dashboard processes and nginx with a
self-signed certificate. Then, as an operator would, it adds tenants and connections
with the ``writevue`` command, lets the refresh schedule tick (every minute here) refresh
them through the daemon and the code server, opens a dashboard through nginx (headers,
websocket) and through each dashboard process, revokes the link while a page is open
through nginx and directly on each process and sees every open page stop and every
door refuse it, stops the process nginx sends the link to and sees nginx use the other,
checks that no file of the run outside its secrets' folder (every log included) holds
the link's token, a Stripe key it used, the session secret or key ring material, and
stops everything it started and drops its databases, whatever happened.

One line per step with the elapsed time, then PASS or FAIL; exit status 0 only on PASS,
which also needs the whole check within ``BUDGET_S`` (5 minutes; CI stops it at 10).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from writevue_devtools.dagster_pg import dagster_pg_env
from writevue_devtools.peers import POSTGRES_ADMIN_URL
from writevue_devtools.tls import make_tls_cert
from writevue_pipelines.processes import Child, StartError, answers, free_port, spawn, wait_until

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
NGINX = os.environ.get("WRITEVUE_NGINX", "/usr/sbin/nginx")
#: where the units expect the virtual environment; here it is this interpreter's
UNIT_VENV_BIN = "/opt/writevue/.venv/bin/"
#: the template's placeholders (envsubst renders exactly these; nginx's own $vars stay)
NGINX_PLACEHOLDERS = (
    "WRITEVUE_NGINX_LISTEN",
    "WRITEVUE_NGINX_SERVER_NAME",
    "WRITEVUE_TLS_CERT",
    "WRITEVUE_TLS_KEY",
    "WRITEVUE_DASHBOARD_UPSTREAMS",
)
DASHBOARD_PROCESSES = 2
STRIPE_KEYS = ("sk_test_production_check_north", "sk_test_production_check_south")
#: the headers every dashboard answer carries (dashboard_server.headers), once each
SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "x-robots-tag": "noindex",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "content-security-policy": "frame-ancestors",
}
#: measured on this 2-core machine (shared): the Dagster processes load in 20-60 s
START_TIMEOUT_S = 240.0
#: a schedule ticks at the next minute; its run then starts a process and refreshes
REFRESH_TIMEOUT_S = 200.0
GONE_TEXT = "This link no longer works"
#: an open page learns of a revocation within 2 s (tests/test_dashboard_tier.py holds the
#: promise); here, with everything on two busy cores, within this long after the command
REVOKED_WITHIN_S = 5.0
#: the whole check, set-up and clean-up included, must take at most this long (CI)
BUDGET_S = 300.0


class CheckFailed(Exception):
    """A step found the layout not doing what it must; the text says what."""


# --- the files in deploy/, as an operator uses them ----------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile= reads them (no shell expansion)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def render_nginx(
    template: Path,
    *,
    listen: int | str,
    server_name: str,
    cert: Path,
    key: Path,
    upstreams: Iterable[str],
) -> str:
    """``deploy/nginx.conf`` rendered as ``envsubst`` with the placeholders named renders it."""
    values = {
        "WRITEVUE_NGINX_LISTEN": str(listen),
        "WRITEVUE_NGINX_SERVER_NAME": server_name,
        "WRITEVUE_TLS_CERT": str(cert),
        "WRITEVUE_TLS_KEY": str(key),
        "WRITEVUE_DASHBOARD_UPSTREAMS": upstream_lines(upstreams),
    }
    return render_placeholders(template.read_text(), values)


def upstream_lines(addresses: Iterable[str]) -> str:
    return " ".join(f"server {address};" for address in addresses)


def render_placeholders(text: str, values: dict[str, str]) -> str:
    def fill(found: re.Match) -> str:
        return values[found.group(1)] if found.group(1) in values else found.group(0)

    rendered = re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", fill, text)
    left = sorted(set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", rendered)))
    if left:
        raise CheckFailed(f"deploy/nginx.conf has placeholders nobody fills: {left}")
    return rendered


def unit_command(unit: str, env: dict[str, str], *, instance: str = "", dirs=None) -> list[str]:
    """The ``ExecStart=`` of ``deploy/systemd/<unit>`` as systemd would run it here: its
    ``${VAR}`` from ``env`` (else the unit's ``Environment=`` defaults, which an
    EnvironmentFile= overrides), ``%i`` the instance, ``%H`` the host name, ``%S``/``%t``
    the state and runtime folders, the units' virtual environment this interpreter's."""
    text = (DEPLOY / "systemd" / unit).read_text()
    found = re.search(r"^ExecStart=(.+)$", text, re.M)
    if found is None:
        raise CheckFailed(f"deploy/systemd/{unit} has no ExecStart=")
    defaults = dict(
        assignment.partition("=")[::2]
        for line in re.findall(r"^Environment=(.+)$", text, re.M)
        for assignment in shlex.split(line)
    )
    values = {**defaults, **env}
    line = found.group(1).replace("%i", instance).replace("%H", socket.gethostname())
    for specifier, folder in (dirs or {}).items():
        line = line.replace(specifier, str(folder))
    line = re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: values[m.group(1)], line)
    argv = shlex.split(line)
    if argv[0].startswith(UNIT_VENV_BIN):
        argv[0] = str(Path(sys.executable).parent / argv[0][len(UNIT_VENV_BIN) :])
    return argv


# --- PostgreSQL -------------------------------------------------------------------------------


def _database_url(name: str, driver: str = "postgresql+psycopg") -> str:
    parts = urlsplit(POSTGRES_ADMIN_URL)
    return urlunsplit((driver, parts.netloc, f"/{name}", "", ""))


def _admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)


# --- the check --------------------------------------------------------------------------------


@dataclass
class Layout:
    """Everything one run of the check made: folders, ports, databases, processes."""

    root: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    children: list[Child] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stop_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def start(self, name: str, argv: list[str]) -> Child:
        child = spawn(name, argv, log_path=self.logs / f"{name}.log", env=self.env)
        self.children.append(child)
        return child

    def leftovers(self) -> list[int]:
        """Processes still running with this run's home: anything its children left."""
        marker = f"WRITEVUE_HOME={self.home}".encode() + b"\0"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
        return found

    def stop(self) -> list[str]:
        """Stop every child (its whole process group), then anything they left; drop the
        databases. What could not be cleaned up, for the report."""
        problems = []
        for child in reversed(self.children):
            started = time.monotonic()
            try:
                child.stop()
            except Exception as exc:  # keep stopping the rest
                problems.append(f"stopping {child.name}: {exc!r}")
            self.stop_seconds[child.name] = time.monotonic() - started
        for pid in self.leftovers():
            problems.append(f"process {pid} outlived its parent; killed")
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        for name in self.databases:
            try:
                _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                problems.append(f"dropping database {name}: {exc!r}")
        return problems


class Steps:
    """One line per step with the time since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = httpx.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise CheckFailed(f"Dagster's GraphQL answered errors: {body['errors']}")
    return body["data"]


LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
DAEMONS = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"
RUNS = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) { __typename
  ... on Runs { results { runId status tags { key value } } } } }"""


class ProductionCheck:
    def __init__(self, root: Path, steps: Steps):
        self.layout = Layout(root)
        self.steps = steps
        self.ports = {
            name: free_port()
            for name in ("sandbox", "code_server", "webserver", "nginx", "dash_a", "dash_b")
        }
        self.dashboards: list[str] = []
        self.tenants: list[tuple[str, str]] = []  # (tenant id, connection id)
        self.token = ""
        self.link_id = ""
        self.pages_before_failover = 0

    # -- set-up --

    @property
    def nginx_base(self) -> str:
        return f"https://127.0.0.1:{self.ports['nginx']}"

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.ports['webserver']}"

    def make_databases(self) -> None:
        for role in ("warehouse", "dagster"):
            name = f"wv_prodcheck_{self.layout.run_id}_{role}"
            _admin(f'CREATE DATABASE "{name}"')
            self.layout.databases.append(name)
        self.steps.say(f"databases {', '.join(self.layout.databases)} created")

    def make_environment(self) -> None:
        """deploy/writevue.env.example with this run's folders, ports and databases."""
        layout = self.layout
        secrets = layout.root / "secrets"
        secrets.mkdir(mode=0o700)
        layout.home.mkdir(mode=0o700)
        dagster_home = layout.home / "dagster"
        dagster_home.mkdir()
        shutil.copy(DEPLOY / "dagster.yaml", dagster_home / "dagster.yaml")
        cert, key = make_tls_cert(layout.root / "tls")
        self.cert = cert
        pgpass = secrets / "pgpass"
        pgpass.write_text("127.0.0.1:5432:*:postgres:unused-with-trust-auth\n")
        pgpass.chmod(0o600)
        example = read_env_file(DEPLOY / "writevue.env.example")
        here = {
            "WRITEVUE_HOME": str(layout.home),
            "WRITEVUE_KEY_FILE": str(secrets / "keys.json"),
            "WRITEVUE_SESSION_SECRET_FILE": str(secrets / "session-secret"),
            "PGPASSFILE": str(pgpass),
            "WRITEVUE_DATABASE_URL": _database_url(layout.databases[0]),
            "DAGSTER_HOME": str(dagster_home),
            **dagster_pg_env(_database_url(layout.databases[1])),
            "WRITEVUE_CODE_SERVER_HOST": "127.0.0.1",
            "WRITEVUE_CODE_SERVER_PORT": str(self.ports["code_server"]),
            # every minute, so a tick comes within the check
            "WRITEVUE_REFRESH_CRON": "* * * * *",
            "WRITEVUE_DASHBOARD_URL": self.nginx_base,
            "WRITEVUE_TRUSTED_PROXIES": "127.0.0.1",
            "WRITEVUE_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
            "WRITEVUE_SMTP_PASSWORD_FILE": str(secrets / "smtp-password"),
            "WRITEVUE_NGINX_LISTEN": f"127.0.0.1:{self.ports['nginx']}",
            "WRITEVUE_NGINX_SERVER_NAME": "127.0.0.1",
            "WRITEVUE_TLS_CERT": str(cert),
            "WRITEVUE_TLS_KEY": str(key),
            "WRITEVUE_DASHBOARD_UPSTREAMS": upstream_lines(
                f"127.0.0.1:{self.ports[name]}" for name in ("dash_a", "dash_b")
            ),
        }
        unknown = sorted(set(here) - set(example))
        if unknown:
            raise CheckFailed(f"deploy/writevue.env.example lacks {unknown}")
        (secrets / "smtp-password").write_text("unused\n")
        # The environment of a service: the example file's settings, none of the caller's.
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("WRITEVUE_", "DAGSTER_", "PG"))
        }
        layout.env = {**inherited, **example, **here, "WRITEVUE_AUDIT_REASON": "production-check"}
        self.steps.say(
            "environment from deploy/writevue.env.example; key ring and session secret in "
            f"{secrets.name}/, outside WRITEVUE_HOME; self-signed certificate"
        )

    def writevue(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        """The ``writevue`` command, as an operator runs it; its standard output."""
        return self.writevue_result(*args, extra_env=extra_env).stdout

    def writevue_result(
        self, *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        command = Path(sys.executable).parent / "writevue"
        argv = (
            [str(command)] if command.exists() else [sys.executable, "-m", "writevue_pipelines.cli"]
        )
        result = subprocess.run(
            [*argv, *args],
            env={**self.layout.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise CheckFailed(
                f"writevue {args[0]} {args[1] if len(args) > 1 else ''} exited "
                f"{result.returncode}: {result.stderr.strip()[-800:]}"
            )
        return result

    def init_and_sandbox(self) -> None:
        self.writevue("init")
        key_file = Path(self.layout.env["WRITEVUE_KEY_FILE"])
        if not key_file.exists():
            raise CheckFailed("writevue init made no key ring at WRITEVUE_KEY_FILE")
        if (self.layout.home / "keys.json").exists():
            raise CheckFailed("writevue init put a key ring under WRITEVUE_HOME")
        self.sandbox_url = f"http://127.0.0.1:{self.ports['sandbox']}"
        self.sandbox = self.layout.start(
            "sandbox",
            [sys.executable, "-m", "writevue_sandbox", "--port", str(self.ports["sandbox"])],
        )
        self.steps.say("writevue init: warehouse migrated, key ring at WRITEVUE_KEY_FILE")

    def start_services(self) -> None:
        """Code server, webserver, daemon, dashboards, nginx: started together, awaited later."""
        env = self.layout.env
        self.code_server = self.layout.start(
            "code-server", unit_command("writevue-code-server.service", env)
        )
        self.webserver = self.layout.start(
            "webserver",
            _with_port(
                unit_command("writevue-webserver.service", env),
                self.ports["webserver"],
                workspace=DEPLOY / "workspace.yaml",
            ),
        )
        self.daemon = self.layout.start(
            "daemon",
            _with_workspace(
                unit_command("writevue-daemon.service", env), DEPLOY / "workspace.yaml"
            ),
        )
        self.dashboard_children = []
        for name in ("dash_a", "dash_b"):
            port = self.ports[name]
            self.dashboard_children.append(
                self.layout.start(
                    f"dashboard-{port}",
                    unit_command("writevue-dashboard@.service", env, instance=str(port)),
                )
            )
            self.dashboards.append(f"http://127.0.0.1:{port}")
        prefix = self.layout.root / "state" / "writevue-nginx"
        (prefix / "logs").mkdir(parents=True)
        (prefix / "tmp").mkdir()
        runtime_dir = self.layout.root / "run" / "writevue-nginx"
        runtime_dir.mkdir(parents=True)
        self.nginx_prefix = prefix
        (runtime_dir / "nginx.conf").write_text(
            render_nginx(
                DEPLOY / "nginx.conf",
                listen=env["WRITEVUE_NGINX_LISTEN"],
                server_name=env["WRITEVUE_NGINX_SERVER_NAME"],
                cert=Path(env["WRITEVUE_TLS_CERT"]),
                key=Path(env["WRITEVUE_TLS_KEY"]),
                upstreams=[f"127.0.0.1:{self.ports[n]}" for n in ("dash_a", "dash_b")],
            )
        )
        dirs = {"%S": self.layout.root / "state", "%t": self.layout.root / "run"}
        nginx = unit_command("writevue-nginx.service", env, dirs=dirs)
        nginx[0] = NGINX
        tested = subprocess.run([*nginx, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if tested.returncode != 0:
            raise CheckFailed(f"nginx -t refuses the rendered config: {tested.stderr.strip()}")
        self.nginx = self.layout.start("nginx", nginx)
        self.steps.say(
            "started: code server, webserver, one daemon, "
            f"{DASHBOARD_PROCESSES} dashboard processes, nginx (commands from deploy/systemd)"
        )

    def add_tenants(self) -> None:
        wait_until(
            answers(f"{self.sandbox_url}/_sandbox/health"),
            timeout=60,
            what="the sandbox",
            child=self.sandbox,
        )
        for number, key in enumerate(STRIPE_KEYS, 1):
            tenant_id = self.writevue(
                "tenant", "add", "--email", f"ops{number}@client.example", f"Client {number}"
            ).split()[-1]
            connection_id = self.writevue(
                "connection",
                "add",
                tenant_id,
                "stripe",
                "--auth",
                "api_key",
                "--api-key-env",
                "WRITEVUE_CHECK_STRIPE_KEY",
                "--option",
                f"base_url={self.sandbox_url}",
                extra_env={"WRITEVUE_CHECK_STRIPE_KEY": key},
            ).split()[-1]
            self.tenants.append((tenant_id, connection_id))
        self.steps.say(
            f"{len(self.tenants)} tenants, each with a Stripe connection to the sandbox "
            "(writevue tenant add, connection add)"
        )

    def await_services(self) -> None:
        wait_until(
            answers(f"{self.ui}/server_info"),
            timeout=START_TIMEOUT_S,
            what="dagster-webserver",
            child=self.webserver,
        )

        def location_loaded() -> bool:
            if not self.code_server.alive():
                raise StartError(
                    f"the code server exited; its log ends with:\n{self.code_server.tail()}"
                )
            entries = graphql(self.ui, LOCATIONS)["workspaceOrError"].get("locationEntries", [])
            for entry in entries:
                error = entry["locationOrLoadError"]
                if entry["loadStatus"] == "LOADED" and error is not None:
                    if error["__typename"] != "PythonError":
                        return True
                    # The webserver may ask before the code server listens; it reloads the
                    # location when the code server comes up.
                    load_errors.append(error["message"])
            return False

        load_errors: list[str] = []
        try:
            wait_until(
                location_loaded, timeout=START_TIMEOUT_S, what="the code location", interval=2
            )
        except StartError as exc:
            last = load_errors[-1].strip().splitlines()[0] if load_errors else "no error seen"
            raise CheckFailed(f"{exc}; the webserver's last load error: {last}") from None

        def daemon_healthy() -> bool:
            statuses = graphql(self.ui, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
            return all(s["healthy"] for s in statuses if s["required"])

        wait_until(
            daemon_healthy,
            timeout=START_TIMEOUT_S,
            what="dagster-daemon",
            child=self.daemon,
            interval=2,
        )
        self.steps.say("code location loaded from the code server; the daemon heartbeats")
        for child, base in zip(self.dashboard_children, self.dashboards, strict=True):
            wait_until(
                answers(f"{base}/robots.txt"), timeout=START_TIMEOUT_S, what=child.name, child=child
            )
        wait_until(
            lambda: (
                httpx.get(
                    f"{self.nginx_base}/robots.txt", verify=str(self.cert), timeout=5
                ).status_code
                == 200
            ),
            timeout=60,
            what="nginx",
            child=self.nginx,
        )
        self.steps.say(f"{DASHBOARD_PROCESSES} dashboard processes answer, and nginx over https")

    # -- the refresh --

    def await_scheduled_refresh(self) -> None:
        """A run the schedule started refreshed every connection, through the code server."""
        wanted = {connection_id for _, connection_id in self.tenants}
        seen: dict[str, str] = {}

        def refreshed() -> bool:
            for alive in (self.code_server, self.daemon):
                if not alive.alive():
                    raise StartError(f"{alive.name} exited; its log ends with:\n{alive.tail()}")
            result = graphql(
                self.ui,
                RUNS,
                {"filter": {"tags": [{"key": "writevue/trigger", "value": "schedule"}]}},
            )["runsOrError"]
            covered = set()
            for run in result.get("results", []):
                seen[run["runId"]] = run["status"]
                if run["status"] == "FAILURE":
                    raise CheckFailed(f"scheduled run {run['runId']} failed (see the Dagster UI)")
                if run["status"] == "SUCCESS":
                    covered |= _run_partitions(run["tags"], wanted)
            return covered >= wanted

        try:
            wait_until(
                refreshed, timeout=REFRESH_TIMEOUT_S, what="the scheduled refresh", interval=3
            )
        except StartError as exc:
            raise CheckFailed(f"{exc}; scheduled runs seen: {seen or 'none'}") from None
        counts = self._fact_counts()
        empty = [connection for connection in wanted if not counts.get(connection)]
        if empty:
            raise CheckFailed(f"connections without facts in the warehouse: {empty}")
        self.steps.say(
            f"schedule tick refreshed {len(wanted)} connections through the daemon and the code "
            f"server ({len(seen)} run(s) succeeded); warehouse holds "
            f"{sum(counts.values())} facts"
        )

    def _fact_counts(self) -> dict[str, int]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.layout.env["WRITEVUE_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT connection_id, count(*) FROM facts GROUP BY 1"))
                return {connection: count for connection, count in rows}
        finally:
            engine.dispose()

    # -- the dashboards --

    def make_link(self) -> None:
        tenant_id = self.tenants[0][0]
        result = self.writevue_result("link", "create", tenant_id)
        url = result.stdout.strip().splitlines()[-1]
        if not url.startswith(f"{self.nginx_base}/d/"):
            raise CheckFailed("writevue link create printed no link under WRITEVUE_DASHBOARD_URL")
        self.token = url.rsplit("/", 1)[-1]
        found = re.search(r"link id: (\S+)", result.stderr)
        if found is None:
            raise CheckFailed("writevue link create did not name the link's id")
        self.link_id = found.group(1).rstrip(";")
        self.expected = self._expected_figures(tenant_id)

    def _expected_figures(self, tenant_id: str) -> list[str]:
        from dashboard_server.data import headline_texts
        from writevue_pipelines.runtime import Runtime
        from writevue_pipelines.settings import Settings

        figures = headline_texts(Runtime(Settings.from_env(self.layout.env)), tenant_id)
        if not figures:
            raise CheckFailed("the refreshed tenant has no figures to show")
        return figures

    def check_through_nginx(self) -> None:
        url = f"{self.nginx_base}/d/{self.token}"
        response = httpx.get(url, verify=str(self.cert), timeout=60)
        if response.status_code != 200:
            raise CheckFailed(f"the dashboard through nginx answered {response.status_code}")
        for name, wanted in SECURITY_HEADERS.items():
            values = response.headers.get_list(name)
            if len(values) != 1 or wanted not in values[0]:
                raise CheckFailed(
                    f"through nginx, {name} is {values!r} (wanted one, with {wanted!r})"
                )
        if "max-age=" not in response.headers.get("strict-transport-security", ""):
            raise CheckFailed("nginx sends no Strict-Transport-Security")
        text = run_async(self._document_text(url, verify=self.cert))
        missing = [figure for figure in self.expected if figure not in text]
        if missing:
            raise CheckFailed(f"the dashboard through nginx lacks the figures {missing}")
        self.steps.say(
            "through nginx (https): page 200 with the security headers once each and HSTS; "
            f"websocket handshake and document with the client's figures {', '.join(self.expected)}"
        )

    def check_each_process(self) -> None:
        for base in self.dashboards:
            url = f"{base}/d/{self.token}"
            text = run_async(self._document_text(url))
            missing = [figure for figure in self.expected if figure not in text]
            if missing:
                raise CheckFailed(f"{base} shows the dashboard without {missing}")
        self.steps.say(
            f"each dashboard process serves the link directly ({', '.join(self.dashboards)})"
        )

    async def _document_text(self, page_url: str, verify: Path | None = None) -> str:
        socket = await self._open_page(page_url, verify)
        try:
            return (await socket.pull(60)).text()
        finally:
            socket.close()

    async def _open_page(self, page_url: str, verify: Path | None = None):
        """Load the page and open its websocket as a browser does (its Origin too)."""
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        from dashboard_server.probe import DocumentSocket, session_token, socket_url

        async with httpx.AsyncClient(verify=str(verify) if verify else True, timeout=60) as client:
            page = await client.get(page_url)
        if page.status_code != 200:
            raise CheckFailed(f"{_masked(page_url)} answered {page.status_code}")
        origin = urlunsplit((*urlsplit(page_url)[:2], "", "", ""))
        request = HTTPRequest(
            socket_url(page_url),
            headers={"Origin": origin},
            ca_certs=str(verify) if verify else None,
            connect_timeout=60,
            request_timeout=60,
        )
        try:
            connection = await websocket_connect(
                request, subprotocols=["bokeh", session_token(page.text)]
            )
        except Exception as exc:
            raise CheckFailed(f"the websocket of {_masked(page_url)} was refused: {exc}") from None
        socket = DocumentSocket(connection)
        ack = await socket.receive(60)
        if ack is None or ack.type != "ACK":
            socket.close()
            raise CheckFailed(f"the websocket of {_masked(page_url)} closed before its ACK")
        return socket

    def check_revocation(self) -> None:
        """Revoke the link with a page open through nginx and one open directly on each
        dashboard process: every open page says the link no longer works within
        ``REVOKED_WITHIN_S`` of the command's end, and every door then refuses it."""
        doors = {"nginx": (f"{self.nginx_base}/d/{self.token}", self.cert)} | {
            base: (f"{base}/d/{self.token}", None) for base in self.dashboards
        }

        async def until_gone(name: str, socket) -> float:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30  # a bound on waiting; the verdict is below
            while (left := deadline - loop.time()) > 0:
                try:
                    message = await socket.receive(left)
                except TimeoutError:
                    break
                if message is None:
                    raise CheckFailed(f"the page open on {name} closed without a word")
                if GONE_TEXT in message.text():
                    return time.monotonic()
            raise CheckFailed(f"the page open on {name} kept working after revocation")

        async def revoke_while_open() -> dict[str, float]:
            sockets = {}
            try:
                for name, (url, verify) in doors.items():
                    sockets[name] = await self._open_page(url, verify)
                    await sockets[name].pull(60)
                started = time.monotonic()
                await asyncio.to_thread(self.writevue, "link", "revoke", self.link_id)
                done = time.monotonic()
                self.revoke_command_s = done - started
                seen = await asyncio.gather(
                    *(until_gone(name, socket) for name, socket in sockets.items())
                )
                self.revoke_seen_s = max(at - started for at in seen)
                return {name: max(0.0, at - done) for name, at in zip(sockets, seen, strict=True)}
            finally:
                for socket in sockets.values():
                    socket.close()

        after = run_async(revoke_while_open())
        slow = {name: f"{s:.1f} s" for name, s in after.items() if s > REVOKED_WITHIN_S}
        if slow:
            raise CheckFailed(
                f"open pages said the link no longer works only after {slow} "
                f"(at most {REVOKED_WITHIN_S:.0f} s after the command)"
            )
        for name, (door, verify) in doors.items():
            status = httpx.get(door, verify=str(verify) if verify else True, timeout=30).status_code
            if status != 404:
                raise CheckFailed(f"after revocation {name} answered {status}, not 404")
        self.steps.say(
            "link revoked (writevue link revoke): the pages open through nginx and directly "
            f"on each process said the link no longer works {self.revoke_seen_s:.1f} s after "
            f"the command started at most (the command took {self.revoke_command_s:.1f} s); "
            "nginx and both processes answer 404"
        )

    def check_failover(self) -> None:
        """Stop the process that serves the link: nginx sends its requests to the other
        (and the error nginx meets on the way does not put the token in its error log)."""
        access = self.nginx_prefix / "logs" / "access.log"
        pages = [line for line in access.read_text().splitlines() if '"GET /d/<token>' in line]
        self.pages_before_failover = len(pages)
        serving = _upstream(pages[-1])
        child = next(c for c in self.dashboard_children if c.name.endswith(serving.split(":")[-1]))
        child.stop()
        url = f"{self.nginx_base}/d/{self.token}"
        status = httpx.get(url, verify=str(self.cert), timeout=30).status_code
        if status != 404:  # the revoked link, from the process left (nginx alone says 502)
            raise CheckFailed(
                f"with {serving} stopped, nginx answered {status}, not the other's 404"
            )
        self.steps.say(f"{serving} stopped: nginx sends the link's requests to the other process")

    def check_logs(self) -> None:
        nginx_logs = self.nginx_prefix / "logs"
        access = (nginx_logs / "access.log").read_text()
        if "/d/<token>" not in access:
            raise CheckFailed("nginx's access log has no dashboard request (masked) in it")
        pages = [line for line in access.splitlines() if '"GET /d/<token>' in line]
        upstreams = {_upstream(line) for line in pages[: self.pages_before_failover]}
        if len(upstreams) != 1:
            raise CheckFailed(
                f"the link's page and websocket went to several processes: {upstreams}"
            )
        leaks = self._leaks()
        if leaks:
            raise CheckFailed(f"secrets found where they must not be: {'; '.join(leaks)}")
        self.steps.say(
            "nginx never logged a link token (masked as /d/<token>, addresses truncated); no file "
            "of the run outside secrets/ holds the token, a Stripe key, the session secret or "
            f"key ring material; page and websocket kept on one process ({upstreams.pop()})"
        )

    def _secrets(self) -> dict[str, list[bytes]]:
        """What must appear in no log or other file of the run, in the forms it could take."""
        import base64
        import json

        secrets_dir = self.layout.root / "secrets"
        session_secret = (secrets_dir / "session-secret").read_text().strip()
        ring = json.loads(Path(self.layout.env["WRITEVUE_KEY_FILE"]).read_text())
        keys = [base64.b64decode(text) for text in ring["keys"].values()]
        if not keys or len(session_secret) < 32:
            raise CheckFailed("the key ring or the session secret is not what writevue init makes")
        return {
            "the link's token": [self.token.encode()],
            "a Stripe key": [key.encode() for key in STRIPE_KEYS],
            "the session secret": [session_secret.encode()],
            "key ring material": [
                form
                for key in keys
                for form in (
                    base64.b64encode(key),
                    base64.urlsafe_b64encode(key).rstrip(b"="),
                    key.hex().encode(),
                    key,
                )
            ],
        }

    def _leaks(self) -> list[str]:
        """Where a secret is among the run's files: logs (every process's, nginx's), the
        home (staging, the dashboards' access logs), everything but the secrets' own folder."""
        secrets = self._secrets()
        own = self.layout.root / "secrets"
        found = []
        for path in sorted(self.layout.root.rglob("*")):
            if not path.is_file() or own in path.parents:
                continue
            data = path.read_bytes()
            for what, forms in secrets.items():
                if any(form in data for form in forms):
                    found.append(f"{what} in {path.relative_to(self.layout.root)}")
        return found

    def run(self) -> None:
        self.make_databases()
        self.make_environment()
        self.init_and_sandbox()
        self.start_services()
        self.add_tenants()
        self.await_services()
        self.await_scheduled_refresh()
        self.make_link()
        self.check_through_nginx()
        self.check_each_process()
        self.check_revocation()
        self.check_failover()
        self.check_logs()


def _run_partitions(tags: list[dict], wanted: set[str]) -> set[str]:
    """The connections a (batched) run refreshed, from its partition tags."""
    values = {tag["key"]: tag["value"] for tag in tags}
    if "dagster/partition" in values:
        return {values["dagster/partition"]} & wanted
    start = values.get("dagster/asset_partition_range_start")
    end = values.get("dagster/asset_partition_range_end")
    # a range of consecutive partitions; the check's two connections are its whole range
    return {key for key in wanted if key in (start, end)} if start and end else set()


def _upstream(access_line: str) -> str:
    """The process an nginx access log line (deploy/nginx.conf's format) went to."""
    return access_line.rsplit("upstream=", 1)[-1].split()[0].rstrip(",")


def _with_port(argv: list[str], port: int, *, workspace: Path) -> list[str]:
    """The webserver unit's command with this run's port (the unit says 3000)."""
    argv = _with_workspace(argv, workspace)
    return [*argv[: argv.index("-p") + 1], str(port), *argv[argv.index("-p") + 2 :]]


def _with_workspace(argv: list[str], workspace: Path) -> list[str]:
    """The unit's command with this checkout's deploy/workspace.yaml."""
    index = argv.index("-w") + 1
    return [*argv[:index], str(workspace), *argv[index + 1 :]]


def _masked(url: str) -> str:
    return re.sub(r"/d/[^/]+", "/d/<token>", url)


def run_async(coroutine):
    return asyncio.run(coroutine)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="production-check", description=__doc__.split("\n")[0])
    parser.add_argument("--keep-dir", type=Path, help="work in this folder and keep its logs")
    args = parser.parse_args(argv)
    # A CI job cancelled (SIGTERM) cleans up as after Ctrl-C: processes stopped, databases dropped.
    signal.signal(signal.SIGTERM, _interrupt)
    steps = Steps()
    if args.keep_dir:
        args.keep_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="production-check-", dir=args.keep_dir))
    else:
        root = Path(tempfile.mkdtemp(prefix="writevue-production-check-"))
    check = ProductionCheck(root, steps)
    failure = None
    try:
        check.run()
    except (CheckFailed, StartError) as exc:
        failure = str(exc)
    except Exception as exc:  # an unexpected error is a failure of the check too
        failure = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (below): still stop everything
        failure = "interrupted"
    finally:
        problems = check.layout.stop()
        slow = ", ".join(
            f"{name} {seconds:.0f} s"
            for name, seconds in check.layout.stop_seconds.items()
            if seconds >= 3
        )
        steps.say(
            f"stopped {len(check.layout.children)} processes"
            + (f" (slowest: {slow})" if slow else "")
            + f", dropped {len(check.layout.databases)} databases"
            + (f"; {'; '.join(problems)}" if problems else "")
        )
    if failure is None and problems:
        failure = "not everything stopped cleanly"
    if failure is None and steps.elapsed() > BUDGET_S:
        failure = f"took {steps.elapsed():.0f} s, over the {BUDGET_S:.0f} s budget"
    if failure is not None:
        failure = _masked(failure)  # an HTTP error names its URL; a link's token stays out
        print(f"FAIL after {steps.elapsed():.0f} s: {failure}", flush=True)
        print(f"logs kept in {root / 'logs'}", flush=True)
        return 1
    print(f"PASS in {steps.elapsed():.0f} s", flush=True)
    if not args.keep_dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
