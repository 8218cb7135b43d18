"""Count needles in files' raw bytes, in a process of its own (standard library only).

Run as ``python -I -S rawcount.py`` with a JSON request on stdin:
``{"paths": [...], "needles": [hex, ...], "chunk": bytes}``; it answers on stdout with a
JSON list holding, per path, the count of each needle or the name of the error that
stopped the read.

Why a process of its own: POSIX advisory locks belong to a process and a file, and
closing *any* descriptor of a file drops every lock the process holds on it — SQLite's
included. The erasure's proof reads the raw SQLite database, its WAL and shared-memory
file, and Dagster's SQLite files; read with ``open``/``close`` in a process that also holds
SQLite connections to them, another process would then think itself the last one
connected, checkpoint and delete the WAL, and this process's next commit would land in a
deleted file. A child's descriptors and locks are its own.
"""

from __future__ import annotations

import json
import sys


def occurrences(path: str, needles: list[bytes], chunk_size: int = 1 << 20) -> list[int]:
    """How often each needle occurs in a file, read in chunks that overlap.

    Raises OSError when the file cannot be read."""
    counts = [0] * len(needles)
    overlap = max((len(n) for n in needles), default=1) - 1
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            window = tail + chunk
            for i, needle in enumerate(needles):
                start = 0  # count occurrences that end inside the new chunk only
                while (at := window.find(needle, start)) != -1:
                    if at + len(needle) > len(tail):
                        counts[i] += 1
                    start = at + 1
            tail = window[-overlap:] if overlap else b""
    return counts


def main() -> int:
    request = json.load(sys.stdin)
    needles = [bytes.fromhex(n) for n in request["needles"]]
    answers: list[list[int] | str] = []
    for path in request["paths"]:
        try:
            answers.append(occurrences(path, needles, request.get("chunk", 1 << 20)))
        except OSError as exc:
            answers.append(type(exc).__name__)
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
