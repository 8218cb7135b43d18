"""Guessing dashboard links, and timing the answers, against a real `writevue serve`.

An attacker who wants a dashboard sends `/d/<token>` guesses. Two things are tried here
with real processes and real HTTP over loopback (a raw HTTP/1.1 client: the request line
goes out exactly as written, which no ordinary client allows):

- **the guessing run**: ``WRITEVUE_GUESSES`` guesses (10,000; the normal suite's short form
  300) from one address (with forged ``X-Forwarded-For``, ``X-Real-IP`` and ``Forwarded``
  headers on every request), from groups of addresses (25 guesses each) and from many
  addresses (one guess each). Random well-formed tokens; the real revoked and expired
  links; near misses of the live link; malformed ones (too short, too long, characters no
  token has, percent-encoding, path traversal, unicode, 9 KiB and 70 KiB addresses, bytes
  no request line may hold); other methods; the paths under a token. Then the live token
  where a mangled link puts it (pasted twice, ``/D/`` for ``/d/``). What must hold: no
  guess is ever answered 2xx, 3xx or 5xx, or with anything of a tenant; every 404 and 429
  of the server is its one page; each address gets exactly ``WRITEVUE_GUESS_LIMIT``
  (20) 404s and 429 after them (405 for a method the gate does not answer), whatever
  headers it forges; the live link opens with 200 from the address being refused and from
  another; the server's descriptors, threads and RSS do not grow with the guesses;
  ``guess_failures`` holds at most ``WRITEVUE_GUESS_LIMIT`` rows per address; no log of
  the server (or of nginx) holds a real token or a guessed one.
  Two layouts in the long form: one process on SQLite; the production layout (two
  processes on PostgreSQL behind nginx over TLS, ``WRITEVUE_TRUSTED_PROXIES`` naming it).
- **the timing test** (long form only): unknown, revoked, expired and malformed tokens,
  interleaved in a random order, thousands of each, each answered byte for byte alike
  (apart from ``Date``) and in the same time (a rank test against unknown tokens, and the
  same test between two samples of unknown tokens as the noise floor).

The long forms are marked ``soak`` (``make soak``); their figures are in
``docs/RELIABILITY.md`` ("Dashboard links (guessing, timing)").
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import secrets
import shutil
import socket
import ssl
import statistics
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from soak_viewers import sample, tls_context
from sqlalchemy import func, select
from support import add_tenant_with_facts, remember_secret, start_dashboard_server

from dashboard_server.gate import GATED_PATH, NOT_FOUND_HTML, TOO_MANY_HTML, RejectHandler
from dashboard_server.request_limits import MAX_ADDRESS
from writevue_devtools.production_check import NGINX, render_nginx
from writevue_devtools.tls import make_tls_cert
from writevue_pipelines import links
from writevue_pipelines.home import init_home
from writevue_pipelines.models import DashboardLink, GuessFailure
from writevue_pipelines.processes import Child, free_port, spawn, wait_until
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

GUESSES = int(os.environ.get("WRITEVUE_GUESSES", "10000"))
SHORT_GUESSES = 300
#: the server's budget: ``WRITEVUE_GUESS_LIMIT``'s default, which the servers here keep
LIMIT = 20
#: guesses per address in the groups of addresses, and how many addresses guess at once
PER_ADDRESS, GROUP = 25, 8
#: open descriptors idle after the run may exceed idle before it by this many
FD_SLACK = 3
#: nginx keeps up to this many idle connections to each dashboard process (``keepalive
#: 32`` per worker, 2 workers): an upstream's descriptors vary by that much at idle
NGINX_POOL = 64
#: idle after the run, each process may have this many more threads, and this much more RSS:
#: a leak of 1.6 KB per guess would pass 16 MB in 10,000 guesses (measured: see RELIABILITY)
THREAD_SLACK, RSS_SLACK_MB = 2, 16.0
TIMING_ROUNDS = int(os.environ.get("WRITEVUE_TIMING_ROUNDS", "3000"))
TIMING_WARM_UP = 100
#: a rank test's p below this says two kinds of token are answered in different times
P_FLOOR = 0.001

TENANT = "Guessing Target Ltd"
TODAY = dt.datetime.now(dt.UTC).date()
ALPHABET = string.ascii_letters + string.digits + "-_"
TOKEN_CHARS = len(secrets.token_urlsafe(links.TOKEN_BYTES))  # 43
#: what a 404 or 429 of the server may differ by between two requests
VARYING_HEADERS = {"date"}


# -- a raw HTTP/1.1 client --------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    seconds: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def by_nginx(self) -> bool:
        """nginx's own answer (its error page; its limit's 429 has no Retry-After)."""
        if b"<center>nginx</center>" in self.body:
            return True
        return self.status == 429 and self.header("Retry-After") is None

    def shape(self) -> tuple:
        """Everything a client sees, apart from the headers that vary between requests."""
        kept = tuple((k.lower(), v) for k, v in self.headers if k.lower() not in VARYING_HEADERS)
        return self.status, kept, self.body


class Wire:
    """One keep-alive HTTP/1.1 connection from ``source`` (any 127.x.y.z on Linux), sending
    each request line exactly as given: no client library normalises or refuses it."""

    def __init__(self, port: int, source: str, tls: ssl.SSLContext | None = None):
        self.port, self.source, self.tls = port, source, tls
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(60)
        raw.bind((self.source, 0))
        raw.connect(("127.0.0.1", self.port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls.wrap_socket(raw, server_hostname="127.0.0.1") if self.tls else raw
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock, self.buffer = None, b""

    def warm(self) -> None:
        """Open the connection with one untimed request that no limiter counts."""
        assert self.request(b"GET", b"/robots.txt").status == 200

    def request(self, method: bytes, target: bytes, headers: dict[str, str] | None = None):
        lines = [method + b" " + target + b" HTTP/1.1", f"Host: 127.0.0.1:{self.port}".encode()]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
        if method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: 0")
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        head_only = method == b"HEAD"
        fresh = self.sock is None
        if fresh:
            self._connect()
        started = time.perf_counter()
        try:
            status, fields, body = self._exchange(data, head_only)
        except ConnectionError:
            self.close()
            if fresh:
                raise
            # a kept-alive connection the server had closed: the request was never read
            self._connect()
            started = time.perf_counter()
            status, fields, body = self._exchange(data, head_only)
        answer = Answer(status, fields, body, time.perf_counter() - started)
        if (answer.header("Connection") or "").lower() == "close":
            self.close()
        return answer

    def _exchange(self, data: bytes, head_only: bool) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send, then read the answer: also when the server stopped reading a request too
        large for it, answered and closed the connection while it was still being sent."""
        refused = None
        try:
            self.sock.sendall(data)
        except (ConnectionError, ssl.SSLError) as exc:
            refused = exc
        try:
            return self._read(head_only=head_only)
        except (ConnectionError, ssl.SSLError) as exc:
            raise ConnectionError("no answer") from (refused or exc)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _read(self, *, head_only: bool) -> tuple[int, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        fields = {k.lower(): v for k, v in headers}
        if head_only or status in (204, 304):
            return status, headers, b""
        if "content-length" in fields:
            length = int(fields["content-length"])
            while len(self.buffer) < length:
                self._more()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return status, headers, body
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    self._more()
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buffer) < size + 2:
                    self._more()
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2 :]
                if size == 0:
                    return status, headers, body
        body = self.buffer  # no length: the body runs to the end of the connection
        try:
            while True:
                self._more()
        except ConnectionError:
            body = self.buffer
        self.close()
        return status, headers, body


