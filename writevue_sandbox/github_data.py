"""Deterministic GitHub-shaped owners, repositories, pull requests and commits per account.

Every (account, owner, repository, day) seeds its own generator, so a day's pull
requests and commits are the same whenever they are asked for, and the data grows by
itself as days pass. What a client sees depends on ``now``: a pull request created
in the future does not exist yet, one merged in the future is still open.

Owners whose login ends in ``-org`` or ``-labs`` are organisations, others users; a
login starting with ``missing`` does not exist. The first repository of every owner is
busy (more than 100 pull requests and commits a fortnight, to exercise pagination) and
the last one is empty (GitHub answers 409 for its commits).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from functools import lru_cache

HISTORY_DAYS = 400
#: the longest a pull request stays open before it is merged or closed
MAX_OPEN_DAYS = 20
#: the longest after creation that a pull request still sees activity (comments)
MAX_ACTIVITY_DAYS = 45
_EPOCH = dt.date(1970, 1, 1)
_WORDS = (
    "atlas beacon cedar delta ember falcon garnet harbor iris juniper kestrel lumen "
    "meadow nimbus orchid pepper quartz raven sierra tundra umber violet willow zephyr"
).split()


def account_for_token(token: str) -> str:
    """A personal access token's account; a fault plan after ``__f_`` does not change it."""
    return hashlib.sha256(token.split("__f_", 1)[0].encode()).hexdigest()[:16]


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def iso(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO 8601 time; one without a zone is UTC, as GitHub reads it."""
    when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _sha(*parts: object) -> str:
    """A 40-hex-digit id shaped like a git object name (not a real one)."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:40]


def _id(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def owner_profile(account: str, owner: str) -> dict | None:
    login = owner.lower()
    if login.startswith("missing"):
        return None
    is_org = login.endswith(("-org", "-labs"))
    owner_id = _id("owner", account, login)
    return {
        "login": owner,
        "id": owner_id,
        "node_id": f"MDQ6VXNlcj{owner_id}",
        "type": "Organization" if is_org else "User",
        "site_admin": False,
        "name": owner.replace("-", " ").title(),
        "public_repos": len(repositories(account, owner)),
        "created_at": iso((day_number(dt.date(2015, 1, 1)) + owner_id % 2000) * 86_400),
    }


@lru_cache(maxsize=256)
def repositories(account: str, owner: str) -> tuple[dict, ...]:
    """The owner's repositories and how busy each is (sandbox-only fields start with _)."""
    rng = random.Random(f"github:{account}:{owner.lower()}:repos")
    count = rng.randint(4, 7)
    names = rng.sample(_WORDS, count)
    repos = []
    for index, name in enumerate(names):
        busy, empty = index == 0, index == count - 1
        repos.append(
            {
                "name": name,
                "full_name": f"{owner}/{name}",
                "id": _id("repo", account, owner.lower(), name),
                "_prs_per_day": (7, 11) if busy else (0, 0) if empty else (0, 3),
                "_commits_per_day": (9, 16) if busy else (0, 0) if empty else (0, 5),
                "_stars": 0 if empty else rng.randint(3, 4000),
                "_forks": 0 if empty else rng.randint(0, 300),
                "_issues": 0 if empty else rng.randint(0, 60),
                "_empty": empty,
                "_created_day": day_number(dt.date(2019, 1, 1)) + rng.randint(0, 900),
            }
        )
    return tuple(repos)


def repository(account: str, owner: str, name: str) -> dict | None:
    for repo in repositories(account, owner):
        if repo["name"].lower() == name.lower():
            return repo
    return None


def snapshot(repo: dict, day_no: int) -> dict[str, int]:
    """Stars, forks and open issues on a day: they grow slowly and wobble a little."""
    if repo["_empty"]:
        return {"stargazers_count": 0, "forks_count": 0, "open_issues_count": 0}
    age = max(0, day_no - repo["_created_day"])
    wobble = random.Random(f"{repo['id']}:{day_no}").randint(0, 3)
    return {
        "stargazers_count": repo["_stars"] + age // 3 + wobble,
        "forks_count": repo["_forks"] + age // 40,
        "open_issues_count": repo["_issues"] + (day_no % 9) + wobble,
    }


def repository_view(account: str, owner: str, repo: dict, now: int) -> dict:
    """The repository as GitHub's list endpoints show it at ``now``."""
    counts = snapshot(repo, now // 86_400)
    api = f"https://api.github.com/repos/{repo['full_name']}"
    created = repo["_created_day"] * 86_400 + repo["id"] % 86_400
    profile = owner_profile(account, owner) or {}
    return {
        "id": repo["id"],
        "node_id": f"R_kgDO{repo['id']}",
        "name": repo["name"],
        "full_name": repo["full_name"],
        "private": False,
        "owner": {
            "login": owner,
            "id": profile.get("id"),
            "type": profile.get("type"),
        },
        "html_url": f"https://github.com/{repo['full_name']}",
        "description": None if repo["id"] % 3 == 0 else f"The {repo['name']} project",
        "fork": False,
        "url": api,
        "pulls_url": f"{api}/pulls{{/number}}",
        "created_at": iso(created),
        "updated_at": iso(now - now % 3600),
        "pushed_at": iso(now - now % 3600),
        "size": 0 if repo["_empty"] else 1000 + repo["id"] % 50_000,
        "stargazers_count": counts["stargazers_count"],
        "watchers_count": counts["stargazers_count"],
        "language": None if repo["_empty"] else "Python",
        "forks_count": counts["forks_count"],
        "archived": False,
        "disabled": False,
        "open_issues_count": counts["open_issues_count"],
        "topics": [],
        "visibility": "public",
        "forks": counts["forks_count"],
        "open_issues": counts["open_issues_count"],
        "watchers": counts["stargazers_count"],
        "default_branch": "main",
    }


@lru_cache(maxsize=8192)
def pulls_for_day(account: str, full_name: str, repo_id: int, rate: tuple[int, int], day_no: int):
    """The pull requests created on a day, with when each closes and whether it merges."""
    rng = random.Random(f"github:{account}:{full_name.lower()}:pulls:{day_no}")
    pulls = []
    for index in range(rng.randint(*rate)):
        created = day_no * 86_400 + rng.randint(0, 86_399)
        closes = created + rng.randint(600, MAX_OPEN_DAYS * 86_400)
        merges = rng.random() < 0.7
        abandoned = not merges and rng.random() < 0.5  # never closed
        activity = created + rng.randint(60, MAX_ACTIVITY_DAYS * 86_400)
        pulls.append(
            {
                "number": (day_no - 17_000) * 100 + index + 1,
                "id": _id("pull", repo_id, day_no, index),
                "created": created,
                "closes": None if abandoned else closes,
                "merges": merges and not abandoned,
                "activity": activity,
                "user": f"dev{rng.randint(1, 12)}",
            }
        )
    return tuple(pulls)


def pull_view(full_name: str, pull: dict, now: int) -> dict | None:
    """A pull request as GitHub lists it at ``now``; None if it does not exist yet."""
    if pull["created"] > now:
        return None
    closed = pull["closes"] is not None and pull["closes"] <= now
    merged_at = iso(pull["closes"]) if closed and pull["merges"] else None
    updated = max(t for t in (pull["created"], pull["closes"], pull["activity"]) if t and t <= now)
    number = pull["number"]
    return {
        "url": f"https://api.github.com/repos/{full_name}/pulls/{number}",
        "id": pull["id"],
        "node_id": f"PR_kwDO{pull['id']}",
        "number": number,
        "state": "closed" if closed else "open",
        "locked": False,
        "title": f"Change {number}",
        "user": {"login": pull["user"], "type": "User"},
        "body": None,
        "created_at": iso(pull["created"]),
        "updated_at": iso(updated),
        "closed_at": iso(pull["closes"]) if closed else None,
        "merged_at": merged_at,
        "merge_commit_sha": _sha(pull["id"]) if merged_at else None,
        "draft": False,
        "labels": [],
        "author_association": "MEMBER",
    }


def all_pulls(account: str, owner: str, name: str, now: int) -> list[dict]:
    """Every pull request of a repository as GitHub shows it at ``now``, newest first."""
    return list(_pull_views(account, owner, name, now))


@lru_cache(maxsize=32)
def _pull_views(account: str, owner: str, name: str, now: int) -> tuple[dict, ...]:
    # Cached per second: the pages of one listing are usually asked for within it.
    repo = repository(account, owner, name)
    if repo is None:
        return ()
    today = now // 86_400
    views = []
    for day_no in range(max(repo["_created_day"], today - HISTORY_DAYS), today + 1):
        for pull in pulls_for_day(
            account, repo["full_name"], repo["id"], repo["_prs_per_day"], day_no
        ):
            view = pull_view(repo["full_name"], pull, now)
            if view is not None:
                views.append(view)
    views.sort(key=lambda view: view["number"], reverse=True)
    return tuple(views)


def list_pulls(
    account: str,
    owner: str,
    name: str,
    *,
    now: int,
    state: str = "open",
    sort: str = "created",
    direction: str = "desc",
) -> list[dict]:
    pulls = all_pulls(account, owner, name, now)
    if state != "all":
        pulls = [pull for pull in pulls if pull["state"] == state]
    key = {"created": "created_at", "updated": "updated_at"}.get(sort, "created_at")
    pulls.sort(key=lambda pull: (pull[key], pull["number"]), reverse=direction == "desc")
    return pulls


@lru_cache(maxsize=8192)
def commits_for_day(account: str, full_name: str, rate: tuple[int, int], day_no: int):
    """The commits authored on a day; each is committed up to three hours later."""
    rng = random.Random(f"github:{account}:{full_name.lower()}:commits:{day_no}")
    commits = []
    for index in range(rng.randint(*rate)):
        authored = day_no * 86_400 + rng.randint(0, 86_399)
        committed = authored + rng.randint(0, 3 * 3600)
        sha = _sha(account, full_name, day_no, index)
        commits.append({"sha": sha, "authored": authored, "committed": committed})
    return tuple(commits)


def commit_view(full_name: str, commit: dict) -> dict:
    sha = commit["sha"]
    who = {"name": "Dev Eloper", "email": "dev@example.test"}
    return {
        "sha": sha,
        "node_id": f"C_kwDO{sha[:12]}",
        "commit": {
            "author": {**who, "date": iso(commit["authored"])},
            "committer": {**who, "date": iso(commit["committed"])},
            "message": f"Commit {sha[:7]}",
            "comment_count": 0,
        },
        "url": f"https://api.github.com/repos/{full_name}/commits/{sha}",
        "html_url": f"https://github.com/{full_name}/commit/{sha}",
        "author": {"login": "dev1", "type": "User"},
        "committer": {"login": "web-flow", "type": "User"},
        "parents": [],
    }


def list_commits(
    account: str, owner: str, name: str, *, now: int, since: int | None = None
) -> list[dict]:
    """Commits of the default branch committed by ``now`` (and since ``since``), newest first."""
    repo = repository(account, owner, name)
    if repo is None:
        return []
    today = now // 86_400
    first = max(repo["_created_day"], today - HISTORY_DAYS)
    if since is not None:
        first = max(first, since // 86_400 - 1)  # committed up to 3 h after authoring
    found = []
    for day_no in range(first, today + 1):
        for commit in commits_for_day(account, repo["full_name"], repo["_commits_per_day"], day_no):
            if commit["committed"] > now:
                continue
            if since is not None and commit["committed"] < since:
                continue
            found.append(commit)
    found.sort(key=lambda commit: (commit["committed"], commit["sha"]), reverse=True)
    return [commit_view(repo["full_name"], commit) for commit in found]
