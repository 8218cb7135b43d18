"""The anonymised access log: one JSON line per dashboard view, interaction or export.

Each line holds the time (UTC, seconds), the link's opaque id, the client's truncated
IP, its browser family, its platform, the referring domain and the event, and
nothing else: no path, no query string, no token, no full address, no user agent.
Lines go to ``WRITEVUE_HOME/logs/access-YYYY-MM-DD.jsonl`` (UTC day); the pipeline
rolls them up into trend tables (``writevue_pipelines.privacy.trends``).

Several server processes may share the file: it is opened with ``O_APPEND`` and each
line is a single ``write``, so the kernel puts every line whole at the end of the
file, whatever the other processes and threads write meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from writevue_pipelines.privacy.trends import EVENTS, access_log_file, clean_domain

from .redaction import truncate_ip

_log = logging.getLogger("writevue.access")
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)

# First match wins: Edge and Opera carry "Chrome/" too, Chrome carries "Safari/", and
# Android and iOS user agents mention "Linux" and "Mac OS X".
_BROWSERS = (
    ("Edge", ("Edg/", "Edge/", "EdgA/", "EdgiOS/")),
    ("Other", ("OPR/", "Opera", "SamsungBrowser/", "YaBrowser/", "Vivaldi/")),
    ("Firefox", ("Firefox/", "FxiOS/")),
    ("Chrome", ("Chrome/", "CriOS/", "Chromium/")),
    ("Safari", ("Safari/",)),
)
_PLATFORMS = (
    ("Android", ("Android",)),
    ("iOS", ("iPhone", "iPad", "iPod")),
    ("Windows", ("Windows",)),
    ("Other", ("CrOS",)),
    ("macOS", ("Macintosh", "Mac OS X")),
    ("Linux", ("Linux", "X11")),
)


def _first(user_agent: str, table: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for name, marks in table:
        if any(mark in user_agent for mark in marks):
            return name
    return "Other"


def browser_family(user_agent: str | None) -> str:
    """Chrome, Firefox, Safari, Edge or Other: the family only, never a version."""
    return _first(user_agent or "", _BROWSERS)


def platform_name(user_agent: str | None) -> str:
    """Windows, macOS, Linux, Android, iOS or Other."""
    return _first(user_agent or "", _PLATFORMS)


def referrer_domain(referer: str | None) -> str | None:
    """The referring page's domain only (no path, no query, no port), or None."""
    if not referer:
        return None
    try:
        parts = urlsplit(referer.strip())
        host = parts.hostname if parts.scheme in ("http", "https") else None
    except ValueError:
        return None
    return clean_domain(host)


def _header(headers: Mapping, name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Visitor:
    """What the access log may say about the client: nothing that names one person."""

    ip: str
    browser: str
    platform: str
    referrer: str | None

    @classmethod
    def from_request(cls, remote_ip: str | None, headers: Mapping) -> Visitor:
        user_agent = _header(headers, "User-Agent")
        return cls(
            ip=truncate_ip(remote_ip or ""),
            browser=browser_family(user_agent),
            platform=platform_name(user_agent),
            referrer=referrer_domain(_header(headers, "Referer")),
        )


def access_line(event: str, link_id: str, visitor: Visitor, at: dt.datetime) -> bytes:
    """One event as a JSON line with exactly the allowed fields."""
    if event not in EVENTS:
        raise ValueError(f"unknown access event {event!r}")
    record = {
        "time": at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "link": link_id,
        "ip": visitor.ip,
        "browser": visitor.browser,
        "platform": visitor.platform,
        "referrer": visitor.referrer,
        "event": event,
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


class AccessLog:
    """Appends access events to the day's JSON-lines file; never fails the request."""

    def __init__(self, log_dir: Path, *, clock: Callable[[], dt.datetime] | None = None):
        self.log_dir = log_dir
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def record(self, event: str, link_id: str, visitor: Visitor) -> None:
        at = self._clock()
        line = access_line(event, link_id, visitor, at)
        path = access_log_file(self.log_dir, at.astimezone(dt.UTC).date())
        try:
            self._append(path, line)
        except FileNotFoundError:
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self._append(path, line)
            except OSError as exc:
                _log.warning("access event not written (%s)", type(exc).__name__)
        except OSError as exc:
            _log.warning("access event not written (%s)", type(exc).__name__)

    @staticmethod
    def _append(path: Path, line: bytes) -> None:
        fd = os.open(path, _FLAGS, 0o600)
        try:
            # One write per line: with O_APPEND the line lands whole at the end of the file.
            written = os.write(fd, line)
        finally:
            os.close(fd)
        if written != len(line):
            raise OSError("short write")
