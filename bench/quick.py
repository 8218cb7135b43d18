"""All four benchmarks at small sizes, for a check before a commit (a few minutes).

    python -m bench.quick

Runs bench.refresh, bench.orchestration, bench.dashboard and bench.warehouse at small
sizes and prints each one's last line (its ``key=value`` summary), or its error. The
orchestration benchmark spends most of its time waiting for its schedule's tick, so it
runs beside the others: its CPU figures hold, its wall figures are rough; it lets the
daemon start the code server, which saves waiting for a separate one to load. The small
sizes show that every benchmark still runs and which way its ratios move; the targets
are for the full sizes (README, "Benchmarks").
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (benchmark, its arguments at quick sizes)
QUICK = {
    "refresh": ["--connections", "60", "--dlt-sample", "2"],
    "orchestration": [
        "--connections", "20", "--tick-lead", "20", "--timeout", "300", "--code-server", "daemon",
    ],
    "dashboard": [
        "--tenants", "20", "--no-postgres", "--no-browser", "--seconds", "2",
        "--viewers", "5", "--sessions", "20", "--settle", "3",
    ],
    "warehouse": ["--rows", "20000", "--big-rows", "200000", "--repeat", "3"],
}  # fmt: skip
#: started first and left running while the others run one after another
BESIDE = ("orchestration",)


@dataclass
class Outcome:
    name: str
    seconds: float
    returncode: int
    last_line: str
    error_tail: str


def start(name: str) -> tuple[subprocess.Popen, float]:
    command = [sys.executable, "-m", f"bench.{name}", *QUICK[name]]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, time.perf_counter()


def finish(name: str, process: subprocess.Popen, started: float) -> Outcome:
    out, err = process.communicate()
    lines = [line for line in out.splitlines() if line.strip()]
    return Outcome(
        name,
        time.perf_counter() - started,
        process.returncode,
        lines[-1] if lines else "",
        "\n".join((err or out).strip().splitlines()[-5:]),
    )


def main() -> int:
    started = time.perf_counter()
    beside = {name: start(name) for name in BESIDE}
    outcomes = [finish(name, *start(name)) for name in QUICK if name not in BESIDE]
    outcomes += [finish(name, *beside[name]) for name in BESIDE]
    failed = 0
    for outcome in sorted(outcomes, key=lambda o: list(QUICK).index(o.name)):
        if outcome.returncode == 0:
            print(f"bench.{outcome.name} ({outcome.seconds:.0f} s): {outcome.last_line}")
        else:
            failed += 1
            print(f"bench.{outcome.name} FAILED (exit {outcome.returncode}):")
            print("  " + outcome.error_tail.replace("\n", "\n  "))
    print(f"all four in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
