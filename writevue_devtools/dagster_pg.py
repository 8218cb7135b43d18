"""The ``DAGSTER_PG_*`` variables deploy's Dagster instances read, from one PostgreSQL URL.

``deploy/dagster.yaml`` (and the Docker and Kubernetes instances) name the storage's
server, database and user through these five variables; the production check and the
tests that load those files point them at a database of their own with this one function.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

#: the variables deploy/dagster.yaml's ``storage.postgres.postgres_db`` reads
DAGSTER_PG_VARIABLES = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_DB",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
)


def dagster_pg_env(url: str) -> dict[str, str]:
    """``DAGSTER_PG_*`` for the database ``url`` names (``postgresql[+driver]://user[:password]
    @host[:port]/db``); the password empty when the URL has none (libpq's PGPASSFILE)."""
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not parts.scheme.startswith("postgres") or not parts.hostname or not database:
        raise ValueError("not a PostgreSQL URL with a host and a database")
    return {
        "DAGSTER_PG_HOST": parts.hostname,
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USERNAME": unquote(parts.username or "postgres"),
        "DAGSTER_PG_PASSWORD": unquote(parts.password or ""),
    }
