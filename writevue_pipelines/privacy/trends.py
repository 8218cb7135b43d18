"""Access-log trends: the dashboard server's anonymised access logs rolled up into daily counts.

The dashboard server appends one JSON object per line to
``WRITEVUE_HOME/logs/access-YYYY-MM-DD.jsonl`` (UTC day): time, link (the link's
opaque id), ip (truncated), browser family, platform, referrer domain and event
(``view``, ``interaction``, ``export``). ``roll_up`` turns one day of those lines into
two aggregate tables, and ``expire_access_logs`` deletes the raw files once they are
older than the retention and rolled up.

The trend tables hold counts only: no IP, no link id, nothing that joins a row to a
client or a visitor. Browser and platform come from closed lists of a handful of
names; a referrer domain is an outsider's free text (it can name a person's own site
or machine), so one seen on fewer than ``WRITEVUE_TREND_MIN_REFERRER_VIEWS`` views in
a day is counted as ``(other)``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ..models import TrendInteraction, TrendView, utcnow
from ..runtime import Runtime

log = logging.getLogger(__name__)

EVENTS = ("view", "interaction", "export")
BROWSERS = ("Chrome", "Firefox", "Safari", "Edge", "Other")
PLATFORMS = ("Windows", "macOS", "Linux", "Android", "iOS", "Other")
#: the trend_views dimensions, in the order reports list them
DIMENSIONS = ("browser", "platform", "referrer_domain")
NO_REFERRER = "(none)"
OTHER_REFERRERS = "(other)"

# access-2026-12-04.jsonl, or access-2026-12-04.<host>.jsonl for a file collected from
# another host's server
_FILE_NAME = re.compile(r"^access-(\d{4}-\d{2}-\d{2})(?:\.[A-Za-z0-9_-]{1,64})?\.jsonl$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9-]{1,63})*$")


def access_log_file(log_dir: Path, day: dt.date) -> Path:
    """Where the dashboard server appends the access lines of one UTC day."""
    return log_dir / f"access-{day:%Y-%m-%d}.jsonl"


def access_log_files(log_dir: Path) -> dict[dt.date, list[Path]]:
    """Every access-log file under ``log_dir``, by the UTC day it holds."""
    files: dict[dt.date, list[Path]] = {}
    if not log_dir.is_dir():
        return files
    for path in sorted(log_dir.iterdir()):
        found = _FILE_NAME.match(path.name)
        if not found or not path.is_file():
            continue
        try:
            day = dt.date.fromisoformat(found.group(1))
        except ValueError:
            continue
        files.setdefault(day, []).append(path)
    return files


def clean_domain(host: str | None) -> str | None:
    """A referrer's host as a lower-case domain; an IP literal truncated; None if neither."""
    if not host:
        return None
    host = host.strip().lower().rstrip(".")
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host if _DOMAIN.match(host) else None
    # An address is no domain, and a whole one may be a person's: keep its network only.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


@dataclass
class TrendReport:
    """One day rolled up: what was read and the counts written."""

    day: dt.date
    files: int = 0
    lines_read: int = 0
    #: lines that were not a whole access event (a torn last line, a foreign line)
    skipped: int = 0
    views: int = 0
    interactions: int = 0
    exports: int = 0
    #: dimension -> value -> views, as written to ``trend_views``
    views_by: dict[str, dict[str, int]] = field(default_factory=dict)
    min_referrer_views: int = 1

    @property
    def interactions_per_view(self) -> float:
        return self.interactions / self.views if self.views else 0.0

    def lines(self) -> list[str]:
        out = [
            f"{self.day}: {self.views} views, {self.interactions} interactions, "
            f"{self.exports} exports from {self.lines_read} lines in {self.files} files"
            + (f" ({self.skipped} skipped)" if self.skipped else "")
        ]
        for dimension in DIMENSIONS:
            counts = self.views_by.get(dimension, {})
            shown = ", ".join(f"{v} {n}" for v, n in sorted(counts.items(), key=lambda i: -i[1]))
            out.append(f"  {dimension}: {shown or '-'}")
        return out


