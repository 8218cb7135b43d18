"""The command registry: `@command` keeps a handler and its arguments together; `main` runs it."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import WriteVueError
from ..settings import ConfigError
from ..vault import VaultError
from .progress import plural

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
    "doctor",
    "demo",
)


class CliError(Exception):
    """A mistake the operator can fix; the message says how."""


class _GroupHelp(Exception):
    """A command group run without a subcommand: its help (the subcommands) is the answer."""

    def __init__(self, help_text: str):
        super().__init__(help_text)
        self.help_text = help_text


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
    #: more ``--help`` text (the sources and their options), made only when help is shown
    details: Callable[[], str] | None = None
    #: False: ``--help`` goes to the command (``writevue sandbox`` passes it on)
    add_help: bool = True

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
    details: Callable[[], str] | None = None,
    add_help: bool = True,
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
            Command(
                tuple(path.split()),
                help,
                args,
                handler,
                allow_abbrev,
                audit,
                example,
                details,
                add_help=add_help,
            )
        )
        return handler

    return register


class _Parser(argparse.ArgumentParser):
    #: a command's ``details``: computed into the epilog only when its help is shown
    details: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.details is not None:
            self.epilog = "\n\n".join(part for part in (self.details(), self.epilog) if part)
            self.details = None
        return super().format_help()

    def error(self, message: str):  # one line, not a usage dump
        if message.startswith("unrecognized arguments"):
            # Never echo them: someone may have typed a secret where a flag was expected.
            message = "unrecognized arguments (not repeated here, in case one was a secret)"
        raise CliError(f"{message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but arguments no command takes are refused by the command that
        was run (its ``--help`` is the one to read), naming the unknown options only:
        ``--reason``, never what follows ``=`` nor a stray value, which may be a secret."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            names = sorted({e.split("=", 1)[0] for e in extras if _option_name(e)})
            values = len(extras) - sum(1 for e in extras if _option_name(e))
            said = [", ".join(names)] if names else []
            if values:
                said.append(f"{plural(values, 'value')} not repeated in case one is a secret")
            raise CliError(
                f"unrecognized arguments: {' and '.join(said)} "
                f"(see `{_command_prog(parsed)} --help`)"
            )
        return parsed


def _option_name(text: str) -> bool:
    """``--reason`` or ``--api-key=…``: a long flag's name, which is no secret (what
    follows ``=`` may be); anything else an operator typed is not repeated."""
    name = text.split("=", 1)[0]
    return bool(re.fullmatch(r"--[a-z][a-z-]{0,30}", name))


def _command_prog(parsed: argparse.Namespace) -> str:
    """``writevue tenant add``: the command a parse reached, from its subcommand fields."""
    path = ["writevue"]
    head = getattr(parsed, "command", None)
    if head:
        path.append(head)
        sub = getattr(parsed, f"{head}_command", None)
        if sub:
            path.append(sub)
    return " ".join(path)


def commands() -> list[Command]:
    """Every registered command, its module imported first."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return list(_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="writevue", description="WriteVue operator commands.")
    parser.set_defaults(handler=_show_help(parser), audit_action=None)
    top = parser.add_subparsers(dest="command", required=False, parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in commands():
        head, *rest = cmd.path
        # Its --help says what it does first, as the group's list does.
        extra: dict[str, Any] = {"description": cmd.help}
        if cmd.example or cmd.details:
            extra |= {
                "epilog": "example:\n" + "\n".join(f"  {line}" for line in cmd.example.splitlines())
                if cmd.example
                else None,
                "formatter_class": argparse.RawDescriptionHelpFormatter,
            }
        if rest:
            if head not in groups:
                group_parser = top.add_parser(head, help=_GROUPS[head], description=_GROUPS[head])
                # Without a subcommand the group shows its help, listing them (exit 2).
                group_parser.set_defaults(
                    handler=_show_help(group_parser), audit_action=None, **{f"{head}_command": None}
                )
                groups[head] = group_parser.add_subparsers(
                    dest=f"{head}_command", required=False, parser_class=_Parser
                )
            sub = groups[head].add_parser(
                rest[0], help=cmd.help, allow_abbrev=cmd.allow_abbrev, **extra
            )
        else:
            sub = top.add_parser(
                head,
                help=cmd.help,
                allow_abbrev=cmd.allow_abbrev,
                add_help=cmd.add_help,
                **extra,
            )
        sub.details = cmd.details
        for argument in cmd.args:
            sub.add_argument(*argument.flags, **argument.options)
        sub.set_defaults(handler=cmd.handler, audit_action=cmd.audit or None)
    return parser


def _show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], None]:
    def show(_args: argparse.Namespace) -> None:
        raise _GroupHelp(parser.format_help())

    return show


def _pass_through(argv: Sequence[str]) -> argparse.Namespace | None:
    """A command registered with ``add_help=False`` takes every argument after its name as
    they are (argparse would refuse ``writevue sandbox --port 1``), ``--help`` included."""
    if not argv:
        return None
    for cmd in commands():
        if not cmd.add_help and cmd.path == (argv[0],):
            return argparse.Namespace(
                handler=cmd.handler, audit_action=None, rest=list(argv[1:]), command=argv[0]
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        passed = _pass_through(argv)
        if passed is not None:
            return passed.handler(passed) or 0
        args = build_parser().parse_args(argv)
        from .inputs import has_id_prefixes, resolve_ids, staff_access  # imports this module

        audited = args.audit_action and hasattr(args, "reason") and hasattr(args, "actor")
        if audited and has_id_prefixes(args):
            # Asked before an id prefix is looked up: its answer ("No tenant …", "2
            # tenants have ids beginning …") already tells something about the data.
            # (Without a prefix the command asks itself, when it reveals something:
            # `writevue refresh` of every tenant asks nothing.)
            staff_access(args)
        resolve_ids(args)  # id prefixes, as git takes them, become the ids they name
        status = args.handler(args)  # None, or an exit status (`writevue doctor`)
    except _GroupHelp as shown:
        print(shown.help_text, file=sys.stderr, end="")
        return 2
    except (CliError, WriteVueError, VaultError, ConfigError) as exc:
        print(f"writevue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("writevue: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0
