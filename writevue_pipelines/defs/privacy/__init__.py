"""Privacy operations in the Dagster UI: erasure on request, retention, access-log trends.

- ``erasure.py``: the ``erasure_requests`` sensor and the ``erasure`` job.
- ``retention.py``: the ``retention`` job and its daily schedule.
- ``trends.py``: the ``access_log_trends`` asset, its job and its daily schedule.

Tags and config hold the request id and the tenant id (opaque UUIDs) only: never a
name, an email or data.
"""

from __future__ import annotations

from dagster import Definitions

from . import erasure, retention, trends

defs = Definitions.merge(erasure.defs, retention.defs, trends.defs)
