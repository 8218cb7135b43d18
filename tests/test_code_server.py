"""``writevue code-server``: Dagster's code server, its runs forked from a preloaded forkserver.

A real ``writevue code-server`` process serves the code location on loopback; runs are
launched against it as the daemon launches them (the instance's run launcher, over gRPC)
and refresh a connection on the sandbox over real HTTP. The tests watch ``/proc`` while a
run is under way: the run's process (its pid is in its own event log) is a child of the
forkserver, not of the server, and the forkserver imported the code before any run.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from support import (
    COUNT_MIGRATION_READS,
    add_stripe_connection,
    deploy_dagster_home,
    new_stripe_key,
)

from bench.orchestration import descendants, process_parents, start_code_server
from writevue_pipelines import registry, warehouse
from writevue_pipelines.defs.assets import job_name
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.processes import wait_until
from writevue_sandbox.server import SandboxServer


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> set[int]:
    return {child for child, parent in process_parents().items() if parent == pid}


class ParentWatch:
    """Every process seen below ``root`` while it runs, with the parent it was seen with."""

    def __init__(self, root: int):
        self.root = root
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            parents = process_parents()
            for pid in descendants(self.root, parents) - {self.root}:
                self.seen.setdefault(pid, parents[pid])
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def code_server(home, tmp_path):
    """``writevue code-server`` on a loopback port as deploy/ runs it (the benchmark's
    ``start_code_server``), once its code is loaded: (child, port)."""
    child, port = start_code_server(tmp_path, {})
    try:
        yield child, port
    finally:
        child.stop()


def _create_refresh(instance, context, connection_id: str):
    """The Stripe refresh of one connection, created (not yet started) as the daemon
    creates a scheduled run: from the code server's job and execution plan."""
    location = context.get_code_location("writevue")
    (repository,) = location.get_repositories().values()
    job = repository.get_full_job(job_name("stripe"))
    plan = location.get_execution_plan(
        remote_job=job,
        run_config={},
        step_keys_to_execute=None,
        known_state=None,
        instance=instance,
    )
    return instance.create_run(
        job_name=job.name,
        run_id=None,
        run_config={},
        resolved_op_selection=None,
        step_keys_to_execute=None,
        status=None,
        tags={"dagster/partition": connection_id},
        root_run_id=None,
        parent_run_id=None,
        job_snapshot=job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=job.parent_job_snapshot,
        remote_job_origin=job.get_remote_origin(),
        job_code_origin=job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        op_selection=None,
        asset_graph=context.asset_graph,
    )


def _workspace(instance, port: int):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import GrpcServerTarget

    target = GrpcServerTarget(host="127.0.0.1", port=port, socket=None, location_name="writevue")
    return WorkspaceProcessContext(instance, target)


def _launch_refresh(instance, port: int, connection_id: str) -> str:
    """Create and launch the Stripe refresh of one connection as the daemon would: the
    instance's run launcher, asking the code server over gRPC. Returns the run's id."""
    with _workspace(instance, port) as workspace:
        context = workspace.create_request_context()
        run = _create_refresh(instance, context, connection_id)
        instance.launch_run(run.run_id, context)
    return run.run_id


def _queue_refreshes(instance, context, runtime, sandbox_url: str, count: int) -> list[str]:
    """``count`` Stripe connections on the sandbox, each one's refresh created and queued
    (submitted to the instance's queue, as a schedule's runs are). Returns the runs' ids."""
    connections = [
        add_stripe_connection(runtime, sandbox_url, new_stripe_key())[1] for _ in range(count)
    ]
    instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, connections)
    run_ids = []
    for connection in connections:
        run = _create_refresh(instance, context, connection)
        instance.submit_run(run.run_id, context)
        run_ids.append(run.run_id)
    return run_ids


def _run_pid(instance, run_id: str) -> int:
    """The run's process, as its own event log gives it ("Started process for run (pid: …)")."""
    import re

    for record in instance.all_logs(run_id):
        found = re.search(r"\(pid: (\d+)\)", record.user_message or "")
        if found:
            return int(found.group(1))
    raise AssertionError(f"no pid in the log of run {run_id}")


