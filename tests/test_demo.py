"""`writevue demo --check`: the whole product starts, shows the client's numbers, and stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _processes_in(folder: Path) -> list[int]:
    """Pids of processes whose working directory is inside ``folder``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/"):
            pids.append(int(entry.name))
    return pids


def _writevue(env, cwd, *args, timeout=540):
    return subprocess.run(
        [sys.executable, "-m", "writevue_pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


@pytest.mark.timeout(900)
def test_demo_check_runs_everything_and_stops_it(tmp_path):
    env = {**os.environ, "WRITEVUE_HOME": str(tmp_path / "home")}
    env.pop("WRITEVUE_DATABASE_URL", None)
    env.pop("DAGSTER_HOME", None)
    for _ in range(2):  # the second run reuses what the first created
        result = _writevue(env, tmp_path, "demo", "--check")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "demo check passed" in result.stderr
        assert "dashboard shows" in result.stderr
        assert "stripe_daily_metrics" in result.stderr
        assert not _processes_in(tmp_path), "the demo left processes running"
    tenants = json.loads(_writevue(env, tmp_path, "tenant", "list", "--json", timeout=60).stdout)
    assert len(tenants) == 1
