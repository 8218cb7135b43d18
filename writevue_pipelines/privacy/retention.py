"""Retention of staging: raw records are transient, and a sweep removes any left behind.

A load deletes its connection's staged records as soon as the aggregates commit. What
a failed or killed run leaves behind goes once it is older than
``WRITEVUE_STAGING_MAX_AGE_HOURS`` (24 by default); what belongs to a connection that
no longer exists (an erased one) goes at once, whatever its age.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from ..models import Connection
from ..registry import ERASING
from ..runtime import Runtime


@dataclass(frozen=True)
class SweepReport:
    removed_entries: int
    removed_files: int
    removed_bytes: int
    kept_entries: int


def _newest_mtime(path: Path) -> float:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_mtime
    times = [path.lstat().st_mtime]
    times += [p.lstat().st_mtime for p in path.rglob("*")]
    return max(times)


def _size(path: Path) -> tuple[int, int]:
    if path.is_file() or path.is_symlink():
        return 1, path.lstat().st_size
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.lstat().st_size for p in files)


def _connection_id(name: str) -> str | None:
    try:
        return str(uuid.UUID(name))
    except ValueError:
        return None


def sweep_staging(
    runtime: Runtime,
    *,
    max_age: dt.timedelta | None = None,
    now: float | None = None,
) -> SweepReport:
    """Remove staging leftovers older than ``max_age`` and those of vanished connections."""
    staging = runtime.settings.staging_dir
    if max_age is None:
        max_age = dt.timedelta(hours=runtime.settings.staging_max_age_hours)
    if max_age.total_seconds() < 0:
        raise ValueError("max_age must not be negative")
    cutoff = (time.time() if now is None else now) - max_age.total_seconds()
    if not staging.is_dir():
        return SweepReport(0, 0, 0, 0)
    entries = sorted(staging.iterdir())
    ids = [cid for cid in (_connection_id(e.name) for e in entries) if cid]
    live: set[str] = set()
    if ids:
        with runtime.db.session() as session:
            live = set(
                session.scalars(
                    select(Connection.id).where(
                        Connection.id.in_(ids), Connection.status != ERASING
                    )
                )
            )
    removed = files = size = kept = 0
    for entry in entries:
        try:
            connection_id = _connection_id(entry.name)
            orphan = connection_id is not None and connection_id not in live
            if not orphan and _newest_mtime(entry) >= cutoff:
                kept += 1
                continue
            count, nbytes = _size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # a load finished and removed it meanwhile
        removed, files, size = removed + 1, files + count, size + nbytes
    return SweepReport(removed, files, size, kept)