@pytest.mark.timeout(300)
def test_the_code_server_forks_each_run_from_a_preloaded_forkserver(home, code_server, runtime):
    from dagster import DagsterInstance, DagsterRunStatus

    child, port = code_server
    with SandboxServer(latency_s=0.05) as sandbox:
        _, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, [connection])

            def forkservers() -> list[int]:
                return [
                    pid for pid in _children(child.process.pid) if "forkserver" in _command(pid)
                ]

            # started with the server, before any run (in the background: give it a moment)
            wait_until(lambda: bool(forkservers()), timeout=30, what="the forkserver", child=child)
            (forkserver,) = forkservers()
            with ParentWatch(child.process.pid) as watch:
                run_id = _launch_refresh(instance, port, connection)

                def finished() -> bool:
                    return instance.get_run_by_id(run_id).is_finished

                wait_until(finished, timeout=240, what="the run", child=child)
            assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
            pid = _run_pid(instance, run_id)
    assert watch.seen.get(pid) == forkserver, (
        f"run process {pid} was seen with parent {watch.seen.get(pid)}, "
        f"not the forkserver {forkserver} (the server is {child.process.pid})"
    )
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, connection) > 0
        assert registry.get_connection(session, connection).last_refreshed_at is not None


@pytest.mark.timeout(300)
def test_a_forked_run_told_to_stop_stops(home, code_server, runtime):
    """A run forked from the forkserver still answers Dagster's termination (the UI's
    "Terminate"): the server tells the run's process, which stops its step and ends as
    canceled, long before its slow fetch would have finished, and is not retried (Dagster
    retries an interrupted step under its retry policy, a minute later)."""
    from dagster import DagsterInstance, DagsterRunStatus

    child, port = code_server
    with SandboxServer() as sandbox:
        # every request to this account waits 3 s: the fetch takes far longer than the test
        key = new_stripe_key() + "__f_latency3000"
        _, connection = add_stripe_connection(runtime, sandbox.url, key)
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, [connection])

            def fetching() -> bool:
                return sum(sandbox.requests_per_url(key).values()) > 0

            sandbox.reset_requests()
            run_id = _launch_refresh(instance, port, connection)
            # told to stop while it fetches (Dagster would retry a step interrupted there)
            wait_until(fetching, timeout=120, what="the run's fetch", child=child)
            started = time.monotonic()
            assert instance.run_launcher.terminate(run_id)

            def finished() -> bool:
                return instance.get_run_by_id(run_id).is_finished

            wait_until(finished, timeout=60, what="the run to stop", child=child)
            status = instance.get_run_by_id(run_id).status
            took = time.monotonic() - started
            pid = _run_pid(instance, run_id)
    assert status == DagsterRunStatus.CANCELED
    assert took < 30, f"the run took {took:.0f} s to stop"
    assert pid not in process_parents() or not _command(pid), "the run's process is gone"


@pytest.mark.timeout(300)
def test_the_first_pass_of_the_queue_keeps_a_new_pool_to_its_limit(home, code_server, runtime):
    """Three refreshes of one provider queued on a fresh instance (``writevue init``'s) before
    the daemon's first look at the queue: that pass starts two, the pool's default limit,
    and the third waits. (Dagster's own coordinator stored a pool's default limit during the
    pass, after reading which pools were limited, and started all three.)"""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    child, port = code_server
    with SandboxServer(latency_s=0.05) as sandbox, DagsterInstance.get() as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        with _workspace(instance, port) as workspace:
            context = workspace.create_request_context()
            run_ids = _queue_refreshes(instance, context, runtime, sandbox.url, 3)
            assert {instance.get_run_by_id(r).status for r in run_ids} == {DagsterRunStatus.QUEUED}

            daemon = QueuedRunCoordinatorDaemon(
                interval_seconds=instance.run_coordinator.dequeue_interval_seconds
            )
            list(daemon.run_iteration(workspace))
            statuses = [instance.get_run_by_id(r).status for r in run_ids]
            started = [
                r
                for r, status in zip(run_ids, statuses, strict=True)
                if status != DagsterRunStatus.QUEUED
            ]

            for run_id in run_ids:  # leave nothing running behind the test
                if run_id not in started:
                    instance.run_coordinator.cancel_run(run_id)

            def finished() -> bool:
                return all(instance.get_run_by_id(r).is_finished for r in run_ids)

            wait_until(finished, timeout=240, what="the started runs", child=child)
    assert len(started) == 2, f"the first pass started {len(started)} runs: {statuses}"


