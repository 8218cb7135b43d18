"""The Celery app WriteVue's refresh workers run, on this machine or any other:

    celery -A writevue_pipelines.defs.celery_app worker -Q "$WRITEVUE_CELERY_QUEUE" \
        --concurrency 2 --prefetch-multiplier 1 -n refresh-1@%h

It is Dagster's own step task (``dagster_celery``) on the broker, backend and queue of
the ``{source}_refresh_steps`` runs, all from the environment (``WRITEVUE_CELERY_*``),
so the broker's password is on no command line. Each task executes one step of a run,
against the instance the run names (its storage must be reachable from the worker: the
PostgreSQL instance in production), with ``WRITEVUE_DATABASE_URL`` and the key ring
from the worker's own environment.
"""

from __future__ import annotations

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

# Importing this module loads the code location (the package), once per worker.
from ..settings import get_settings
from .scaleout import celery_app_args

app = make_app(celery_app_args(get_settings()))
execute_plan = create_task(app)
