"""GitHub-shaped REST endpoints: owners, repositories, pull requests and commits.

They speak GitHub's wire format: ``Authorization: Bearer|token <PAT>`` (sandbox PATs
start with ``ghp_`` or ``github_pat_``; sandbox OAuth access tokens work too),
``page``/``per_page`` with ``Link`` headers, ``x-ratelimit-*`` headers on every answer,
401 ``Bad credentials``, 403 when a token's budget is spent, 409 for an empty
repository's commits.

Besides the shared fault plan (``faults``), a credential or the ``X-Sandbox-Faults``
header may carry GitHub knobs:

- ``limitN`` / ``windowN``: N requests per window of N seconds (default 5000 per 3600 s);
- ``secondaryN``: the first N requests hit a secondary rate limit (403 + ``Retry-After: 1``);
  with ``retrydate`` the ``Retry-After`` is an HTTP date two seconds ahead;
- ``abuseN``: the same without ``Retry-After`` (only the message names the limit);
- ``drift``: unknown fields, numeric strings and nulls where GitHub may send them;
- ``missing``: pull requests lack their ``created_at``.

The application counters ``github.in_flight`` and ``github.peak_in_flight`` measure how
many requests were being answered at once.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from urllib.parse import urlencode

from . import faults, github_data
from .base import SandboxHandler

try:  # the sandbox authorisation server, when present, issues OAuth access tokens
    from . import oauth
    from .oauth import account_for_access_token
except ImportError:  # pragma: no cover - only while the OAuth server is not part of the tree
    oauth = None
    account_for_access_token = None

PAT_PREFIXES = ("ghp_", "github_pat_")
DEFAULT_LIMIT = 5000
DEFAULT_WINDOW_S = 3600
ANONYMOUS_LIMIT = 60
DOCS = "https://docs.github.com/rest"
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID."
)
_KNOB = re.compile(r"^(limit|window|secondary|abuse|retrydate|drift|missing)(\d+)?$")


def knobs(*plans: str | None) -> dict[str, int]:
    """GitHub knobs from fault plans; a knob without a number counts as always on."""
    found: dict[str, int] = {}
    for plan in plans:
        for item in re.split(r"[,.]", plan or ""):
            match = _KNOB.match(item.strip().lower())
            if match:
                number = match.group(2)
                found[match.group(1)] = int(number) if number else faults.ALWAYS
    return found


class GitHubHandler(SandboxHandler):
    _counted = False
    _drift = False
    _missing = False

    def prepare(self) -> None:
        counters = self.counters
        counters["github.in_flight"] += 1
        counters["github.peak_in_flight"] = max(
            counters["github.peak_in_flight"], counters["github.in_flight"]
        )
        self._counted = True

    def on_finish(self) -> None:
        if self._counted:
            self._counted = False
            self.counters["github.in_flight"] -= 1

    def token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        for scheme in ("Bearer ", "token "):
            if header.startswith(scheme):
                return header[len(scheme) :].strip() or None
        return None

    def _account(self, token: str) -> tuple[str, str] | None:
        """(account, fault credential) for a valid token, else None."""
        if token.startswith(PAT_PREFIXES):
            return github_data.account_for_token(token), token
        if account_for_access_token is not None:
            owner = account_for_access_token(self.application.settings, token)
            if owner:
                # An OAuth account may carry a fault plan, like a PAT does.
                return owner.split(faults.SEPARATOR, 1)[0], owner
        return None

    async def authorise(self) -> str | None:
        """The account behind the request, after rate limits and faults; None if answered."""
        token = self.token()
        if token is None:
            account, credential = "anonymous", f"anonymous:{self.request.remote_ip}"
            limit: int | None = ANONYMOUS_LIMIT
        else:
            found = self._account(token)
            if found is None:
                self.count("github.unauthorised")
                self.write_json(
                    401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
                )
                return None
            account, credential = found
            limit = None
        plan_text = (
            credential.split(faults.SEPARATOR, 1)[1] if faults.SEPARATOR in credential else ""
        )
        knob = knobs(plan_text, self.request.headers.get("X-Sandbox-Faults"))
        if not self._spend(credential, knob, limit):
            return None
        if self._secondary_limit(credential, knob):
            return None
        if await self.apply_faults(credential, scope="github"):
            return None
        self._drift = "drift" in knob
        self._missing = "missing" in knob
        return account

    def _spend(self, credential: str, knob: dict[str, int], limit: int | None) -> bool:
        limit = knob.get("limit", limit or DEFAULT_LIMIT)
        window_s = knob.get("window", DEFAULT_WINDOW_S)
        buckets = self.application.settings.setdefault("github_rate_buckets", {})
        now = time.time()
        bucket = buckets.get(credential)
        if bucket is None or now >= bucket["reset"]:
            bucket = buckets[credential] = {"reset": math.ceil(now + window_s), "used": 0}
        spent = bucket["used"] >= limit
        if not spent:
            bucket["used"] += 1
        self.set_header("x-ratelimit-limit", str(limit))
        self.set_header("x-ratelimit-remaining", str(max(0, limit - bucket["used"])))
        self.set_header("x-ratelimit-reset", str(bucket["reset"]))
        self.set_header("x-ratelimit-used", str(bucket["used"]))
        self.set_header("x-ratelimit-resource", "core")
        if spent:
            self.count("github.rate_limited")
            self.write_json(
                403,
                {
                    "message": "API rate limit exceeded for user. (But here's the good news: "
                    "Authenticated requests get a higher rate limit.)",
                    "documentation_url": DOCS,
                },
            )
        return not spent

    def _secondary_limit(self, credential: str, knob: dict[str, int]) -> bool:
        seen = self.application.settings["fault_counts"]
        for kind in ("secondary", "abuse"):
            budget = knob.get(kind, 0)
            if not budget or seen[(("github", credential), kind)] >= budget:
                continue
            seen[(("github", credential), kind)] += 1
            self.count(f"fault.{kind}")
            if kind == "secondary":
                if "retrydate" in knob:
                    self.set_header(
                        "Retry-After", email.utils.formatdate(time.time() + 2, usegmt=True)
                    )
                else:
                    self.set_header("Retry-After", "1")
            self.write_json(403, {"message": SECONDARY_MESSAGE, "documentation_url": DOCS})
            return True
        return False

    def post(self, *_args) -> None:
        # GitHub would accept writes here; the sandbox counts them so tests can prove
        # that none arrive.
        self.count("github.write_attempts")
        self.write_json(405, {"message": "the sandbox is read-only", "documentation_url": DOCS})

    put = patch = delete = post

    def not_found(self) -> None:
        self.write_json(404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"})

    def write_page(self, items: list[dict]) -> None:
        """One page of a list, with GitHub's ``Link`` header for the others."""
        try:
            page = max(1, int(self.get_query_argument("page", "1")))
            per_page = min(100, max(1, int(self.get_query_argument("per_page", "30"))))
        except ValueError:
            self.write_json(422, {"message": "Validation Failed", "documentation_url": DOCS})
            return
        last = max(1, math.ceil(len(items) / per_page))
        links = []
        for rel, number in (("prev", page - 1), ("next", page + 1), ("last", last), ("first", 1)):
            at_edge = page == 1 if rel in ("prev", "first") else page >= last
            if at_edge:
                continue
            links.append(f'<{self._page_url(number, per_page)}>; rel="{rel}"')
        if links:
            self.set_header("Link", ", ".join(links))
        chunk = items[(page - 1) * per_page : page * per_page]
        self.write_json(200, [self._drifted(item) for item in chunk])

    def _page_url(self, page: int, per_page: int) -> str:
        args = {k: v[-1].decode() for k, v in self.request.query_arguments.items()}
        args.update(page=str(page), per_page=str(per_page))
        return f"{self.request.protocol}://{self.request.host}{self.request.path}?{urlencode(args)}"

    def _drifted(self, item: dict) -> dict:
        if self._missing and "merged_at" in item:
            item = {k: v for k, v in item.items() if k != "created_at"}
        if not self._drift:
            return item
        item = {**item, "x_sandbox_future_field": {"nested": [1, None, "two"]}, "license": None}
        for key in ("stargazers_count", "forks_count", "open_issues_count", "number"):
            if isinstance(item.get(key), int):
                item[key] = str(item[key])
        if "commit" in item:
            commit = dict(item["commit"])
            commit["author"] = {**commit["author"], "date": None}
            item["commit"] = commit
            item["author"] = item["committer"] = None
        return item