#: what a run imports only when it starts (a notifications run's modules, numpy for its
#: merged series) and what the code location loads (the refresh)
RUN_MODULES = [
    "writevue_pipelines.notifications.runner",
    "writevue_pipelines.notifications.smtp",
    "writevue_pipelines.notifications.batch",
    "numpy",
    "writevue_pipelines.refresh",
]


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory) -> dict:
    """What a process that imported ``run_preload`` (as the forkserver does) holds, with
    no OPENBLAS_NUM_THREADS of its own: the modules of RUN_MODULES it lacks, and how many
    of its threads are named as the process (numpy's OpenBLAS names its threads so). One
    process for the tests that read it: the preload takes seconds."""
    import json
    import subprocess
    import sys

    probe = (
        "import gc, json, os, sys, writevue_pipelines.run_preload\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip()\n"
        "         for t in os.listdir('/proc/self/task')]\n"
        f"missing = [m for m in {RUN_MODULES!r} if m not in sys.modules]\n"
        "same = names.count(open('/proc/self/comm').read().strip())\n"
        "print(json.dumps({'missing': missing, 'same_named_threads': same,\n"
        "                  'frozen': gc.get_freeze_count(), 'tracked': len(gc.get_objects())}))\n"
    )
    env = {**os.environ, "WRITEVUE_HOME": str(tmp_path_factory.mktemp("preload") / "home")}
    env.pop("OPENBLAS_NUM_THREADS", None)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_forkserver_preloads_what_a_notifications_run_imports(preloaded):
    """A notifications run imports its modules (and numpy, for its merged series) only
    when it starts; forked from the forkserver, it finds them already imported, as a
    refresh run finds the refresh's."""
    missing = " ".join(preloaded["missing"])
    assert missing == "", f"not preloaded: {missing}"


def test_the_preload_is_frozen_out_of_a_forked_runs_collections(preloaded):
    """What the forkserver imported is frozen (``gc.freeze``): a run's collections leave
    those pages shared instead of copying them (about 35 MB of private memory a run)."""
    assert preloaded["frozen"] > 100_000, preloaded
    assert preloaded["tracked"] < preloaded["frozen"] / 10, preloaded


def test_the_preload_starts_no_numpy_thread(preloaded):
    """numpy's OpenBLAS starts a thread per core when imported (named as the process is);
    a process that imports WriteVue first (the forkserver's preload) keeps it to one."""
    same = str(preloaded["same_named_threads"])
    assert same == "1", f"threads named as the process: {same}"


