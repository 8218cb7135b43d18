"""GitHub: stars, forks, issues, pull requests and commits of an owner's repositories.

Reads the REST API (``Accept: application/vnd.github+json``, API version 2022-11-28),
following ``Link`` headers (``rel="next"``, 100 items a page) and only to the host it
started on. Credentials: a personal access token (``api_key``, sent as a Bearer token;
a fine-grained token with read-only Metadata, Contents and Pull requests access is
enough) or an OAuth app grant (``oauth2``).

What is fetched and how it becomes facts (dimension = the repository's ``full_name``):

- **Events** are counted per UTC day: pull requests opened (``created_at``), pull
  requests merged (``merged_at``) and commits on the default branch (the committer's
  date, which is what ``since`` filters on, else the author's). Pull requests are read
  newest-*updated* first and the walk stops at the window start: merging updates a pull
  request, so this also finds old pull requests merged inside the window, which a walk
  by creation date would miss. Only events inside the window are kept, so every day the
  refresh rewrites is complete.
- **Snapshots** (stars, forks, open issues — GitHub counts open pull requests among
  them) have no history in the API: each refresh stores one fact per repository for the
  refresh day (UTC) with today's value; a later refresh the same day overwrites it, and
  earlier days keep the value their own refresh saw. ``snapshot_metrics`` names them so
  the warehouse can keep those earlier days when a later refresh does not report them.

The cursor is the newest event time seen (ISO 8601); the window start already includes
the lookback. Drift: unknown fields are ignored, counts may arrive as numeric strings,
nulls where GitHub allows them are tolerated (a null count is no fact, not a zero), and a
missing required field (``full_name``, ``number``, ``created_at``, a commit's ``sha`` or
date) fails that connection with a ``SourceError``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import polars as pl

from ..aggregates_only import MAX_VALUES_LIMIT
from ..errors import InvalidInput, SourceError
from ..registry import ConnectionInfo
from ..warehouse import FACT_SCHEMA
from .auth import ApiKeyPlacement, OAuthSpec
from .base import Dimension, FetchRequest, FetchResult, MetricKind, Polarity, Source
from .http import get_json
from .paginators import HeaderLinkPaginator, PagesSeen
from .urls import LeavesOrigin, same_origin_url

API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
PAGE_SIZE = 100
PAGES = HeaderLinkPaginator()
_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
OWNER_TYPES = ("auto", "user", "org")

EVENT_METRICS = ("pull_requests_opened", "pull_requests_merged", "commits")
SNAPSHOT_METRICS = ("stars", "forks", "open_issues")
_SNAPSHOT_FIELDS = {
    "stars": "stargazers_count",
    "forks": "forks_count",
    "open_issues": "open_issues_count",
}

RAW_SCHEMA = {
    "metric": pl.String,
    "repo": pl.String,
    "at": pl.Int64,  # epoch seconds, UTC
    "key": pl.String,  # pull request number or commit sha; "" for snapshots
    "value": pl.Float64,
}


class GitHubSource(Source):
    name = "github"
    title = "GitHub"
    description = (
        "Repositories of a user or organisation: stars, forks, open issues, "
        "pull requests opened and merged, and commits per day."
    )
    auth_kinds = ("oauth2", "api_key")
    default_base_url = "https://api.github.com"
    options = {
        "base_url": "API root; defaults to https://api.github.com",
        "owner": "the user or organisation whose repositories are read (its login)",
        "owner_type": "user, org or auto (default: ask GitHub)",
    }
    metrics = {
        "stars": "Stars",
        "forks": "Forks",
        "open_issues": "Open issues and pull requests",
        "pull_requests_opened": "Pull requests opened",
        "pull_requests_merged": "Pull requests merged",
        "commits": "Commits",
    }
    metric_kinds: ClassVar[dict[str, MetricKind]] = {
        **dict.fromkeys(EVENT_METRICS, "counter"),
        **dict.fromkeys(SNAPSHOT_METRICS, "gauge"),
    }
    metric_polarity: ClassVar[dict[str, Polarity]] = {"open_issues": "up_bad"}
    #: the repository's ``full_name`` (owner/name): the client's own repositories, named by
    #: the client, which identify projects rather than people, so they are declared a code
    #: (a name such as ``acme/app-3f9c2e71b0d4`` is not refused as a random id). Up to the
    #: largest cap: an owner with more repositories reporting on one day is refused.
    dimension: ClassVar[Dimension] = Dimension(
        "repository full_name", max_values=MAX_VALUES_LIMIT, code=True
    )
    #: metrics stored as one value per repository for the refresh day (see module docstring)
    snapshot_metrics: ClassVar[frozenset[str]] = frozenset(SNAPSHOT_METRICS)
    stream = "activity"
    #: requests in flight to GitHub per process (``open_client(max_in_flight=...)``):
    #: GitHub asks integrations not to fire many requests at once (secondary limits)
    max_in_flight: ClassVar[int] = 4
    api_key_placement = ApiKeyPlacement(header="Authorization", prefix="Bearer ")
    # Public repositories need no scope; read:org lets the grant list an organisation's
    # repositories the user can see. GitHub revokes grants with a DELETE on
    # /applications/{client_id}/grant, which RFC 7009 revocation does not describe.
    oauth = OAuthSpec(
        base_url="https://github.com",
        authorize_path="/login/oauth/authorize",
        token_path="/login/oauth/access_token",  # noqa: S106 - a path, not a secret
        revoke_path="https://api.github.com/applications/{client_id}/grant",
        revoke_style="github_grant",
        scopes=("read:org",),
    )

    def account_label(self, connection: ConnectionInfo) -> str:
        return str(connection.options.get("owner") or "")

    def validate_options(self, options: dict[str, str]) -> dict[str, str]:
        options = dict(super().validate_options(options))
        owner = str(options.get("owner") or "").strip()
        if not _LOGIN.fullmatch(owner):
            raise InvalidInput(
                "Source 'github' needs the option owner=LOGIN, the user or organisation "
                "name as in github.com/LOGIN (letters, digits and hyphens)."
            )
        owner_type = str(options.get("owner_type") or "auto").strip().lower()
        if owner_type not in OWNER_TYPES:
            raise InvalidInput("Option owner_type must be user, org or auto.")
        return {**options, "owner": owner, "owner_type": owner_type}

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        started = time.perf_counter()
        walk = _Walk(client, request, self.base_url(request.connection))
        owner, owner_type = _owner(request.connection)
        if owner_type == "auto":
            owner_type = await _owner_type(walk, owner)
        if owner_type == "org":
            repos = await walk.collect(f"/orgs/{owner}/repos", {"type": "all"})
        else:
            repos = await walk.collect(f"/users/{owner}/repos", {"type": "owner"})

        since = dt.datetime.combine(request.window_start, dt.time(), dt.UTC)
        since_s = int(since.timestamp())
        now_s = int(time.time())
        rows: list[dict] = []
        names: list[str] = []
        for repo in repos:
            name = walk.required_text(repo, "full_name", "a repository")
            names.append(name)
            for metric, field in _SNAPSHOT_FIELDS.items():
                value = walk.count(repo, field, f"repository {name}")
                if value is not None:
                    rows.append(_row(metric, name, now_s, "", float(value)))

        try:
            async with asyncio.TaskGroup() as group:
                for name in names:
                    group.create_task(_pulls(walk, name, since_s, rows))
                    group.create_task(_commits(walk, name, since, rows))
        except ExceptionGroup as failures:
            # One repository's failure fails the connection; report it, not the group.
            raise failures.exceptions[0] from None

        records = pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row")
        events = records.filter(pl.col("metric").is_in(EVENT_METRICS))
        newest = events["at"].max() if events.height else None
        next_cursor = _iso(int(newest)) if newest is not None else request.cursor
        return FetchResult(
            records=records,
            next_cursor=next_cursor,
            requests=walk.requests,
            latency_s=time.perf_counter() - started,
        )

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        if records.height == 0:
            return pl.DataFrame(schema=FACT_SCHEMA)
        frame = records.with_columns(pl.from_epoch("at", time_unit="s").dt.date().alias("day"))
        events = (
            frame.filter(pl.col("metric").is_in(EVENT_METRICS))
            .unique(subset=["metric", "repo", "key"], keep="first")
            .group_by("metric", "repo", "day")
            .agg(pl.len().cast(pl.Float64).alias("value"))
        )
        snapshots = (
            frame.filter(pl.col("metric").is_in(SNAPSHOT_METRICS))
            .sort("at")
            .group_by("metric", "repo", "day")
            .agg(pl.col("value").last())
        )
        columns = ["metric", "repo", "day", "value"]
        return (
            pl.concat([events.select(columns), snapshots.select(columns)])
            .rename({"repo": "dimension"})
            .sort("metric", "dimension", "day")
        )


# -- the walk over one connection's API ----------------------------------------------------------


@dataclass
class _Walk:
    client: httpx.AsyncClient
    request: FetchRequest
    base_url: str
    requests: int = 0

    @property
    def connection_id(self) -> str:
        return self.request.connection.id

    def error(self, message: str, status: int | None = None) -> SourceError:
        return SourceError.of_connection(self.connection_id, message, status=status)

    async def get(self, path: str, params: dict[str, Any] | None = None):
        self.requests += 1  # a request that fails still counts
        return await get_json(
            self.client,
            path,
            connection_id=self.connection_id,
            params=params,
            headers=API_HEADERS,
            auth=self.request.auth,
        )

    async def collect(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        stop: Callable[[dict], bool] | None = None,
    ) -> list[dict]:
        """Every item of a list endpoint, page after page, until ``stop`` says an item is
        past the window (the list is sorted newest first)."""
        items: list[dict] = []
        page = PAGES.first(path, {**(params or {}), "per_page": PAGE_SIZE})
        url = page.url
        seen = PagesSeen()
        while True:
            if not seen.advances(url, page.params):
                raise self.error(f"{path} pagination does not advance (the same page again)")
            body, response = await self.get(url, page.params)
            if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
                raise self.error(f"{path} answered something other than a list of objects")
            items.extend(body)
            if not body or (stop is not None and stop(body[-1])):
                return items
            page = PAGES.next(page, body, response, body)
            if page is None:
                return items
            try:
                url = same_origin_url(self.base_url, page.url)
            except LeavesOrigin:
                raise self.error(
                    f"{path} pointed its next page at another host; WriteVue does not follow it"
                ) from None

    def required_text(self, item: dict, field: str, what: str) -> str:
        value = item.get(field)
        if value is None or value == "":
            raise self.error(f"{what} lacks the required field {field!r}")
        return str(value)

    def count(self, item: dict, field: str, what: str) -> int | None:
        if field not in item:
            raise self.error(f"{what} lacks the required field {field!r}")
        return _count(item[field], lambda: self.error(f"{what} has a non-numeric {field!r}"))

    def timestamp(self, value: Any, field: str, what: str) -> int | None:
        if value is None or value == "":
            return None
        try:
            when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise self.error(f"{what} has an unreadable {field!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp())


def _owner(connection: ConnectionInfo) -> tuple[str, str]:
    owner = str(connection.options.get("owner") or "")
    owner_type = str(connection.options.get("owner_type") or "auto").lower()
    if not _LOGIN.fullmatch(owner) or owner_type not in OWNER_TYPES:
        raise SourceError.of_connection(
            connection.id, "the GitHub owner option is missing or not a login"
        )
    return owner, owner_type


async def _owner_type(walk: _Walk, owner: str) -> str:
    try:
        profile, _ = await walk.get(f"/users/{owner}")
    except SourceError as exc:
        if exc.status == 404:
            raise walk.error(
                f"GitHub has no user or organisation {owner!r}; check the owner option", 404
            ) from None
        raise
    if not isinstance(profile, dict):
        raise walk.error(f"/users/{owner} answered something other than an object")
    return "org" if profile.get("type") == "Organization" else "user"


async def _pulls(walk: _Walk, repo: str, since_s: int, rows: list[dict]) -> None:
    what = f"a pull request of {repo}"

    def updated(pull: dict) -> int:
        # A drifted pull request without updated_at counts as updated when created.
        stamp = walk.timestamp(pull.get("updated_at"), "updated_at", what)
        return stamp if stamp is not None else created(pull)

    def created(pull: dict) -> int:
        stamp = walk.timestamp(pull.get("created_at"), "created_at", what)
        if stamp is None:
            raise walk.error(f"{what} lacks the required field 'created_at'")
        return stamp

    pulls = await walk.collect(
        f"/repos/{repo}/pulls",
        {"state": "all", "sort": "updated", "direction": "desc"},
        stop=lambda pull: updated(pull) < since_s,
    )
    for pull in pulls:
        number = walk.required_text(pull, "number", what)
        opened = created(pull)
        if opened >= since_s:
            rows.append(_row("pull_requests_opened", repo, opened, number, 1.0))
        merged = walk.timestamp(pull.get("merged_at"), "merged_at", what)
        if merged is not None and merged >= since_s:
            rows.append(_row("pull_requests_merged", repo, merged, number, 1.0))


async def _commits(walk: _Walk, repo: str, since: dt.datetime, rows: list[dict]) -> None:
    what = f"a commit of {repo}"
    since_s = int(since.timestamp())
    try:
        commits = await walk.collect(
            f"/repos/{repo}/commits", {"since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}
        )
    except SourceError as exc:
        if exc.status == 409:  # GitHub's answer for an empty repository
            return
        raise
    for commit in commits:
        sha = walk.required_text(commit, "sha", what)
        detail = commit.get("commit") if isinstance(commit.get("commit"), dict) else {}
        stamp = None
        for role in ("committer", "author"):
            person = detail.get(role)
            if isinstance(person, dict):
                stamp = walk.timestamp(person.get("date"), f"commit.{role}.date", what)
            if stamp is not None:
                break
        if stamp is None:
            raise walk.error(f"{what} lacks the required field 'commit.committer.date'")
        if stamp >= since_s:
            rows.append(_row("commits", repo, stamp, sha, 1.0))


def _row(metric: str, repo: str, at: int, key: str, value: float) -> dict:
    return {"metric": metric, "repo": repo, "at": at, "key": key, "value": value}


def _count(value: Any, error: Callable[[], SourceError]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise error()
    if isinstance(value, int):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise error() from None
    if not number.is_integer():
        raise error()
    return int(number)


def _iso(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
