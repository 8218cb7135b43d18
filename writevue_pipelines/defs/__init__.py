"""WriteVue's Dagster code location: per-source refreshes, schedules, sensors, the runtime,
alerts and scorecards (the ``notifications`` sensor and job), and the privacy operations
(erasure on request, retention, access-log trends).

Runs execute in process: a refresh is one step that fetches its batch of connections
concurrently, so a second process per step would only add start-up time. Past one
machine, the ``{source}_refresh_steps`` jobs (``scaleout``) make each connection a step
that Celery workers execute (``WRITEVUE_EXECUTOR=celery``).
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from . import assets, notifications, privacy, resources, scaleout, schedules, sensors

defs = Definitions.merge(
    assets.defs,
    schedules.defs,
    sensors.defs,
    notifications.defs,
    privacy.defs,
    scaleout.defs,
    resources.defs,
    Definitions(executor=in_process_executor),
)