# -- the world under test ---------------------------------------------------------------------


def facts(days: int) -> pl.DataFrame:
    day_list = [TODAY - dt.timedelta(days=i) for i in range(days)]
    return pl.DataFrame(
        {
            "metric": ["charges"] * days,
            "dimension": [""] * days,
            "day": day_list,
            "value": [731_337.0 + i for i in range(days)],
        }
    )


def end_link(runtime: Runtime, link_id: str, how: str) -> None:
    with runtime.db.session() as session:
        if how == "revoke":
            links.revoke_link(session, link_id)
        else:
            row = session.get(DashboardLink, link_id)
            row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)


@dataclass
class Links:
    """A tenant's real links: one live, some revoked, some expired; and, when asked, many
    more live links of another tenant, so that the token index is not a handful of rows."""

    live: str
    revoked: list[str]
    expired: list[str]

    @property
    def every_token(self) -> list[str]:
        return [self.live, *self.revoked, *self.expired]


def make_links(runtime: Runtime, *, dead_each: int = 4, others: int = 0) -> Links:
    tenant, _ = add_tenant_with_facts(runtime, TENANT, facts(40))
    with runtime.db.session() as session:
        live = links.create_link(session, tenant)[1]
    ended: dict[str, list[str]] = {"revoke": [], "expire": []}
    for how, tokens in ended.items():
        for _ in range(dead_each):
            with runtime.db.session() as session:
                link, token = links.create_link(session, tenant, expires_in_days=1)
            end_link(runtime, link.id, how)
            tokens.append(token)
    if others:
        other, _ = add_tenant_with_facts(runtime, "Other Client Ltd", facts(3))
        with runtime.db.session() as session:
            for _ in range(others):
                links.create_link(session, other)
    return Links(live, ended["revoke"], ended["expire"])


@dataclass
class World:
    """The server(s) under test, where clients connect, and what the test made."""

    name: str
    runtime: Runtime
    port: int
    tls: ssl.SSLContext | None
    pids: list[int]
    logs: list[Path]
    links: Links
    stop: Callable[[], None]

    def wire(self, source: str) -> Wire:
        return Wire(self.port, source, self.tls)


def one_process(root: Path) -> World:
    """`writevue serve` on a SQLite warehouse, trusting 127.0.0.1 as a proxy (so a client
    at any other address forging a proxy's headers is told apart from one)."""
    settings = Settings.from_env({"WRITEVUE_HOME": str(root / "home")})
    init_home(settings)
    runtime = Runtime(settings)
    log = root / "serve.log"
    try:
        made = make_links(runtime)
        child, base = start_dashboard_server(
            settings.home, log, WRITEVUE_TRUSTED_PROXIES="127.0.0.1"
        )
    except BaseException:
        runtime.close()
        raise

    def stop() -> None:
        child.stop()
        runtime.close()

    port = int(base.rsplit(":", 1)[1])
    pids = [child.process.pid]
    return World("one process, SQLite", runtime, port, None, pids, [log], made, stop)


