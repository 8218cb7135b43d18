"""The peers this machine runs, for the benchmarks and the test suite alike.

PostgreSQL is reached as its admin user (trust auth) and each user makes a database of
its own; Chromium is Debian's, driven headless with the flags that work here (without
the networking ones it keeps reaching for Google's hosts, which this closed network
refuses).
"""

from __future__ import annotations

import os

POSTGRES_ADMIN_URL = os.environ.get(
    "WRITEVUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHROMIUM = os.environ.get("WRITEVUE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
