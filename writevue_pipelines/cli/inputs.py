"""What commands read from the operator: secrets (never as arguments), options, the runtime."""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Sequence

from ..errors import InvalidInput
from ..runtime import Runtime
from .app import CliError, arg

#: the ``--actor`` flag of every command that reads a tenant's data
ACTOR = arg("--actor", help="who is running this, for the staff audit (default: the OS user)")


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


def ready_runtime() -> Runtime:
    """The runtime of an initialised home; otherwise one line saying to run `writevue init`."""
    runtime = Runtime.from_env()
    settings = runtime.settings
    if not settings.key_file.exists():
        raise CliError(
            f"WriteVue is not initialised in {settings.home}; run `writevue init` first."
        )
    from ..database import current_revision

    if current_revision(settings.database_url) is None:
        raise CliError("The warehouse has no schema yet; run `writevue init` first.")
    return runtime


def progress_bar():
    """A progress callback drawing on stderr: a bar on a terminal, a line per 10% elsewhere."""
    tty = sys.stderr.isatty()
    last: dict[str, int] = {}

    def show(label: str, done: int, total: int) -> None:
        percent = 100 if total == 0 else min(100, done * 100 // total)
        if tty:
            bar = "#" * (percent // 4)
            end = "\n" if done >= total else ""
            print(f"\r{label:<28} [{bar:<25}] {done}/{total}", end=end, file=sys.stderr)
        elif percent // 10 != last.get(label, -1) // 10 or done >= total:
            print(f"{label}: {done}/{total}", file=sys.stderr)
        last[label] = percent
        sys.stderr.flush()

    return show