def behind_nginx(root: Path, postgres_url: str) -> World:
    """The production layout: two processes sharing a PostgreSQL warehouse and the session
    secret, behind nginx (``deploy/nginx.conf`` as the production check renders it) over
    TLS, trusting nginx's address for the client's."""
    home = root / "home"
    settings = Settings.from_env(
        {"WRITEVUE_HOME": str(home), "WRITEVUE_DATABASE_URL": postgres_url}
    )
    init_home(settings)
    runtime = Runtime(settings)
    children: list[Child] = []
    try:
        made = make_links(runtime)
        port = free_port()
        env = {
            "WRITEVUE_SESSION_SECRET": remember_secret(secrets.token_urlsafe(32)),
            "WRITEVUE_DASHBOARD_URL": f"https://127.0.0.1:{port}",
            "WRITEVUE_TRUSTED_PROXIES": "127.0.0.1",
        }
        bases = []
        for n in range(2):
            child, base = start_dashboard_server(
                home, root / f"serve-{n}.log", database_url=postgres_url, **env
            )
            children.append(child)
            bases.append(base)
        cert, key = make_tls_cert(root / "tls")
        prefix = root / "nginx"
        (prefix / "logs").mkdir(parents=True)
        (prefix / "tmp").mkdir()
        if os.geteuid() == 0:
            shutil.chown(prefix / "tmp", user="nobody")
        config = prefix / "nginx.conf"
        config.write_text(
            render_nginx(
                Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf",
                listen=f"127.0.0.1:{port}",
                server_name="127.0.0.1",
                cert=cert,
                key=key,
                upstreams=[base.removeprefix("http://") for base in bases],
            )
        )
        nginx = spawn(
            "nginx",
            [NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(config)],
            log_path=root / "nginx.log",
        )
        children.append(nginx)
        tls = tls_context(cert)

        def up() -> bool:
            wire = Wire(port, "127.0.0.1", tls)
            try:
                return wire.request(b"GET", b"/robots.txt").status == 200
            except OSError:
                return False
            finally:
                wire.close()

        wait_until(up, timeout=30, what="nginx", child=nginx)
    except BaseException:
        for child in children:
            child.stop()
        runtime.close()
        raise

    def stop() -> None:
        for child in children:
            child.stop()
        runtime.close()

    logs = [root / "serve-0.log", root / "serve-1.log", root / "nginx.log"]
    logs += [prefix / "logs" / "access.log", prefix / "logs" / "error.log"]
    pids = [child.process.pid for child in children[:2]]
    return World(
        "two processes behind nginx, PostgreSQL", runtime, port, tls, pids, logs, made, stop
    )


# -- the guesses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Guess:
    kind: str
    method: bytes
    target: bytes

    @property
    def counted(self) -> bool:
        """Does the gate look it up (and so count it against its address when it fails)?
        A request line Tornado reads (no blank or control byte in the target), an address
        short enough to serve, a path under ``/d/``; any method (the gate routes before the
        handler refuses a method it does not support)."""
        if any(byte <= 0x20 or byte == 0x7F for byte in self.target):
            return False
        if len(self.target) > MAX_ADDRESS:
            return False
        path = self.target.decode("latin-1").partition("?")[0]
        return GATED_PATH.match(path) is not None

    @property
    def refusable(self) -> bool:
        """Counted, with a method the gate's handler answers (404, or 429 over budget);
        any other method gets 405 either way."""
        return self.counted and self.method.decode() in RejectHandler.SUPPORTED_METHODS


def well_formed(rng: random.Random, length: int = TOKEN_CHARS) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def _near_miss(rng: random.Random, live: str) -> str:
    """The live token, nearly: one character changed, cut short, run on, case swapped,
    one character percent-encoded."""
    at = rng.randrange(len(live))
    return rng.choice(
        [
            live[:at] + rng.choice(ALPHABET.replace(live[at], "")) + live[at + 1 :],
            live[: -rng.randint(1, 5)],
            live + well_formed(rng, rng.randint(1, 3)),
            live.swapcase(),
            live[:at] + f"%{ord(live[at]):02X}" + live[at + 1 :],
            live[1:] + live[0],
        ]
    )


_ODD_TEXT = ["é", "Ω", "中文", "😀", "\u202e", "\u200d", "\uff0f", "e\u0301", "\ufeff", "ǅ"]


