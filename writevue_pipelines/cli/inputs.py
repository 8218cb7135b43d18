"""What commands read from the operator: secrets (never as arguments), options, the runtime."""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..runtime import Runtime
from .app import CliError, arg

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: the variable a script (or a session) gives its staff-audit reason in
AUDIT_REASON_ENV = "WRITEVUE_AUDIT_REASON"

#: the ``--actor`` flag of every audited command (``@command(..., audit="action")``)
ACTOR = arg("--actor", help="who is running this, for the staff audit (default: the OS user)")
#: the ``--reason`` flag of every audited command
REASON = arg(
    "--reason",
    metavar="TEXT",
    help=f"why, for the staff audit: a ticket, not personal data (default: ${AUDIT_REASON_ENV}; "
    "required in a terminal, 'unspecified' in a script)",
)


@dataclass(frozen=True)
class StaffAccess:
    """Who is about to reveal a tenant's data or create access to it, and why."""

    actor: str
    reason: str
    action: str

    def record(self, runtime: Runtime, tenant_id: str | None, **details: Any) -> None:
        """Record it in its own commit, before the data is shown or read. With no tenant
        id (a list of many tenants) ``details`` say how many: ids of other tenants would
        outlive their erasure."""
        from ..privacy.audit import record_access

        record_access(runtime, self.actor, self.action, tenant_id, reason=self.reason, **details)

    def record_in(self, session: Session, tenant_id: str | None, **details: Any) -> None:
        """Record it in the caller's transaction: with the access it creates, or not at all."""
        from .. import registry

        registry.audit(session, self.actor, self.action, tenant_id, reason=self.reason, **details)


def staff_access(args) -> StaffAccess:
    """The actor and reason of an audited command, checked before it does anything.

    The reason is ``--reason``, else ``$WRITEVUE_AUDIT_REASON``; without either a command
    run in a terminal is refused (staff can say why) and one run by a script records
    "unspecified".
    """
    from ..privacy.audit import UNSPECIFIED, audit_reason, operator_name

    action = getattr(args, "audit_action", None)
    if not action:
        raise RuntimeError("staff_access is for commands registered with audit='action'")
    actor = operator_name(args.actor)
    reason = args.reason
    if reason is None:
        reason = os.environ.get(AUDIT_REASON_ENV, "").strip() or None
    if reason is not None:
        reason = audit_reason(reason)
    elif sys.stdin is not None and sys.stdin.isatty():
        raise CliError(
            f"`{action}` is recorded in the staff audit with a reason: add --reason TEXT "
            f"(a ticket, not personal data) or set {AUDIT_REASON_ENV}."
        )
    else:
        reason = UNSPECIFIED
    return StaffAccess(actor, reason, action)


def read_secret(
    what: str, *, env_var: str | None = None, flag: str | None = None, one_line: bool = False
) -> str:
    """A secret from the variable named ``env_var``, else a hidden prompt, else stdin.

    With ``flag`` (the option that names the variable) an empty answer is refused with
    a message naming both ways to give it. ``one_line`` reads one line of stdin.
    """
    if env_var:
        value = _from_env(env_var)
    elif sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"{what} (input hidden): ")
    elif sys.stdin is None:
        value = ""
    else:
        value = sys.stdin.readline() if one_line else sys.stdin.read()
    value = value.rstrip("\r\n")
    if flag and not value.strip():
        raise InvalidInput(f"The {what} is empty; pass it on stdin or name a variable with {flag}.")
    return value


def _from_env(env_var: str) -> str:
    # A value that is no variable name may be a secret typed in the wrong place: not echoed.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_var):
        raise InvalidInput("That is not an environment variable name; give the variable's name.")
    value = os.environ.get(env_var)
    if value is None:
        raise InvalidInput(f"Environment variable {env_var} is not set.")
    return value


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``--option KEY=VALUE`` flags as a dict; a malformed or repeated one is refused."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--option {pair!r} is not KEY=VALUE.")
        if key in options:
            raise InvalidInput(f"--option {key} is given twice.")
        options[key] = value.strip()
    return options


# -- ids by prefix -------------------------------------------------------------------


@dataclass(frozen=True)
class IdKind:
    """What an id argument names, where its ids live, and what a wrong one is told."""

    what: str
    #: "module:Model.column" of every column that holds such ids
    columns: tuple[str, ...]
    #: the message an unknown id gets (the same as the command's own lookup gives)
    not_found: str

    def column_objects(self) -> list:
        import importlib

        found = []
        for path in self.columns:
            module, _, attribute = path.partition(":")
            model, _, column = attribute.partition(".")
            found.append(getattr(getattr(importlib.import_module(module), model), column))
        return found


