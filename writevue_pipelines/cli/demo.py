"""`writevue demo` and `writevue sandbox`: the whole product on this machine, with the sandbox.

Starts the sandbox, makes sure a demo tenant with one Stripe connection exists,
materialises it once, starts the Dagster UI and the dashboard server, and prints
the demo client's dashboard URL. With ``--check`` it verifies all of that
headless, stops everything and exits 0.

The sandbox is a separate package that the product never imports: the demo runs it as a
process (``python -m writevue_sandbox``) and points the demo connection at it with the
``base_url`` option, as an operator would point a connection at any provider.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from .. import links, registry
from ..home import init_home
from ..models import Connection
from ..processes import (
    Child,
    StartError,
    answers,
    free_port,
    port_taken,
    restore_signals,
    spawn,
    wait_until,
)
from ..runtime import Runtime
from ..settings import Settings, get_settings
from .app import arg, command
from .progress import plural

SANDBOX_MODULE = "writevue_sandbox"

DEMO_TENANT_NAME = "Demo Coffee Roasters"
DEMO_TENANT_EMAIL = "owner@demo-coffee.example"
# A sandbox account key, not a real credential: the sandbox derives its data from it.
DEMO_SANDBOX_KEY = "rk_test_writevue_demo_account"
DEMO_LINK_LABEL = "demo"
DEMO_SCORECARD_METRICS = ("stripe.gross_volume", "stripe.charges", "stripe.new_customers")
MAIL_MODULE = "writevue_sandbox.mail"


class Supervisor:
    """Starts child processes (each in its own process group, logging under the home) and
    stops them all."""

    def __init__(self, settings: Settings, env: dict[str, str]):
        self.settings = settings
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Child:
        log_path = self.settings.log_dir / f"demo-{name}.log"
        # A Ctrl-C or SIGTERM that lands once the child exists but before it is recorded
        # would stop the demo and leave that child running: signals wait until it is.
        pending: list[int] = []
        held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {
            signum: signal.signal(signum, lambda n, _: pending.append(n)) for signum in held
        }
        try:
            child = spawn(name, argv, log_path=log_path, env=self.env, cwd=cwd)
            self.children.append(child)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if pending:
                signal.raise_signal(pending[0])  # now handled as it would have been
        return child

    def stop_all(self) -> None:
        # A second Ctrl-C, or `timeout make demo` (which signals make and the demo both),
        # must not cut the stop short and leave children running: each is stopped within
        # its own bound (SIGKILL after it), so the stop ends whatever is pressed.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        for child in reversed(self.children):
            child.stop()


class DemoError(Exception):
    pass


def ensure_demo_tenant(runtime: Runtime, sandbox_url: str) -> tuple[str, str]:
    """The demo tenant and its Stripe connection, created once and kept across runs."""
    state_path = runtime.settings.home / "demo.json"
    state = {}
    if state_path.exists():
        with contextlib.suppress(ValueError):
            state = json.loads(state_path.read_text())
    with runtime.db.session() as session:
        tenant_id = state.get("tenant_id")
        connection_id = state.get("connection_id")
        known = {t.id for t in registry.list_tenants(session, runtime.keys)}
        if tenant_id not in known:
            tenant_id = registry.add_tenant(
                session, runtime.keys, DEMO_TENANT_NAME, DEMO_TENANT_EMAIL
            )
            connection_id = None
        connections = {c.id for c in registry.list_connections(session, tenant_id=tenant_id)}
        if connection_id not in connections:
            connection_id = registry.add_connection(
                session,
                runtime.keys,
                tenant_id,
                "stripe",
                "api_key",
                {"base_url": sandbox_url},
                {"api_key": DEMO_SANDBOX_KEY},
            )
        else:
            # The sandbox may be on another port this time.
            row = session.get(Connection, connection_id)
            row.options = {**(row.options or {}), "base_url": sandbox_url}
    state_path.write_text(
        json.dumps({**state, "tenant_id": tenant_id, "connection_id": connection_id})
    )
    return tenant_id, connection_id


def ensure_demo_scorecard(runtime: Runtime, tenant_id: str) -> str:
    """The demo client's weekly scorecard (Mondays 08:00, the last 7 days against the
    7 before), to the demo client's address; created once and kept across runs."""
    from ..notifications import config

    state_path = runtime.settings.home / "demo.json"
    state = json.loads(state_path.read_text())
    with runtime.db.session() as session:
        known = {card.id for card in config.list_scorecards(session, tenant_id)}
        if state.get("scorecard_id") in known:
            return state["scorecard_id"]
        scorecard_id = config.add_scorecard(
            session,
            runtime.keys,
            tenant_id,
            name="Weekly summary",
            metrics=list(DEMO_SCORECARD_METRICS),
            period="last_7_days",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            send_at="08:00",
            emails=[DEMO_TENANT_EMAIL],
        )
    state_path.write_text(json.dumps({**state, "scorecard_id": scorecard_id}))
    return scorecard_id


