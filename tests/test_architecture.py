"""The layers hold: the core loads no framework, the sandbox stays out of the product.

`lint-imports` (make lint, .ci/run) enforces the contracts in pyproject.toml; these tests
make sure the contracts cover every core module and check the result directly, by
importing each core module in a fresh interpreter.
"""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import writevue_pipelines

ROOT = Path(__file__).resolve().parents[1]
#: the command line, the Dagster code location, the Dagster instance's storage and run
#: queue classes (loaded by the webserver and the daemon from dagster.yaml, without the
#: code location), and the code server with what its forkserver preloads (Dagster and the
#: code location)
ON_TOP = {"cli", "defs", "dagster_storage", "dagster_coordinator", "code_server", "run_preload"}
FORBIDDEN_IN_CORE = (
    "dagster",
    "panel",
    "bokeh",
    "tornado",
    "param",
    "writevue_sandbox",
    "dashboard_server",
    "writevue_pipelines.cli",
    "writevue_pipelines.defs",
)


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def _core_modules() -> set[str]:
    return {
        f"writevue_pipelines.{info.name}"
        for info in pkgutil.iter_modules(writevue_pipelines.__path__)
        if info.name not in ON_TOP
    }


def test_the_core_contract_names_every_core_module():
    (core,) = [c for c in _contracts() if c["name"].startswith("The domain core")]
    assert set(core["source_modules"]) == _core_modules()
    assert set(FORBIDDEN_IN_CORE) <= set(core["forbidden_modules"])


def test_importing_every_core_module_loads_no_framework_sandbox_or_command_line():
    names = sorted(
        info.name
        for top in _core_modules()
        for info in _walk(top)
        # Alembic runs the migration scripts inside its own context, not by import.
        if not info.name.startswith("writevue_pipelines.migrations.")
    )
    assert len(names) > len(_core_modules())  # subpackages' modules are in too
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    leaked = sorted(
        m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_CORE)
    )
    assert leaked == []


def _walk(name: str):
    module = __import__(name, fromlist=["_"])
    yield pkgutil.ModuleInfo(None, name, hasattr(module, "__path__"))
    if hasattr(module, "__path__"):
        yield from pkgutil.walk_packages(module.__path__, prefix=name + ".")


def test_the_import_contracts_hold():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout)


def test_the_sandbox_lives_outside_the_product():
    assert not (ROOT / "writevue_pipelines" / "sandbox").exists()
    assert (ROOT / "writevue_sandbox" / "__main__.py").exists()


def test_production_code_names_no_sandbox_client_secret_url_or_path():
    # The demo is the one place that starts the sandbox (as a process) and points a
    # connection at it, with the options an operator would use for a real provider.
    allowed = {ROOT / "writevue_pipelines" / "cli" / "demo.py"}
    sandbox_words = re.compile(
        r"writevue-sandbox|sandbox-client|/_sandbox|writevue_sandbox|sandbox[_ ]client"
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("writevue_pipelines", "dashboard_server")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in allowed
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if sandbox_words.search(line)
    ]
    assert offenders == []