_TENANT = IdKind(
    "tenant",
    # an erased tenant's id lives on in its erasure record (`tenant erase`, `audit list`)
    ("writevue_pipelines.models:Tenant.id", "writevue_pipelines.models:DeletionRequest.tenant_id"),
    "No tenant with id {id}; `writevue tenant list` shows them.",
)
_CONNECTION = IdKind(
    "connection", ("writevue_pipelines.models:Connection.id",), "No connection with id {id}."
)
#: argument name (its ``dest``) -> what its ids name; every command's id arguments are
#: resolved from this table before the command runs (tests/test_connection_commands.py
#: fails for an id-like argument missing here)
ID_ARGUMENTS: dict[str, IdKind] = {
    "tenant_id": _TENANT,
    "tenant_ids": _TENANT,
    "tenant": _TENANT,
    "connection_id": _CONNECTION,
    "connection": _CONNECTION,
    "reconnect": _CONNECTION,
    "link_id": IdKind(
        "dashboard link",
        ("writevue_pipelines.models:DashboardLink.id",),
        "No dashboard link with id {id}.",
    ),
    "goal_id": IdKind(
        "goal",
        ("writevue_pipelines.models:Goal.id",),
        "No goal with id {id}; `writevue goal list TENANT_ID` shows them.",
    ),
    "scorecard_id": IdKind(
        "scorecard",
        ("writevue_pipelines.models:Scorecard.id",),
        "No scorecard with id {id}; `writevue scorecard list TENANT_ID` shows them.",
    ),
    "alert_id": IdKind(
        "alert",
        ("writevue_pipelines.models:AlertRule.id",),
        "No alert with id {id}; `writevue alert list TENANT_ID` shows them.",
    ),
    "request_id": IdKind(
        "erasure request",
        ("writevue_pipelines.models:DeletionRequest.id",),
        "No erasure request {id}; `writevue audit list` shows them.",
    ),
}
_FULL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_ID_PREFIX = re.compile(r"^[0-9a-fA-F][0-9a-fA-F-]*$")


def has_id_prefixes(args) -> bool:
    """Whether any id argument is a prefix that ``resolve_ids`` would look up."""
    for dest in ID_ARGUMENTS:
        value = getattr(args, dest, None)
        values = value if isinstance(value, list) else [value]
        if any(_is_prefix(v) for v in values):
            return True
    return False


def resolve_ids(args) -> None:
    """Replace every id prefix among a command's parsed arguments by the full id it names.

    Like git: an unambiguous prefix of at least ``registry.MIN_ID_PREFIX`` characters
    names its id; an ambiguous one gets one line saying how many match; one that
    matches nothing gets the command's own not-found message. A full id, and anything
    that is no id prefix at all, is left for the command to check as before.
    """
    runtime = None
    try:
        for dest, kind in ID_ARGUMENTS.items():
            value = getattr(args, dest, None)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if not any(_is_prefix(v) for v in values):
                continue
            if runtime is None:
                runtime = ready_runtime()
            with runtime.db.session() as session:
                resolved = [_resolve(session, kind, v) if _is_prefix(v) else v for v in values]
            setattr(args, dest, resolved if isinstance(value, list) else resolved[0])
    finally:
        if runtime is not None:
            runtime.close()


def _is_prefix(value) -> bool:
    return isinstance(value, str) and bool(_ID_PREFIX.match(value)) and not _FULL_ID.match(value)


def _resolve(session, kind: IdKind, value: str) -> str:
    from .. import registry
    from ..errors import NotFound

    prefix = value.lower()
    if len(prefix) < registry.MIN_ID_PREFIX:
        raise InvalidInput(
            f"{kind.what.capitalize()} id {value!r} is too short: give at least "
            f"{registry.MIN_ID_PREFIX} characters of it."
        )
    found = registry.ids_with_prefix(session, prefix, kind.column_objects())
    if not found:
        raise NotFound(kind.not_found.format(id=value))
    if len(found) > 1:
        raise InvalidInput(
            f"{len(found)} {kind.what}s have ids beginning {value!r}; give more characters."
        )
    return found[0]


def ready_runtime() -> Runtime:
    """The runtime of an initialised home; otherwise one line saying to run `writevue init`."""
    runtime = Runtime.from_env()
    settings = runtime.settings
    if not settings.keys_from_env and not settings.key_file.exists():
        raise CliError(
            f"WriteVue is not initialised in {settings.home}; run `writevue init` first."
        )
    from ..database import current_revision

    if current_revision(settings.database_url) is None:
        raise CliError("The warehouse has no schema yet; run `writevue init` first.")
    return runtime
