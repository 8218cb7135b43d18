"""The promise index in docs/privacy.md names modules and tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMISES = (
    "We never store your passwords",
    "Tokens and keys are handled like passwords",
    "Data from sources is read-only",
    "We store aggregate data only",
    "deleted on request",
    "the URL is like a password",
    "Session cookies end when the browser closes",
    "Log files hold IP",
    "Staff may access data",
)


def _index_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "privacy.md").read_text()
    section = text.split("## Promise index", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_promise_of_the_policy_has_a_row_with_code_and_tests():
    rows = _index_rows()
    for promise in PROMISES:
        (row,) = [r for r in rows if promise in r[0]]
        assert re.search(r"`[\w/]+\.py`", row[1]), promise
        assert "::test_" in row[2], promise


def test_every_module_and_test_the_index_names_exists():
    named_modules, named_tests = set(), set()
    for _promise, modules, tests in (r[:3] for r in _index_rows()):
        named_modules |= set(re.findall(r"`([\w/]+\.py)`", modules))
        named_tests |= set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", tests))
    assert named_modules and named_tests
    missing = sorted(m for m in named_modules if not (ROOT / m).is_file())
    missing += sorted(
        f"{file}::{name}"
        for file, name in named_tests
        if not (ROOT / file).is_file() or name not in _test_names(ROOT / file)
    )
    assert missing == []


def test_the_postgres_purge_command_names_every_table_an_erasure_touches():
    import re

    from writevue_pipelines.privacy.scope import KEPT_TABLES, owned_tables

    text = (ROOT / "docs" / "privacy.md").read_text()
    (command,) = re.findall(r"`VACUUM FULL ([a-z_,\s]+);`", text)
    named = {name.strip() for name in command.split(",")}
    assert named == {t.name for t in owned_tables()} | KEPT_TABLES
