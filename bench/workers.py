"""Worker processes for the benchmarks, started together, waited for, their reports
returned: each spawned (``python -m bench.<module> --<flag> …``, printing one JSON line
last) or forked from a preloaded process, as the product's code server forks its runs
(``Forkserver``)."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


class Forkserver:
    """Workers forked, as ``writevue code-server`` forks its runs, from one process that
    imported ``preload`` once (``writevue_pipelines.run_preload``: what the code server's
    forkserver imports), so that a worker pays for what a run forked by the product pays
    for: the fork, and whatever it imports beyond the preload.

    A worker is a module-level function called with its arguments and this process's
    environment at the call (``BENCH_SPAWNED_AT`` set); its report (a dict) gains
    ``cpu_s``, the CPU seconds of its process from the fork to its return, threads and
    waited-for children included. The preload's own CPU, paid once per code server, is
    apart: what ``start`` returns.
    """

    def __init__(self, preload: Sequence[str]):
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))

    def start(self) -> float:
        """Start the forkserver and wait for its preload; the CPU seconds that took."""
        from multiprocessing import forkserver

        from bench.procfs import cpu_s

        # a first worker waits for the preload; forked after it, it costs what later ones do
        self.run([(_nothing, ())], "the forkserver's preload")
        return cpu_s(forkserver._forkserver._forkserver_pid)

    def run(self, calls: list[tuple[Callable[..., dict], tuple]], what: str) -> list[dict]:
        env = {**os.environ, "BENCH_SPAWNED_AT": repr(time.time())}
        started = []
        for function, args in calls:
            receiver, sender = self._context.Pipe(duplex=False)
            process = self._context.Process(target=_forked, args=(function, args, env, sender))
            process.start()
            sender.close()
            started.append((process, receiver))
        reports = []
        for process, receiver in started:
            try:
                outcome = receiver.recv()
            except EOFError:
                outcome = ("error", f"the worker died (exit code {process.exitcode})")
            process.join()
            if outcome[0] == "error":
                raise SystemExit(f"{what} failed:\n{outcome[1][-3000:]}")
            reports.append(outcome[1])
        return reports


def _nothing() -> dict:
    return {}


def _forked(function: Callable[..., dict], args: tuple, env: dict, sender) -> None:
    os.environ.clear()
    os.environ.update(env)
    try:
        report = dict(function(*args))
    except BaseException:
        import traceback

        sender.send(("error", traceback.format_exc()))
        raise
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["cpu_s"] = own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
    sender.send(("ok", report))