class UserHandler(GitHubHandler):
    async def get(self, owner: str) -> None:
        account = await self.authorise()
        if account is None:
            return
        self.count("github.users")
        profile = github_data.owner_profile(account, owner)
        if profile is None:
            self.not_found()
            return
        self.write_json(200, self._drifted(profile))


class ReposHandler(GitHubHandler):
    """``/users/{owner}/repos`` (users and organisations) and ``/orgs/{org}/repos``."""

    async def get(self, kind: str, owner: str) -> None:
        account = await self.authorise()
        if account is None:
            return
        self.count("github.repos")
        profile = github_data.owner_profile(account, owner)
        if profile is None or (kind == "orgs" and profile["type"] != "Organization"):
            self.not_found()
            return
        now = int(time.time())
        repos = [
            github_data.repository_view(account, owner, repo, now)
            for repo in github_data.repositories(account, owner)
        ]
        sort = self.get_query_argument("sort", "full_name" if kind == "users" else "created")
        key = {"created": "created_at", "updated": "updated_at", "pushed": "pushed_at"}.get(
            sort, "full_name"
        )
        default = "asc" if key == "full_name" else "desc"
        reverse = self.get_query_argument("direction", default) == "desc"
        repos.sort(key=lambda repo: (repo[key], repo["id"]), reverse=reverse)
        self.write_page(repos)