def fresh_demo_link(runtime: Runtime, tenant_id: str, dashboard_base: str) -> str:
    """Revoke the previous demo links and make a new one: a token is only ever shown once."""
    with runtime.db.session() as session:
        for link in links.list_links(session, tenant_id):
            if link.label == DEMO_LINK_LABEL and link.revoked_at is None:
                links.revoke_link(session, link.id)
        _link, token = links.create_link(session, tenant_id, label=DEMO_LINK_LABEL)
    return f"{dashboard_base.rstrip('/')}/d/{token}"


def _workspace_file(settings: Settings) -> Path:
    local = Path.cwd() / "workspace.yaml"
    if local.exists():
        return local
    generated = settings.dagster_home / "workspace.yaml"
    generated.write_text(
        "load_from:\n  - python_module:\n      module_name: writevue_pipelines.defs\n"
        "      location_name: writevue\n"
    )
    return generated


def _graphql_assets(ui_url: str) -> set[str]:
    query = "{ assetNodes { assetKey { path } } }"
    response = httpx.post(f"{ui_url}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    nodes = response.json().get("data", {}).get("assetNodes", [])
    return {"/".join(node["assetKey"]["path"]) for node in nodes}


#: what each port of the demo is, and the option that moves it
_PORTS = (
    ("the dashboards", "--dashboard-port"),
    ("the Dagster UI", "--ui-port"),
    ("the sandbox provider", "--sandbox-port"),
    ("the mail catcher's page", "--mail-port"),
    ("the mail catcher's SMTP", "--mail-port (any but 8025 moves SMTP to a free port)"),
)


def check_ports(dashboard: int, ui: int, sandbox: int, mail: int, smtp: int) -> None:
    """One line naming the first port already taken, and the option to move it; before
    the demo touches anything (a second demo would otherwise reuse the first's sandbox)."""
    for port, (what, option) in zip((dashboard, ui, sandbox, mail, smtp), _PORTS, strict=True):
        if port_taken(port):
            raise DemoError(
                f"port {port} ({what}) is already in use, perhaps by another `writevue demo`; "
                f"stop that, or choose another port with {option}"
            )


def run_demo(
    *,
    check: bool = False,
    ui_port: int | None = None,
    dashboard_port: int | None = None,
    sandbox_port: int | None = None,
    mail_port: int | None = None,
) -> int:
    restore_signals()
    settings = get_settings()
    if check:
        ui_port, dashboard_port, sandbox_port, mail_port, smtp_port = (
            ui_port or free_port(),
            dashboard_port or free_port(),
            sandbox_port or free_port(),
            mail_port or free_port(),
            free_port(),
        )
    else:
        ui_port, dashboard_port, sandbox_port, mail_port = (
            ui_port or 3000,
            dashboard_port or 5006,
            sandbox_port or 8765,
            mail_port or 8025,
        )
        smtp_port = 1025 if mail_port == 8025 else free_port()
    try:
        check_ports(dashboard_port, ui_port, sandbox_port, mail_port, smtp_port)
    except DemoError as exc:
        print(f"writevue demo: {exc}", file=sys.stderr)
        return 2
    init_home(settings)
    mail_url = f"http://127.0.0.1:{mail_port}"
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    dashboard_base = f"http://127.0.0.1:{dashboard_port}"
    ui_url = f"http://127.0.0.1:{ui_port}"

    env = dict(os.environ)
    env.update(
        {
            "WRITEVUE_HOME": str(settings.home),
            "DAGSTER_HOME": str(settings.dagster_home),
            "WRITEVUE_DASHBOARD_URL": dashboard_base,
            # the demo's mail goes to its own mail catcher, never out
            "WRITEVUE_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            "WRITEVUE_MAIL_FROM": "WriteVue demo <scorecards@writevue.demo>",
            "PYTHONUNBUFFERED": "1",
        }
    )
    os.environ.update(
        {
            k: env[k]
            for k in (
                "WRITEVUE_HOME",
                "DAGSTER_HOME",
                "WRITEVUE_DASHBOARD_URL",
                "WRITEVUE_SMTP_URL",
                "WRITEVUE_MAIL_FROM",
            )
        }
    )
    writevue = [sys.executable, "-m", __package__]
    supervisor = Supervisor(settings, env)
    try:
        say(f"WriteVue home: {settings.home}")
        sandbox = supervisor.start(
            "sandbox", [sys.executable, "-m", SANDBOX_MODULE, "--port", str(sandbox_port)]
        )
        wait_until(
            answers(f"{sandbox_url}/_sandbox/health"),
            timeout=30,
            what="the sandbox provider",
            child=sandbox,
        )
        say(f"sandbox provider   {sandbox_url}  (Stripe-shaped, seeded data)")
        mail = supervisor.start(
            "mail",
            [
                sys.executable,
                "-m",
                MAIL_MODULE,
                "--smtp-port",
                str(smtp_port),
                "--http-port",
                str(mail_port),
                "--dir",
                str(settings.home / "demo-mail"),
            ],
        )
        wait_until(answers(f"{mail_url}/"), timeout=30, what="the mail catcher", child=mail)

        runtime = Runtime(get_settings())
        tenant_id, connection_id = ensure_demo_tenant(runtime, sandbox_url)
        say(f"demo tenant        {tenant_id}")
        say(f"stripe connection  {connection_id}")

        from ..defs.refresh_now import refresh_now

        report = refresh_now(runtime, tenant_id=tenant_id)
        for line in report.lines():
            say(f"  {line}")
        if report.failed:
            raise DemoError("the demo connection failed to refresh")
        sent = send_demo_scorecard(runtime, tenant_id)
        say(f"scorecard          {sent}, read it at {mail_url}/")

        dashboards = supervisor.start(
            "dashboard", [*writevue, "serve", "--port", str(dashboard_port)]
        )
        dagster = supervisor.start(
            "dagster",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(_workspace_file(settings)),
                "-h",
                "127.0.0.1",
                "-p",
                str(ui_port),
            ],
        )
        wait_until(
            answers(f"{dashboard_base}/robots.txt"),
            timeout=120,
            what="the dashboard server",
            child=dashboards,
        )
        wait_until(
            lambda: bool(_graphql_assets(ui_url)),
            timeout=240,
            what="the Dagster UI",
            child=dagster,
        )
        url = fresh_demo_link(runtime, tenant_id, dashboard_base)
        say(f"Dagster UI         {ui_url}")
        say(f"dashboards         {dashboard_base}")
        if check:
            verify(runtime, tenant_id, url, dashboard_base, ui_url)
            verify_mail(mail_url)
            say("demo check passed")
            return 0
        say("")
        say("The demo client's dashboard (this URL works like a password):")
        print(url, flush=True)
        say("Press Ctrl-C to stop.")
        while all(child.alive() for child in supervisor.children):
            time.sleep(1)
        dead = [child for child in supervisor.children if not child.alive()]
        for child in dead:
            say(f"{child.name} stopped; its log ends with:\n{child.tail()}")
        return 1
    except (DemoError, StartError) as exc:
        print(f"writevue demo: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        say("stopping")
        return 0
    finally:
        supervisor.stop_all()


def send_demo_scorecard(runtime: Runtime, tenant_id: str) -> str:
    """Send the demo client's scorecard to the mail catcher now; what happened."""
    from ..notifications import runner

    report = runner.send_now(runtime, ensure_demo_scorecard(runtime, tenant_id), run_id="demo")
    counts = report.delivery.counts if report.delivery else {}
    if not counts.get("sent"):
        raise DemoError(f"the demo scorecard was not sent ({', '.join(report.lines())})")
    return f"sent {plural(counts['sent'], 'message')} to the mail catcher"


def verify(runtime: Runtime, tenant_id: str, url: str, dashboard_base: str, ui_url: str) -> None:
    from dashboard_server.data import headline_texts
    from dashboard_server.probe import page_and_document_text

    status, text = page_and_document_text(url)
    if status != 200:
        raise DemoError(f"the dashboard answered {status}, not 200")
    expected = headline_texts(runtime, tenant_id)
    if not expected:
        raise DemoError("the demo tenant has no figures to show")
    missing = [figure for figure in expected if figure not in text]
    if missing:
        raise DemoError(f"the dashboard page lacks the client's numbers {missing}")
    say(f"dashboard shows    {', '.join(expected)}")
    wrong = httpx.get(f"{dashboard_base}/d/{'x' * 43}", timeout=30)
    if wrong.status_code != 404:
        raise DemoError(f"a wrong token answered {wrong.status_code}, not 404")
    assets = _graphql_assets(ui_url)
    wanted = {"stripe_fetch", "stripe_daily_metrics"}
    if not wanted <= assets:
        raise DemoError(f"the Dagster UI lists {sorted(assets)}, not {sorted(wanted)}")
    say(f"Dagster lists      {', '.join(sorted(assets))}")


def verify_mail(mail_url: str) -> None:
    """The demo client's scorecard arrived at the mail catcher, with its figures."""
    listing = httpx.get(f"{mail_url}/", timeout=30).text
    if "Weekly summary" not in listing:
        raise DemoError("the mail catcher holds no scorecard")
    message = httpx.get(f"{mail_url}/1", timeout=30).text
    if "Payments" not in message:
        raise DemoError("the demo scorecard lacks the client's payments")
    say(f"mail catcher holds the scorecard: {mail_url}/1")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@command(
    "demo",
    "run the whole product locally with the sandbox",
    arg("--check", action="store_true", help="run headless, verify, stop, exit 0"),
    arg("--ui-port", type=int),
    arg("--dashboard-port", type=int),
    arg("--sandbox-port", type=int),
    arg("--mail-port", type=int, help="the mail catcher's page (default 8025; SMTP on 1025)"),
    audit=False,  # touches only its own demo tenant
)
def demo(args) -> None:
    code = run_demo(
        check=args.check,
        ui_port=args.ui_port,
        dashboard_port=args.dashboard_port,
        sandbox_port=args.sandbox_port,
        mail_port=args.mail_port,
    )
    if code:
        raise SystemExit(code)


@command(
    "sandbox",
    "run the sandbox provider; `writevue sandbox --help` lists its accounts, keys and "
    "OAuth clients",
    arg("rest", nargs=argparse.REMAINDER, help="passed to python -m writevue_sandbox"),
    audit=False,
    add_help=False,  # --help is the sandbox's own, which knows its accounts
)
def sandbox(args) -> None:
    # Replaced by the sandbox's own process: the product never imports it.
    argv = [sys.executable, "-m", SANDBOX_MODULE, *args.rest]
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 -- a fixed program, the operator's arguments
