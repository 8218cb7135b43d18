"""Every `writevue` command given bad input: one line of error, a non-zero exit, and the
database exactly as it was (every table of the SQLite file dumped before and after).

The commands come from the parser's own registry (``cli.app.commands``), so a command
added later is covered without touching this file. Each gets an unknown flag, a
non-number for every integer option, and for every positional argument an id that
names nothing, a path-like string, an SQL-like string and control characters.
"""

from __future__ import annotations

import sqlite3

import pytest
from support import add_stripe_connection, run_cli

from writevue_pipelines import links
from writevue_pipelines.cli.app import commands
from writevue_pipelines.home import init_home
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
BAD_VALUES = [UNKNOWN_ID, "../../../etc/passwd", "x'; DROP TABLE tenants; --", "\x1b[31mred\x07"]


def _positionals(command) -> list:
    return [a for a in command.args if not a.flags[0].startswith("-")]


def _int_options(command) -> list[str]:
    return [
        a.flags[0]
        for a in command.args
        if a.flags[0].startswith("-") and a.options.get("type") is int
    ]


def bad_invocations() -> list[tuple[str, list[str]]]:
    cases = []
    for command in commands():
        path = list(command.path)
        name = command.name
        if not command.add_help:
            continue  # passes every argument on to its own program (`writevue sandbox`)
        cases.append((f"{name} --no-such-flag", [*path, "--no-such-flag"]))
        for flag in _int_options(command):
            cases.append((f"{name} {flag} NaN", [*path, flag, "not-a-number"]))
        positionals = _positionals(command)
        if positionals:
            for index, value in enumerate(BAD_VALUES):
                filled = [value] * len(positionals)
                cases.append((f"{name} bad value {index}", [*path, *filled]))
    return cases


CASES = bad_invocations()


def dump(path) -> dict[str, list]:
    """Every row of every table of the SQLite file, in a stable order."""
    with sqlite3.connect(path) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {
            table: sorted(map(repr, conn.execute(f'SELECT * FROM "{table}"')))  # noqa: S608
            for table in tables
        }


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One populated home for every case (none of them may change it): a tenant, a
    connection with its encrypted key, and a dashboard link."""
    home = tmp_path_factory.mktemp("bad-input") / "home"
    settings = Settings.from_env({"WRITEVUE_HOME": str(home)})
    init_home(settings)
    runtime = Runtime(settings)
    tenant_id, _ = add_stripe_connection(runtime, "http://127.0.0.1:9", "sk_test_bad_input_0001")
    with runtime.db.session() as session:
        links.create_link(session, tenant_id, label="lobby")
    runtime.close()
    return home


@pytest.fixture
def populated(shared_home, monkeypatch):
    monkeypatch.setenv("WRITEVUE_HOME", str(shared_home))
    monkeypatch.delenv("WRITEVUE_DATABASE_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(shared_home / "dagster"))
    return shared_home


def test_every_command_is_covered():
    covered = {case[0].split(" --")[0].split(" bad value")[0] for case in CASES}
    assert covered == {c.name for c in commands() if c.add_help}


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_a_failure_and_changes_nothing(populated, monkeypatch, capsys, argv):
    database = populated / "warehouse.db"
    before = dump(database)
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    assert code != 0, f"exit {code}: {out[-300:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("writevue: error: "), err[-600:]
    assert "Traceback" not in out + err
    assert dump(database) == before
