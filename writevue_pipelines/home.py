"""`writevue init`: lay out WRITEVUE_HOME, the keys (ring, session secret), schema and Dagster."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .database import migrate
from .session_secret import ensure_session_secret, session_secret_from_env
from .settings import Settings
from .vault import ensure_key_ring, key_ring_from_env

DAGSTER_YAML = """\
# Written by `writevue init`. Embedded instance: SQLite storage under this folder.
# For PostgreSQL (production) see deploy/dagster.yaml and docs/operations.md.
telemetry:
  enabled: false
storage:
  # Dagster's SQLite storage (runs, their events, schedules) under this folder, each part
  # keeping its connection instead of opening one per statement
  # (writevue_pipelines.dagster_storage).
  custom:
    module: writevue_pipelines.dagster_storage
    class: PooledSqliteStorage
    config:
      base_dir: "@STORAGE@"
run_coordinator:
  # Dagster's queue, with each pool's limit stored before its first run is queued
  # (writevue_pipelines.dagster_coordinator)
  module: writevue_pipelines.dagster_coordinator
  class: QueuedRunCoordinator
  config:
    # How often the daemon looks for a queued run to start (seconds; fractions allowed).
    # While runs wait for a slot it also counts the runs under way every 0.05 s and
    # starts the next as soon as one has ended.
    dequeue_interval_seconds: 0.5
concurrency:
  runs:
    # Each run is a process (~155 MB) refreshing a batch of connections.
    max_concurrent_runs: 4
  pools:
    # Each source's refresh takes a slot in its provider's pool (stripe_api, ga4_api, ...)
    # for the whole run, so at most this many runs talk to one provider at a time. Each run
    # holds at most 50 HTTP connections, so a provider sees at most 2 x 50 concurrent
    # requests. Per provider: `dagster instance concurrency set ga4_api 1`.
    default_limit: 2
    granularity: run
schedules:
  use_threads: true
  num_workers: 2
sensors:
  use_threads: true
  num_workers: 2
code_servers:
  local_startup_timeout: 180
"""


@dataclass(frozen=True)
class InitReport:
    home: str
    key_file_created: bool
    session_secret_created: bool = False
    #: where the key ring is: its file, or None when it comes from ``WRITEVUE_KEYS``
    key_file: str | None = None


def init_home(settings: Settings) -> InitReport:
    for folder in (settings.home, settings.staging_dir, settings.dagster_home, settings.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    if settings.keys_from_env:  # checked, never written anywhere
        key_ring_from_env(settings.key_ring_env)
        created = False
    else:  # under the home, or at WRITEVUE_KEY_FILE (its new folders 0700)
        created = not settings.key_file.exists()
        ensure_key_ring(settings.key_file)
    if settings.session_secret_from_env:  # checked, never written anywhere
        session_secret_from_env(settings.session_secret_env)
        secret_created = False
    else:
        secret_created = ensure_session_secret(settings.session_secret_file)
    migrate(settings.database_url)
    dagster_yaml = settings.dagster_home / "dagster.yaml"
    if not dagster_yaml.exists():
        storage = json.dumps(str((settings.dagster_home / "storage").resolve()))[1:-1]
        dagster_yaml.write_text(DAGSTER_YAML.replace("@STORAGE@", storage))
    return InitReport(
        home=str(settings.home),
        key_file_created=created,
        session_secret_created=secret_created,
        key_file=None if settings.keys_from_env else str(settings.key_file),
    )
