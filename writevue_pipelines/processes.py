"""Start a child process and wait until it answers: one helper for the demo, tests and benchmarks.

A child gets its own process group (so stopping it stops what it started) and default
signal handlers: a parent that ignores SIGINT (a shell's background job) would otherwise
pass that on, and a child so started was seen to ignore SIGTERM too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


class StartError(Exception):
    """A child process exited early or did not answer in time; the text says which."""


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def restore_signals() -> None:
    """Make a long-running command stop when told, whatever its parent ignored.

    A parent that ignores SIGINT (a shell's background job, nohup) passes that on, and
    Python then leaves Ctrl-C ignored; SIGTERM may be ignored the same way. Here Ctrl-C
    raises ``KeyboardInterrupt`` again and SIGTERM exits with ``SystemExit(143)``, both
    through the command's ``finally`` blocks, so it stops the children it started.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) ``host:port`` already."""
    with socket.socket() as sock:
        # As servers bind: a port a closed connection still waits on is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class Child:
    """A started process, its name (for messages) and the file its output goes to."""

    name: str
    process: subprocess.Popen
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``timeout`` seconds; whatever
        of the group outlives the child (a worker it started) is killed last."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        # Linux never reuses a pid as long as a group of that id has members, so this
        # reaches only what the child left behind, or nothing.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the child's log, or nothing when it has none."""
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv`` in a new process group; its output goes to ``log_path`` (or nowhere)."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        output = open(log_path, "ab")  # the child holds it; closed below
    else:
        output = subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_default_signals,  # only resets signal handlers
        )
    finally:
        if log_path is not None:
            output.close()
    return Child(name, process, log_path)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    child: Child | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until it is true; a child that exits first ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        if child is not None and not child.alive():
            tail = child.tail()
            raise StartError(
                f"{what} exited early" + (f"; its log ends with:\n{tail}" if tail else "")
            )
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():
                return
        if time.monotonic() >= deadline:
            raise StartError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(interval)


def answers(url: str, status: int | None = 200) -> Callable[[], bool]:
    """A check for ``wait_until``: ``url`` answers (with ``status``, unless it is None)."""

    def check() -> bool:
        response = httpx.get(url, timeout=2)
        return status is None or response.status_code == status

    return check


def spawn_and_wait(
    name: str,
    argv: Sequence[str],
    url: str,
    *,
    timeout: float = 90.0,
    status: int | None = 200,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start a server and return once ``url`` answers; stop it and raise if it never does."""
    child = spawn(name, argv, log_path=log_path, env=env, cwd=cwd)
    try:
        wait_until(answers(url, status), timeout=timeout, what=name, child=child)
    except BaseException:
        child.stop()
        raise
    return child
