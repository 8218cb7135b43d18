"""The instance's run queue: Dagster's ``QueuedRunCoordinator``, with two changes.

**A run's pools have their limits before it is queued.** Dagster applies a pool's default
limit (``concurrency: pools: default_limit``) only once the pool is in the instance's
storage, and puts it there during a dequeue pass, after that pass has read which pools
are limited: in the first pass that sees a new pool (the first tick on a fresh instance,
or a source's first runs) the pool counts as unlimited, and the daemon launched as many of
its queued runs as ``max_concurrent_runs`` let it, four batch runs talking to one provider
where the limit said two. ``submit_run`` stores the default limit of each pool the run
needs that has none yet, before the run is queued. A limit an operator set (``dagster
instance concurrency set stripe_api 1``) is left as it is.

**The queue may be checked more often than once a second.** Dagster takes
``dequeue_interval_seconds`` in whole seconds; a freed slot then waits half a second on
average for its next run, a few seconds per refresh of a thousand connections. This one
takes a fraction (``0.5``: the daemon's loop wakes every half second, so less waits as
long). Each pass costs the daemon a few milliseconds of CPU.

Named by the dagster.yaml ``writevue init`` writes and by ``deploy/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Field, Float
from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import (
    QueuedRunCoordinator as DagsterQueuedRunCoordinator,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData

#: Dagster's default (whole seconds), kept when the configuration names none
DEFAULT_DEQUEUE_INTERVAL_S = 5.0


class QueuedRunCoordinator(DagsterQueuedRunCoordinator):
    """Dagster's queued run coordinator; see the module's docstring."""

    def __init__(
        self,
        dequeue_interval_seconds: float | None = None,
        inst_data: ConfigurableClassData | None = None,
        **config: Any,
    ):
        super().__init__(inst_data=inst_data, **config)
        interval = (
            DEFAULT_DEQUEUE_INTERVAL_S
            if dequeue_interval_seconds is None
            else float(dequeue_interval_seconds)
        )
        if interval <= 0:
            raise ValueError(
                f"dequeue_interval_seconds must be above 0, not {dequeue_interval_seconds!r}"
            )
        self._dequeue_interval_seconds = interval  # type: ignore[assignment]

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        return self._dequeue_interval_seconds

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        fields = dict(super().config_type())
        fields["dequeue_interval_seconds"] = Field(
            Float,
            is_required=False,
            description=(
                "How often, in seconds, the daemon checks the run queue for runs to launch "
                "(fractions allowed; the daemon's loop wakes every half second)."
            ),
        )
        return fields

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> QueuedRunCoordinator:
        return cls(inst_data=inst_data, **dict(config_value))

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        self._limit_pools(context.dagster_run)
        return super().submit_run(context)

    def _limit_pools(self, run: DagsterRun) -> None:
        """Store the default limit of each of the run's pools that has no limit yet."""
        pools = set(run.run_op_concurrency.all_pools or []) if run.run_op_concurrency else set()
        default = self._instance.global_op_concurrency_default_limit
        if not pools or default is None:
            return
        storage = self._instance.event_log_storage
        limited = {limit.name for limit in storage.get_pool_limits()}
        for pool in sorted(pools - limited):
            storage.initialize_concurrency_limit_to_default(pool)
