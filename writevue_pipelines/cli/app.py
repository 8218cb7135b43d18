"""The command registry: `@command` keeps a handler and its arguments together; `main` runs it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import WriteVueError
from ..settings import ConfigError
from ..vault import VaultError

#: the modules whose ``@command``s make up ``writevue``, in the order ``--help`` lists them
COMMAND_MODULES = (
    "setup",
    "tenant",
    "keys",
    "audit",
    "connection",
    "link",
    "brand",
    "template",
    "goal",
    "notify",
    "operations",
    "demo",
)


class CliError(Exception):
    """A mistake the operator can fix; the message says how."""


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call, kept until the parser is built."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    args: tuple[Arg, ...]
    handler: Callable[[argparse.Namespace], None]
    allow_abbrev: bool = True
    #: the staff-audit action it records, or False; None: not declared (a test fails)
    audit: str | Literal[False] | None = None
    #: a worked example for its ``--help`` (shown under "example:")
    example: str | None = None

    @property
    def name(self) -> str:
        return " ".join(self.path)


_GROUPS: dict[str, str] = {}
_COMMANDS: list[Command] = []


def group(name: str, help: str) -> None:
    """A command group such as ``tenant``, whose commands are ``tenant add`` and so on."""
    _GROUPS[name] = help


def command(
    path: str,
    help: str,
    *args: Arg,
    allow_abbrev: bool = True,
    audit: str | Literal[False] | None = None,
    example: str | None = None,
):
    """Register the decorated function as ``writevue <path>`` with these arguments.

    ``example``: one or more command lines (with a comment each, if wanted) shown at the
    end of its ``--help``.

    ``audit`` says where the command stands with the staff audit, and every command
    must say it (``tests/test_staff_audit.py`` fails otherwise): the action it records
    (``"tenant.show"``) if it reveals a tenant's personal data or figures or creates
    access to them, and then it takes ``--actor`` and ``--reason`` (``inputs.ACTOR``,
    ``inputs.REASON``) and records through ``inputs.staff_access``; ``False`` if it
    does neither.
    """

    def register(handler: Callable[[argparse.Namespace], None]):
        _COMMANDS.append(
            Command(tuple(path.split()), help, args, handler, allow_abbrev, audit, example)
        )
        return handler

    return register


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not a usage dump
        if message.startswith("unrecognized arguments"):
            # Never echo them: someone may have typed a secret where a flag was expected.
            message = "unrecognized arguments (not repeated here, in case one was a secret)"
        raise CliError(f"{message} (see `{self.prog} --help`)")


def commands() -> list[Command]:
    """Every registered command, its module imported first."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return list(_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="writevue", description="WriteVue operator commands.")
    top = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in commands():
        head, *rest = cmd.path
        extra: dict[str, Any] = {}
        if cmd.example:
            extra = {
                "description": cmd.help,
                "epilog": "example:\n"
                + "\n".join(f"  {line}" for line in cmd.example.splitlines()),
                "formatter_class": argparse.RawDescriptionHelpFormatter,
            }
        if rest:
            if head not in groups:
                groups[head] = top.add_parser(head, help=_GROUPS[head]).add_subparsers(
                    dest=f"{head}_command", required=True, parser_class=_Parser
                )
            sub = groups[head].add_parser(
                rest[0], help=cmd.help, allow_abbrev=cmd.allow_abbrev, **extra
            )
        else:
            sub = top.add_parser(head, help=cmd.help, allow_abbrev=cmd.allow_abbrev, **extra)
        for argument in cmd.args:
            sub.add_argument(*argument.flags, **argument.options)
        sub.set_defaults(handler=cmd.handler, audit_action=cmd.audit or None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.handler(args)
    except (CliError, WriteVueError, VaultError, ConfigError) as exc:
        print(f"writevue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("writevue: interrupted", file=sys.stderr)
        return 130
    return 0