def _malformed(rng: random.Random, kind: str) -> bytes:
    token = well_formed(rng)
    at = rng.randrange(TOKEN_CHARS)
    if kind == "short":
        return well_formed(rng, rng.randint(0, 20)).encode()
    if kind == "long":
        return well_formed(rng, rng.randint(TOKEN_CHARS + 1, 2000)).encode()
    if kind == "alphabet":
        return (token[:at] + rng.choice("!$&'()*+,;=:@~.") + token[at + 1 :]).encode()
    if kind == "percent":
        code = rng.choice(["%2F", "%2f", "%00", "%FF", "%2e%2e", "%c0%af", "%25", "%", "%zz"])
        return (token[:at] + code + token[at:]).encode()
    if kind == "unicode":
        odd = rng.choice(_ODD_TEXT)
        if rng.random() < 0.5:  # raw UTF-8 in the request line, else percent-encoded
            return (token[:at] + odd + token[at:]).encode()
        return (token[:at] + "".join(f"%{b:02X}" for b in odd.encode()) + token[at:]).encode()
    raise ValueError(kind)


def _traversal(rng: random.Random) -> bytes:
    token = well_formed(rng)
    return rng.choice(
        [
            "/d/../robots.txt",
            "/d/../../../../etc/passwd",
            "/d/..%2f..%2f..%2fetc%2fpasswd",
            "/d/%2e%2e/assets/theme.css",
            "/d/..;/static/js/bokeh.min.js",
            f"/d/./{token}",
            f"/d/{token}/..",
            f"/d/{token}/../../robots.txt",
            "/d//",
            f"/d//{token}",
            "/d/.",
            "/d/..",
        ]
    ).encode()


def _elsewhere(rng: random.Random) -> bytes:
    """Near the gate but not under it: no lookup, no count."""
    token = well_formed(rng)
    return rng.choice(
        [f"/D/{token}", f"//d/{token}", "/d", f"/dd/{token}", f"/d%2F{token}", f"/{token}"]
    ).encode()


def _under_a_token(rng: random.Random) -> bytes:
    token = well_formed(rng)
    tail = rng.choice(
        [
            "/",
            "/ws",
            "/autoload.js",
            "/metadata",
            "/static/js/bokeh.min.js",
            "?format=csv",
            "?bokeh-session-id=x",
            "/nothing",
        ]
    )
    return f"/d/{token}{tail}".encode()


#: how often each kind of guess is drawn, out of 100
KINDS = {
    "random": 60,
    "dead": 3,
    "near miss": 3,
    "short": 3,
    "long": 3,
    "alphabet": 3,
    "percent": 3,
    "unicode": 3,
    "traversal": 3,
    "elsewhere": 3,
    "under a token": 5,
    "method": 5,
    "huge": 1,
    "unreadable": 2,
}