def _event(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") not in EVENTS:
        return None
    return record


def count_events(paths: Iterable[Path], day: dt.date, *, min_referrer_views: int) -> TrendReport:
    """The day's counts from its access-log files; pure, writes nothing."""
    report = TrendReport(day, min_referrer_views=min_referrer_views)
    events: Counter[str] = Counter()
    browsers: Counter[str] = Counter()
    platforms: Counter[str] = Counter()
    referrers: Counter[str] = Counter()
    for path in paths:
        report.files += 1
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if not line.strip():
                continue
            report.lines_read += 1
            record = _event(line)
            if record is None:
                report.skipped += 1
                continue
            events[record["event"]] += 1
            if record["event"] != "view":
                continue
            browser, platform = record.get("browser"), record.get("platform")
            browsers[browser if browser in BROWSERS else "Other"] += 1
            platforms[platform if platform in PLATFORMS else "Other"] += 1
            referrer = record.get("referrer")
            domain = clean_domain(referrer) if isinstance(referrer, str) else None
            referrers[domain or (OTHER_REFERRERS if referrer else NO_REFERRER)] += 1
    shown: Counter[str] = Counter()
    for domain, views in referrers.items():
        rare = domain not in (NO_REFERRER, OTHER_REFERRERS) and views < min_referrer_views
        shown[OTHER_REFERRERS if rare else domain] += views
    report.views, report.interactions, report.exports = (events[e] for e in EVENTS)
    report.views_by = {
        "browser": dict(browsers),
        "platform": dict(platforms),
        "referrer_domain": dict(shown),
    }
    return report


def _write(runtime: Runtime, report: TrendReport) -> None:
    """Replace the day's rows in one transaction: rerunning a day never duplicates."""
    with runtime.db.locked_session() as session:
        session.execute(delete(TrendView).where(TrendView.day == report.day))
        session.execute(delete(TrendInteraction).where(TrendInteraction.day == report.day))
        session.add_all(
            TrendView(day=report.day, dimension=dimension, value=value, views=views)
            for dimension, counts in report.views_by.items()
            for value, views in sorted(counts.items())
        )
        session.add(
            TrendInteraction(
                day=report.day,
                views=report.views,
                interactions=report.interactions,
                exports=report.exports,
                interactions_per_view=report.interactions_per_view,
                rolled_up_at=utcnow(),
            )
        )


def roll_up(
    runtime: Runtime, day: dt.date, *, min_referrer_views: int | None = None
) -> TrendReport:
    """Count one UTC day's access logs into ``trend_views`` and ``trend_interactions``.

    Idempotent: the day's rows are replaced, so a rerun (or a run after more lines
    arrived) leaves exactly one set of counts. A day without logs is written as zero.
    """
    settings = runtime.settings
    if min_referrer_views is None:
        min_referrer_views = settings.trend_min_referrer_views
    paths = access_log_files(settings.log_dir).get(day, [])
    report = count_events(paths, day, min_referrer_views=min_referrer_views)
    try:
        _write(runtime, report)
    except IntegrityError:
        # Another roll-up of the same day committed first (PostgreSQL): replace its rows.
        _write(runtime, report)
    return report


def pending_days(runtime: Runtime) -> list[dt.date]:
    """Days whose logs were never rolled up, or changed since: what a schedule should run."""
    files = access_log_files(runtime.settings.log_dir)
    if not files:
        return []
    with runtime.db.session() as session:
        done = dict(
            session.execute(
                select(TrendInteraction.day, TrendInteraction.rolled_up_at).where(
                    TrendInteraction.day.in_(list(files))
                )
            ).all()
        )
    return [day for day, paths in sorted(files.items()) if _stale(done.get(day), paths)]


def _stale(rolled_up_at: dt.datetime | None, paths: list[Path]) -> bool:
    if rolled_up_at is None:
        return True
    try:
        changed = max(p.stat().st_mtime for p in paths)
    except FileNotFoundError:
        return True
    return changed >= rolled_up_at.timestamp()


@dataclass(frozen=True)
class LogRetentionReport:
    removed_files: int
    removed_bytes: int
    #: days rolled up (again) just before their files went, so no count was lost
    rolled_up: tuple[dt.date, ...]
    kept_files: int


def expire_access_logs(
    runtime: Runtime, *, keep_days: int | None = None, today: dt.date | None = None
) -> LogRetentionReport:
    """Delete access-log files of days more than ``keep_days`` before today, once rolled up.

    A day that was never rolled up, or whose file changed after its roll-up, is rolled
    up first: retention never loses a count, only the raw lines.
    """
    settings = runtime.settings
    keep_days = settings.access_log_retention_days if keep_days is None else keep_days
    if keep_days < 1:
        raise ValueError("keep_days must be at least 1: today's log is still being written")
    today = today or dt.datetime.now(dt.UTC).date()
    cutoff = today - dt.timedelta(days=keep_days)
    files = access_log_files(settings.log_dir)
    stale = set(pending_days(runtime))
    removed = size = kept = 0
    rolled: list[dt.date] = []
    for day, paths in sorted(files.items()):
        if day >= cutoff:
            kept += len(paths)
            continue
        if day in stale:
            roll_up(runtime, day)
            rolled.append(day)
        for path in paths:
            try:
                nbytes = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            removed, size = removed + 1, size + nbytes
    if removed:
        log.info("access-log retention: removed %d files older than %s", removed, cutoff)
    return LogRetentionReport(removed, size, tuple(rolled), kept)


__all__ = [
    "BROWSERS",
    "DIMENSIONS",
    "EVENTS",
    "NO_REFERRER",
    "OTHER_REFERRERS",
    "PLATFORMS",
    "LogRetentionReport",
    "TrendReport",
    "access_log_file",
    "access_log_files",
    "clean_domain",
    "count_events",
    "expire_access_logs",
    "pending_days",
    "roll_up",
]


def forget_links(runtime: Runtime, link_ids: Iterable[str]) -> tuple[int, list[str]]:
    """Remove the raw access lines of erased links: (lines removed, files it could not
    read or rewrite). A file it could not handle is not skipped silently: the erasure
    reports it, and its verification fails on it.

    A link id is random and leads nowhere once its tenant is erased, but the promise is
    that nothing of the tenant's stays, so its lines go now rather than at log expiry.
    Each file is rewritten whole and swapped in; a line another process appends to the
    same file during the swap may be lost, which costs a trend count, not privacy.
    """
    wanted = set(link_ids)
    if not wanted:
        return 0, []
    removed, failed = 0, []
    for paths in access_log_files(runtime.settings.log_dir).values():
        for path in paths:
            try:
                removed += _forget_in(path, wanted)
            except OSError as exc:
                failed.append(f"access log {path.name} ({type(exc).__name__})")
    return removed, failed


def _forget_in(path: Path, wanted: set[str]) -> int:
    with path.open("rb") as handle:
        lines = handle.read().decode("utf-8", errors="replace").splitlines(True)
    kept = []
    for line in lines:
        # By text, not by parsed field: a torn line still names its link.
        if not any(link_id in line for link_id in wanted):
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return len(lines) - len(kept)
