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

**A freed slot is filled at once.** Dagster's queue daemon looks at the queue every
``dequeue_interval_seconds`` (in whole seconds, and its loop sleeps half a second at a
time), so a run that ended left its slot empty for half a second on average, a few
seconds of every refresh of a thousand connections. This coordinator takes fractions
(``0.5``), and while runs wait in the queue and others are running, the daemon also looks
every ``FREED_SLOT_PROBE_S`` at how many runs are under way (one count in the run
storage) and starts its next pass as soon as one has ended. With nothing queued it waits
as Dagster's does. (Dagster builds its queue daemon itself; the daemon reads
``dequeue_interval_seconds`` to build it, which is when this module gives the daemon's
class its loop, ``_queue_loop``: Dagster 1.13's loop with that wait.)

Named by the dagster.yaml ``writevue init`` writes and by ``deploy/``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import Field, Float
from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import (
    QueuedRunCoordinator as DagsterQueuedRunCoordinator,
)
from dagster._core.storage.dagster_run import (
    ACTIVE_RUN_STATUSES,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)
from dagster._serdes import ConfigurableClassData

#: Dagster's default (whole seconds), kept when the configuration names none
DEFAULT_DEQUEUE_INTERVAL_S = 5.0
#: while runs wait for a slot, how often the daemon counts the runs under way (seconds)
FREED_SLOT_PROBE_S = 0.05
#: the longest the daemon's loop sleeps at a time, as Dagster's (it then reports to its
#: controller, which watches that each daemon is alive)
LOOP_SLEEP_S = 0.5


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
        # Read by the daemon to build its queue daemon: the moment to give that its loop.
        _give_the_queue_daemon_its_loop()
        return self._dequeue_interval_seconds

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        fields = dict(super().config_type())
        fields["dequeue_interval_seconds"] = Field(
            Float,
            is_required=False,
            description=(
                "How often, in seconds, the daemon checks the run queue for runs to launch "
                "(fractions allowed; while runs wait for a slot, a run's end starts the "
                "next pass at once)."
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


_installed = threading.Lock()


def _give_the_queue_daemon_its_loop() -> None:
    """Make ``_queue_loop`` the loop of Dagster's queue daemon (once per process)."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    with _installed:
        if QueuedRunCoordinatorDaemon.core_loop is not _queue_loop:
            QueuedRunCoordinatorDaemon.core_loop = _queue_loop  # type: ignore[method-assign]


def _queue_loop(self: Any, workspace_process_context: Any, shutdown_event: threading.Event):
    """Dagster 1.13's ``IntervalDaemon.core_loop`` for the queue daemon, its wait between
    passes ``_until_next_pass`` (a fraction of a second honoured; a freed slot ends it)."""
    from dagster._daemon.daemon import SpanMarker
    from dagster._utils.error import serializable_error_info_from_exc_info

    instance = workspace_process_context.instance
    while True:
        start_time = time.time()
        yield SpanMarker.START_SPAN
        try:
            yield from self.run_iteration(workspace_process_context)
        except Exception:
            error_info = serializable_error_info_from_exc_info(sys.exc_info())
            self._logger.error("Caught error:\n%s", error_info)
            yield error_info
        yield SpanMarker.END_SPAN
        yield from _until_next_pass(
            instance, shutdown_event, start_time + self.interval_seconds, self._logger
        )
        yield None


def _until_next_pass(
    instance: Any, shutdown_event: threading.Event, deadline: float, logger: Any
) -> Iterator[None]:
    """Sleep until ``deadline``, or until a run under way has ended while others wait in
    the queue (a slot freed: the next pass starts it at once). Yields after each sleep,
    as Dagster's loop does, so the daemon keeps reporting that it is alive."""
    watch = _FreedSlots(instance, logger)
    while not shutdown_event.is_set() and (left := deadline - time.time()) > 0:
        shutdown_event.wait(min(left, FREED_SLOT_PROBE_S if watch.waiting else LOOP_SLEEP_S))
        yield None
        if watch.freed():
            return


class _FreedSlots:
    """Whether a run has ended since the queue's last pass while others are queued: the
    count of active runs (starting, started, canceling) has gone down."""

    def __init__(self, instance: Any, logger: Any):
        self._instance = instance
        self._logger = logger
        self.waiting = False
        self._active = 0
        try:
            if self._count([DagsterRunStatus.QUEUED]):
                self._active = self._count(ACTIVE_RUN_STATUSES)
                self.waiting = self._active > 0
        except Exception:  # the storage unreachable: Dagster's pass will say so
            self.waiting = False

    def _count(self, statuses: list[DagsterRunStatus]) -> int:
        return self._instance.get_runs_count(RunsFilter(statuses=statuses))

    def freed(self) -> bool:
        if not self.waiting:
            return False
        try:
            active = self._count(ACTIVE_RUN_STATUSES)
        except Exception:
            self.waiting = False  # sleep as Dagster's loop does until the next pass
            self._logger.warning("could not count the runs under way; looking again later")
            return False
        if active < self._active:
            return True
        self._active = active  # a run launched meanwhile (not through the queue)
        return False