class PullsHandler(GitHubHandler):
    async def get(self, owner: str, name: str) -> None:
        account = await self.authorise()
        if account is None:
            return
        self.count("github.pulls")
        if github_data.repository(account, owner, name) is None:
            self.not_found()
            return
        pulls = github_data.list_pulls(
            account,
            owner,
            name,
            now=int(time.time()),
            state=self.get_query_argument("state", "open"),
            sort=self.get_query_argument("sort", "created"),
            direction=self.get_query_argument("direction", "desc"),
        )
        self.write_page(pulls)


class CommitsHandler(GitHubHandler):
    async def get(self, owner: str, name: str) -> None:
        account = await self.authorise()
        if account is None:
            return
        self.count("github.commits")
        repo = github_data.repository(account, owner, name)
        if repo is None:
            self.not_found()
            return
        if repo["_empty"]:
            self.write_json(409, {"message": "Git Repository is empty.", "documentation_url": DOCS})
            return
        since = self.get_query_argument("since", None)
        try:
            since_s = int(github_data.parse_iso(since)) if since else None
        except ValueError:
            self.write_json(422, {"message": "Invalid request: since", "documentation_url": DOCS})
            return
        commits = github_data.list_commits(
            account, owner, name, now=int(time.time()), since=since_s
        )
        self.write_page(commits)


class RefuseWrites(GitHubHandler):
    """Other GitHub paths that take writes (issues, comments, merges)."""


_NAME = r"([A-Za-z0-9_.-]+)"


if oauth is not None:

    class GrantHandler(oauth._ClientAuthenticated):
        """GitHub's ``DELETE /applications/{client_id}/grant``: ends an OAuth grant."""

        def delete(self, client_id: str) -> None:
            self.count("github.grant_delete")
            if self.authenticated_client() != client_id:
                self.write_json(401, {"message": "Requires authentication"})
                return
            try:
                token = json.loads(self.request.body or b"{}").get("access_token", "")
            except (ValueError, AttributeError):
                token = ""
            store = oauth._store(self.application.settings)
            entry = store.access.get(token) if isinstance(token, str) else None
            if entry is None:
                self.write_json(404, {"message": "Not Found"})
                return
            if oauth.revoke_grant(self.application.settings, entry[0]):
                self.count("oauth.revocations")
            self.set_status(204)
            self.finish()


def routes() -> list:
    # GitHub's own OAuth paths, served by the sandbox authorisation server.
    login = (
        [
            (r"/login/oauth/authorize", oauth.AuthorizeHandler),
            (r"/login/oauth/access_token", oauth.TokenHandler),
            (r"/applications/([A-Za-z0-9_.-]+)/grant", GrantHandler),
        ]
        if oauth is not None
        else []
    )
    return [
        *login,
        (rf"/users/{_NAME}", UserHandler),
        (rf"/(users|orgs)/{_NAME}/repos", ReposHandler),
        (rf"/repos/{_NAME}/{_NAME}/pulls", PullsHandler),
        (rf"/repos/{_NAME}/{_NAME}/commits", CommitsHandler),
        (r"/(?:repos|user|orgs)/.*", RefuseWrites),
    ]
