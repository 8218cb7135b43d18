"""Worker processes for the benchmarks: each runs ``python -m bench.<module> --<flag> …``
and prints one JSON line last; started together, waited for, their reports returned."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_workers(module: str, argvs: list[list[str]], what: str) -> list[dict]:
    """Start one ``python -m module *argv`` per argv at once (each told when it was
    spawned, ``BENCH_SPAWNED_AT``), wait for all; their last lines as JSON."""
    env = {**os.environ, "BENCH_SPAWNED_AT": repr(time.time())}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for argv in argvs
    ]
    reports = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{what} failed:\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def children_usage() -> float:
    """CPU seconds (user + system) of this process's children that have been waited for.

    Read before and after starting and waiting for a set of workers, the difference is
    every CPU second they used, threads and their own waited-for children included,
    whatever else the machine was doing.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