@pytest.mark.timeout(300)
def test_the_queue_starts_a_waiting_run_as_soon_as_a_slot_is_freed(home, code_server, runtime):
    """Three refreshes of one provider queued, its pool's limit two: the daemon's queue
    loop (Dagster's queue daemon as the daemon process builds it, here told to look at the
    queue only once a minute) starts two, and the third as soon as one of them has ended,
    not at its next look a minute later (Dagster's loop left a freed slot empty until
    then: half a second on average at the configured 0.5 s)."""
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    child, port = code_server
    with SandboxServer(latency_s=0.05) as sandbox, DagsterInstance.get() as instance:
        # read as the daemon process reads it to build its queue daemon (here built below)
        assert instance.run_coordinator.dequeue_interval_seconds == 0.5
        stop = threading.Event()
        with _workspace(instance, port) as workspace:
            context = workspace.create_request_context()
            run_ids = _queue_refreshes(instance, context, runtime, sandbox.url, 3)
            with QueuedRunCoordinatorDaemon(interval_seconds=60) as daemon:

                def loop() -> None:
                    for _ in daemon.core_loop(workspace, stop):
                        if stop.is_set():
                            return

                looping = threading.Thread(target=loop, daemon=True)
                looping.start()
                try:

                    def finished() -> bool:
                        return all(instance.get_run_by_id(r).is_finished for r in run_ids)

                    wait_until(finished, timeout=240, what="the three runs", child=child)
                finally:
                    stop.set()
                    looping.join(30)
        records = {r: instance.get_run_record_by_id(r) for r in run_ids}
        starting = {
            r: instance.all_logs(r, of_type=DagsterEventType.PIPELINE_STARTING)[0].timestamp
            for r in run_ids
        }
    assert {record.dagster_run.status for record in records.values()} == {DagsterRunStatus.SUCCESS}
    first, second, third = sorted(run_ids, key=starting.get)
    freed = min(records[first].end_time, records[second].end_time)
    assert starting[third] > freed - 1, "the third run started before a slot was free"
    waited = starting[third] - freed
    assert waited < 20, f"the third run started {waited:.1f} s after a slot was freed"


#: a run forked from the forkserver, as near as a test can watch one: this process imports
#: ``run_preload`` (the forkserver's preload), builds what the code server hands a run
#: (the job, reconstructable from the code location; the run's arguments, serialised),
#: and then does what the forked process does (``start_run_in_subprocess``: the instance
#: opened from its reference, the run executed), printing what that imported and how
#: often it read Dagster's migration scripts
_FORKED_RUN = (
    """
import json, multiprocessing, os, sys
import writevue_pipelines.run_preload
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.instance.ref import InstanceRef
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._grpc.impl import start_run_in_subprocess
from dagster._grpc.types import ExecuteExternalJobArgs
from dagster_shared.serdes import serialize_value

run_id, job = sys.argv[1:]
recon_job = ReconstructableRepository.for_module(
    "writevue_pipelines.defs", "defs"
).get_reconstructable_job(job)
location = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=4266, location_name="writevue")
origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job)
ref = InstanceRef.from_dir(os.environ["DAGSTER_HOME"])
arguments = serialize_value(
    ExecuteExternalJobArgs(job_origin=origin, run_id=run_id, instance_ref=ref)
)
status, stop = multiprocessing.Queue(), multiprocessing.Event()
"""
    + COUNT_MIGRATION_READS
    + """
before = set(sys.modules)
start_run_in_subprocess(arguments, recon_job, status, stop)
imported = sorted(set(sys.modules) - before)
print(json.dumps({"imported": imported, "reads": reads}))
"""
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("instance_kind", ["sqlite", "postgres"])
def test_a_forked_run_imports_nothing_and_reads_no_migration_script(
    instance_kind, request, monkeypatch, tmp_path, home, runtime
):
    """Whatever a run imports or reads when it starts, it pays for in every run; forked
    from the forkserver, it should find all of it done. (Found undone: the file-system
    paths Dagster's instance loads for its definitions' state (``upath``, with fsspec), its
    secrets loader, its compute logs, and Dagster's ~90 migration scripts, read three
    times: about 0.1 s of CPU a run.)"""
    import json
    import subprocess
    import sys

    from dagster import DagsterInstance, DagsterRunStatus

    from writevue_pipelines.defs import defs

    if instance_kind == "postgres":  # the production instance (deploy/dagster.yaml)
        postgres_url = request.getfixturevalue("postgres_url")
        dagster_home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster")
        monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with SandboxServer(latency_s=0.01) as sandbox:
        _, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, [connection])
            job = defs.get_job_def(job_name("stripe"))
            run = instance.create_run_for_job(job, tags={"dagster/partition": connection})
            done = subprocess.run(
                [sys.executable, "-c", _FORKED_RUN, run.run_id, job.name],
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.SUCCESS
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, connection) > 0
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["imported"], out["reads"]) == ([], []), (
        f"imported by the run: {' '.join(out['imported'])}; migration scripts read: {out['reads']}"
    )