def draw(rng: random.Random, made: Links) -> Guess:
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    method = b"GET"
    if kind == "random":
        target = f"/d/{well_formed(rng)}".encode()
    elif kind == "dead":
        target = f"/d/{rng.choice(made.revoked + made.expired)}".encode()
    elif kind == "near miss":
        target = f"/d/{_near_miss(rng, made.live)}".encode()
    elif kind in ("short", "long", "alphabet", "percent", "unicode"):
        target = b"/d/" + _malformed(rng, kind)
    elif kind == "traversal":
        target = _traversal(rng)
    elif kind == "elsewhere":
        target = _elsewhere(rng)
    elif kind == "under a token":
        target = _under_a_token(rng)
    elif kind == "method":
        method = rng.choice([b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE"])
        method = rng.choice([method, b"PROPFIND", b"FOO"]) if rng.random() < 0.2 else method
        target = f"/d/{well_formed(rng)}".encode()
    elif kind == "huge":
        size = rng.choice([9 * 1024, 70 * 1024])
        target = f"/d/{well_formed(rng, size)}".encode()
    else:  # "unreadable": bytes no request line may hold
        token = well_formed(rng)
        at = rng.randrange(TOKEN_CHARS)
        odd = rng.choice([" ", "\t", "\x00", "\x7f", "\x1b[31m", "\r", "\n"])
        target = (f"/d/{token[:at]}{odd}{token[at:]}").encode()
    return Guess(kind, method, target)


def forged_headers(rng: random.Random) -> dict[str, str]:
    """What a guesser writes to pass for many clients; believed from a trusted proxy only."""
    spoofed = [f"203.0.113.{rng.randrange(256)}" for _ in range(4)]
    return {
        "X-Forwarded-For": f"{spoofed[0]}, {spoofed[1]}",
        "X-Real-IP": spoofed[2],
        "Forwarded": f"for={spoofed[3]}",
        "X-Client-IP": spoofed[3],
    }


# -- the guessing run -----------------------------------------------------------------------


@dataclass
class Sent:
    guess: Guess
    source: str
    answer: Answer
    #: when the answer was in (``time.monotonic``)
    at: float = field(default_factory=time.monotonic)


@dataclass
class Run:
    sent: list[Sent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: per address: the number of its counted failures at its first 429 (None: never)
    engaged_at: dict[str, int | None] = field(default_factory=dict)
    #: per address: how many of its guesses the server looked up (and counted)
    failures: Counter = field(default_factory=Counter)
    #: the addresses that sent a guess the gate answers (not 405) past their budget
    over: set[str] = field(default_factory=set)

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)


def fire(wire: Wire, guess: Guess, headers: dict[str, str] | None = None) -> Answer:
    try:
        return wire.request(guess.method, guess.target, headers)
    except (ConnectionError, ssl.SSLError):
        # the server may close a connection it cannot read a request from without an
        # answer; nothing was served
        wire.close()
        return Answer(0, [], b"", 0.0)


def judge(run: Run, made: Links, sent: Sent) -> None:
    """What every answer to a guess must be, whoever sent it."""
    answer, guess = sent.answer, sent.guess
    what = f"{guess.kind} {guess.method.decode()} {guess.target[:80]!r}"
    if answer.status == 0:
        if guess.counted:
            run.problem(f"{what}: closed without an answer")
        return
    if not 400 <= answer.status < 500:
        run.problem(f"{what}: {answer.status}")
    for secret in (TENANT.encode(), b"731337", b"wv-card", made.live.encode()):
        if secret in answer.body:
            run.problem(f"{what}: the answer holds {secret[:12]!r}")
    if answer.by_nginx:
        return
    if answer.status == 404 and answer.body not in (NOT_FOUND_HTML, b""):
        run.problem(f"{what}: a 404 that is not the 404 page")
    if answer.status == 429 and answer.body not in (TOO_MANY_HTML, b""):
        run.problem(f"{what}: a 429 that is not the 429 page")
    if guess.counted and answer.status not in (404, 405, 429):
        run.problem(f"{what}: {answer.status} for a path under the gate")


def check_budget(run: Run, source: str, sent: list[Sent]) -> None:
    """Each counted guess the server answered is 404 until the address has failed
    ``LIMIT`` times, 429 after (405 for a method the gate's handler does not answer)."""
    failures = 0
    run.engaged_at.setdefault(source, None)
    for item in sent:
        if not item.guess.counted or item.answer.by_nginx or item.answer.status == 0:
            continue
        failures += 1
        run.failures[source] += 1
        status = item.answer.status
        if not item.guess.refusable:
            expected = 405
        else:
            expected = 404 if failures <= LIMIT else 429
            if failures > LIMIT:
                run.over.add(source)
        if status == 429 and run.engaged_at[source] is None:
            run.engaged_at[source] = failures
        if status != expected:
            run.problem(
                f"{source}: failure {failures} ({item.guess.kind} "
                f"{item.guess.method.decode()}) answered {status}, not {expected}"
            )


class Watch:
    """Each dashboard process's RSS, threads and descriptors, every half second."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.samples: dict[int, list] = {pid: [] for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.samples[pid].append(sample(pid, self.started))
            self._stop.wait(0.5)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def idle(world: World) -> dict[int, object]:
    """Each process at rest: 2.5 s after the last request (a refused 70 KiB request's
    connection lingers up to 2 s)."""
    time.sleep(2.5)
    return {pid: sample(pid, 0) for pid in world.pids}


def page_opens(world: World, source: str) -> bool:
    wire = world.wire(source)
    try:
        answer = wire.request(b"GET", f"/d/{world.links.live}".encode())
    finally:
        wire.close()
    return answer.status == 200 and TENANT.encode() in answer.body


#: the live token where a mistyped or mangled link might carry it, outside the token's
#: place: none of these opens anything, and none may leave the token in a log
def mangled(live: str) -> list[bytes]:
    return [
        f"/d/{live}/{live}".encode(),
        f"/d/x/{live}".encode(),
        f"/d/{live[:10]}/{live}".encode(),
        f"/D/{live}".encode(),
        f"/{live}".encode(),
        f"/static/{live}".encode(),
        f"/assets/{live}".encode(),
        f"/robots.txt/{live}".encode(),
        f"/d/{live}/static/{live}".encode(),
    ]


def guessing_run(world: World, total: int, seed: int) -> tuple[Run, dict]:
    """``total`` guesses: 40% from one address, 40% from groups of addresses, 20% from an
    address each; then the checks that need the server's state."""
    rng = random.Random(seed)
    made = world.links
    run = Run()
    one, guessers, many = "127.10.0.1", [], []
    n_one = total * 2 // 5
    n_groups = max(1, total * 2 // 5 // PER_ADDRESS)
    n_many = total - n_one - n_groups * PER_ADDRESS
    figures: dict = {"seed": seed}

    warm = world.wire("127.10.0.2")  # a page and a few guesses: the lazily made parts
    warm.warm()
    assert warm.request(b"GET", f"/d/{made.live}".encode()).status == 200
    for _ in range(10):
        fire(warm, Guess("random", b"GET", f"/d/{well_formed(rng)}".encode()))
    warm.close()
    before = idle(world)
    started = time.monotonic()
    with Watch(world.pids) as watch:
        # one address, forging a proxy's headers on every request
        wire = world.wire(one)
        mine = []
        for _ in range(n_one):
            guess = draw(rng, made)
            mine.append(Sent(guess, one, fire(wire, guess, forged_headers(rng))))
        wire.close()
        run.sent += mine
        check_budget(run, one, mine)
        figures["one"] = mine
        if world.tls is not None:
            time.sleep(1.0)  # nginx's own per-address limit (20 a second): room for more
        # the live link opens from the address being refused, and from another; a
        # failure from the refused address is still refused (a valid link resets nothing)
        figures["live from the refused address"] = page_opens(world, one)
        figures["live from another address"] = page_opens(world, "127.10.0.3")
        wire = world.wire(one)
        after = fire(wire, Guess("random", b"GET", f"/d/{well_formed(rng)}".encode()))
        wire.close()
        figures["refused after"] = after.status == 429 and not after.by_nginx
        # groups of addresses, each guessing PER_ADDRESS times, GROUP of them at once
        for group_start in range(0, n_groups, GROUP):
            sources = [
                f"127.11.{n // 250}.{n % 250 + 1}"
                for n in range(group_start, min(group_start + GROUP, n_groups))
            ]
            guessers += sources
            wires = {source: world.wire(source) for source in sources}
            order = [source for source in sources for _ in range(PER_ADDRESS)]
            rng.shuffle(order)
            theirs: dict[str, list[Sent]] = {source: [] for source in sources}
            for source in order:
                guess = draw(rng, made)
                theirs[source].append(Sent(guess, source, fire(wires[source], guess)))
            for source, wire in wires.items():
                wire.close()
                run.sent += theirs[source]
                check_budget(run, source, theirs[source])
        # many addresses, one guess each
        for n in range(n_many):
            source = f"127.12.{n // 250}.{n % 250 + 1}"
            many.append(source)
            wire = world.wire(source)
            guess = draw(rng, made)
            sent = Sent(guess, source, fire(wire, guess))
            wire.close()
            run.sent.append(sent)
            check_budget(run, source, [sent])
        # the live token in the wrong place, from an address of its own
        wire = world.wire("127.10.0.4")
        for target in mangled(made.live):
            answer = wire.request(b"GET", target)
            if answer.status == 200 or TENANT.encode() in answer.body:
                run.problem(f"a mangled link {target[:12]!r}… opened: {answer.status}")
        wire.close()
    figures["seconds"] = time.monotonic() - started
    figures["before"], figures["after"], figures["watch"] = before, idle(world), watch.samples
    figures["guessers"], figures["many"] = guessers, many
    for sent in run.sent:
        judge(run, made, sent)
    return run, figures


def stored_failures(runtime: Runtime) -> tuple[int, int]:
    """(rows, distinct addresses) of the links surface in ``guess_failures``."""
    with runtime.db.session() as session:
        where = GuessFailure.surface == "links"
        rows = session.scalar(select(func.count()).select_from(GuessFailure).where(where))
        keys = session.scalar(select(func.count(func.distinct(GuessFailure.key_hmac))).where(where))
    return rows, keys


_TOKEN_LIKE = re.compile(rb"[A-Za-z0-9_-]{20,}")


def tokens_in_logs(world: World, run: Run) -> list[str]:
    """Which real tokens, and how many guessed ones, any log of the server (and nginx) holds."""
    text = b"".join(path.read_bytes() for path in world.logs if path.exists())
    found = [
        f"a real token ({token[:4]}…)"
        for token in world.links.every_token
        if token.encode() in text
    ]
    guessed = {
        sent.guess.target[3:]
        for sent in run.sent
        if sent.guess.kind == "random" and len(sent.guess.target) == 3 + TOKEN_CHARS
    }
    leaked = guessed & set(_TOKEN_LIKE.findall(text))
    if leaked:
        found.append(f"{len(leaked)} guessed tokens")
    return found


def report(world: World, run: Run, figures: dict) -> str:
    def answered(sent: Sent) -> str:
        status = str(sent.answer.status) if sent.answer.status else "closed"
        return f"nginx {status}" if sent.answer.by_nginx else status

    statuses = Counter(answered(sent) for sent in run.sent)
    counted = sum(run.failures.values())
    engaged = Counter(at for at in run.engaged_at.values() if at is not None)
    engaged_at = ", ".join(f"{at} ({n} addresses)" for at, n in sorted(engaged.items()))
    served = sum(1 for s in run.sent if s.answer.status and not 400 <= s.answer.status < 500)
    one = figures["one"]
    refused = [s for s in one if s.answer.status == 429 and not s.answer.by_nginx]
    # after the server's first 429: its guesses that reached the gate (nginx's own
    # refusals did not), each still looked up
    after = [
        s for s in one if refused and s.at >= refused[0].at and s.guess.counted and s.answer.status
    ]
    after = [s for s in after if not s.answer.by_nginx]
    pace = len(after) / max(after[-1].at - after[0].at, 1e-9) if len(after) > 1 else 0.0
    one_line = (
        f"  one address: {len(one):,} guesses with forged proxy headers: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(Counter(map(answered, one)).items()))
        + f"; after the server's first 429 it looked up {len(after):,} more of them, "
        f"{pace:.0f} a second"
    )
    seconds = figures["seconds"]
    lines = [
        f"link guessing ({world.name}, seed {figures['seed']}): {len(run.sent):,} guesses "
        f"in {seconds:.0f} s ({len(run.sent) / seconds:.0f}/s), {counted:,} looked up; "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items()))
        + f"; 429 from failure {engaged_at}"
        f" of the {len(run.over)} addresses that guessed past their {LIMIT} failures; "
        f"2xx/3xx/5xx {served}; live link 200 from the refused address: "
        f"{figures['live from the refused address']}, from another: "
        f"{figures['live from another address']}; guess_failures {figures['rows']:,} rows for "
        f"{figures['keys']:,} addresses; {len(run.problems)} problems",
        one_line,
        f"  groups: {len(figures['guessers'])} addresses x {PER_ADDRESS} guesses; one guess "
        f"each: {len(figures['many']):,} addresses",
    ]
    for pid in world.pids:
        series = figures["watch"][pid]
        b, a = figures["before"][pid], figures["after"][pid]
        lines.append(
            f"  process {pid}: idle before/after: RSS {b.rss_mb:.0f}/{a.rss_mb:.0f} MB, "
            f"fds {b.fds}/{a.fds}, threads {b.threads}/{a.threads}; during: RSS "
            f"{min(s.rss_mb for s in series):.0f}-{max(s.rss_mb for s in series):.0f} MB, "
            f"fds {min(s.fds for s in series)}-{max(s.fds for s in series)}"
        )
    return "\n".join(lines + [f"  problem: {p}" for p in run.problems[:20]])


def check_run(world: World, run: Run, figures: dict, record_property) -> None:
    figures["rows"], figures["keys"] = stored_failures(world.runtime)
    leaks = tokens_in_logs(world, run)
    text = report(world, run, figures)
    print(text)
    record_property("guessing", text)
    assert not run.problems, text
    assert not leaks, (leaks, text)
    assert figures["live from the refused address"] and figures["live from another address"], text
    assert figures["refused after"], text
    # every address that failed more than LIMIT times was refused from failure LIMIT + 1 on
    assert run.engaged_at.get("127.10.0.1") == LIMIT + 1, text
    # the table: a ring of at most LIMIT rows per address that failed (the guessers, and
    # the warm-up's and the mangled links' addresses)
    ring_rows = sum(min(n, LIMIT) for n in run.failures.values()) + 2 * LIMIT
    assert figures["keys"] <= len(run.failures) + 2, text
    assert figures["rows"] <= ring_rows, text
    slack = FD_SLACK + (NGINX_POOL if world.tls is not None else 0)
    for pid in world.pids:
        before, after = figures["before"][pid], figures["after"][pid]
        assert after.fds <= before.fds + slack, text
        assert after.threads <= before.threads + THREAD_SLACK, text
        assert after.rss_mb <= before.rss_mb + RSS_SLACK_MB, text


def test_guessing_short_form(tmp_path, record_property):
    """300 guesses at one SQLite process; everything but the figures' size of the long form."""
    world = one_process(tmp_path)
    try:
        run, figures = guessing_run(world, SHORT_GUESSES, secrets.randbelow(2**32))
        check_run(world, run, figures, record_property)
    finally:
        world.stop()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="one-process"),
        pytest.param("postgres", id="two-processes-nginx"),
    ]
)
def world(request, tmp_path) -> Iterator[World]:
    if request.param == "postgres":
        made = behind_nginx(tmp_path, request.getfixturevalue("postgres_url"))
    else:
        made = one_process(tmp_path)
    try:
        yield made
    finally:
        made.stop()


