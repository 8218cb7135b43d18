"""`writevue demo --check`: the whole product starts, shows the client's numbers, and stops."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import run_writevue


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


@pytest.mark.timeout(900)
def test_demo_check_runs_everything_and_stops_it(tmp_path):
    home = tmp_path / "home"
    for _ in range(2):  # the second run reuses what the first created
        result = run_writevue(home, "demo", "--check", timeout=540, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "demo check passed" in result.stderr
        assert "dashboard shows" in result.stderr
        assert "stripe_daily_metrics" in result.stderr
        assert not _processes_in(tmp_path), "the demo left processes running"
    tenants = json.loads(
        run_writevue(home, "tenant", "list", "--json", timeout=60, cwd=tmp_path).stdout
    )
    assert len(tenants) == 1