@pytest.mark.soak
@pytest.mark.timeout(900 + GUESSES // 10)
def test_guessing_long_form(world, record_property):
    seed = int(os.environ.get("WRITEVUE_SOAK_SEED") or secrets.randbelow(2**32))
    run, figures = guessing_run(world, GUESSES, seed)
    check_run(world, run, figures, record_property)


# -- the timing test --------------------------------------------------------------------------


def same_length_malformed(rng: random.Random) -> str:
    """A token's length in the request line, with what no token holds: a character outside
    its alphabet, a percent-encoded one, a two-byte UTF-8 one."""
    token = well_formed(rng)
    at = rng.randrange(TOKEN_CHARS - 3)
    return rng.choice(
        [
            token[:at] + rng.choice("!$'()*+,;=:@~.") + token[at + 1 :],
            token[:at] + "%21" + token[at + 3 :],
            token[:at] + "é" + token[at + 2 :],  # 2 bytes in UTF-8
        ]
    )


def timing_targets(rng: random.Random, made: Links) -> dict[str, Callable[[], bytes]]:
    """What each kind of request asks for: a new one each time, as a guesser's are."""
    return {
        "unknown": lambda: f"/d/{well_formed(rng)}".encode(),
        "unknown again": lambda: f"/d/{well_formed(rng)}".encode(),  # the noise floor
        "revoked": lambda: f"/d/{rng.choice(made.revoked)}".encode(),
        "expired": lambda: f"/d/{rng.choice(made.expired)}".encode(),
        "malformed": lambda: f"/d/{same_length_malformed(rng)}".encode(),
        "short": lambda: f"/d/{well_formed(rng, 8)}".encode(),
        "long": lambda: f"/d/{well_formed(rng, 200)}".encode(),
        # the live link's token, a path under it that does not exist: past the gate
        "live, no such page": lambda: f"/d/{made.live}/nothing-here".encode(),
    }


#: judged against unknown tokens; the last kind is only reported (it is the live token:
#: whoever sends it has the link, and learns nothing from its timing)
JUDGED = ("unknown again", "revoked", "expired", "malformed", "short", "long")
#: the kinds sent from an address over its budget: every answer 429, after the same lookup
REFUSED = ("unknown", *JUDGED)


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test (``test_link_security``'s, which checks it)."""
    from test_link_security import mann_whitney_p as rank_test

    return rank_test(a, b)


def timing_lines(group: str, took: dict[str, list[float]]) -> tuple[list[str], dict[str, float]]:
    """One line per kind (median, IQR, difference from unknown, p); the p values."""
    medians = {kind: statistics.median(values) * 1e6 for kind, values in took.items()}
    p_values = {kind: mann_whitney_p(took["unknown"], values) for kind, values in took.items()}
    lines = [f"  {group}:"]
    for kind, values in took.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        lines.append(
            f"    {kind:<20} median {medians[kind]:7.0f} µs (IQR {q1 * 1e6:.0f}-{q3 * 1e6:.0f}), "
            f"vs unknown {medians[kind] - medians['unknown']:+7.1f} µs, "
            f"Mann-Whitney p {p_values[kind]:.3g}"
            + ("" if kind in JUDGED or kind == "unknown" else " (reported only)")
        )
    return lines, p_values


@pytest.mark.soak
@pytest.mark.timeout(1800 + TIMING_ROUNDS)
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_dead_links_of_every_kind_answer_alike_in_bytes_and_time(
    tmp_path, request, database, record_property
):
    """Two groups of answers, their requests shuffled together in every round:

    - 404s: each kind from an address under its budget (a new address every 2 rounds, 14
      failures each), so the limiter counts every failure as it would in production;
    - 429s: each kind from one address over its budget, whose failures are looked up the
      same way and refused from the process's own count (no write): the lookup alone.
    """
    env = {"WRITEVUE_HOME": str(tmp_path / "home")}
    if database == "postgres":
        env["WRITEVUE_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    settings = Settings.from_env(env)
    init_home(settings)
    runtime = Runtime(settings)
    try:
        # 16 revoked and 16 expired links among 1,000 live ones: an index of some depth
        made = make_links(runtime, dead_each=16, others=1000)
        server, base = start_dashboard_server(
            settings.home, tmp_path / "serve.log", database_url=env.get("WRITEVUE_DATABASE_URL")
        )
    except BaseException:
        runtime.close()
        raise
    rng = random.Random()
    targets = timing_targets(rng, made)
    took = {kind: [] for kind in targets}
    took_refused = {kind: [] for kind in REFUSED}
    shapes: dict[int, set] = {404: set(), 429: set()}
    port = int(base.rsplit(":", 1)[1])
    load_before = os.getloadavg()[0]
    fresh, refused = None, Wire(port, "127.21.0.1")
    try:
        refused.warm()
        for _ in range(LIMIT):
            assert refused.request(b"GET", targets["unknown"]()).status == 404
        for round_no in range(TIMING_WARM_UP + TIMING_ROUNDS):
            if round_no % 2 == 0:
                if fresh is not None:
                    fresh.close()
                n = round_no // 2
                fresh = Wire(port, f"127.20.{n // 250}.{n % 250 + 1}")
                fresh.warm()
            order = [(fresh, kind) for kind in targets] + [(refused, kind) for kind in REFUSED]
            rng.shuffle(order)  # interleaved: drift on a busy machine hits every kind alike
            for wire, kind in order:
                answer = wire.request(b"GET", targets[kind]())
                expected = 429 if wire is refused else 404
                assert answer.status == expected, (kind, answer.status)
                shapes[expected].add(answer.shape())
                if round_no >= TIMING_WARM_UP:
                    (took_refused if wire is refused else took)[kind].append(answer.seconds)
    finally:
        for wire in (fresh, refused):
            if wire is not None:
                wire.close()
        server.stop()
        runtime.close()
    loads = (load_before, os.getloadavg()[0])
    found, p_found = timing_lines("404 (under budget)", took)
    over, p_over = timing_lines("429 (over budget)", took_refused)
    lines = [
        f"link timing ({database}): {TIMING_ROUNDS:,} rounds of {len(targets)} + "
        f"{len(REFUSED)} requests, shuffled; load average {loads[0]:.1f} / {loads[1]:.1f} "
        f"(start / end) on {os.cpu_count()} cores; distinct answers apart from Date: "
        f"{len(shapes[404])} of the 404s, {len(shapes[429])} of the 429s",
        *found,
        *over,
    ]
    text = "\n".join(lines)
    print(text)
    record_property("timing", text)
    # byte for byte the same answer, whatever the token was (the date apart)
    assert len(shapes[404]) == 1 and len(shapes[429]) == 1, text
    # the noise floor first (two samples of unknown tokens), then every other kind
    for p_values in (p_found, p_over):
        assert p_values["unknown again"] >= P_FLOOR, text
        for kind in JUDGED:
            assert p_values[kind] >= P_FLOOR, text
