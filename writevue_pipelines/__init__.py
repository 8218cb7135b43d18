"""WriteVue: the domain core and the Dagster code location (``writevue_pipelines.defs``)."""

import os as _os
import sys as _sys

from . import redaction as _redaction

# Each process that works (a refresh or notifications run, a refresh worker, the dashboard
# server) is one of as many as there are cores, and its polars queries are small (a
# connection's pages, a tenant's days): a second thread in polars' pool only spins, some
# 15% more CPU for the same query here; and polars' default engine for a lazy query is
# its streaming one, whose set-up costs ~150 us of CPU a query where the in-memory
# engine's costs ~15 us. Both are read when polars starts, so only before polars is
# imported; an operator's POLARS_MAX_THREADS or POLARS_ENGINE_AFFINITY wins.
if "polars" not in _sys.modules:
    _os.environ.setdefault("POLARS_MAX_THREADS", "1")
    _os.environ.setdefault("POLARS_ENGINE_AFFINITY", "in-memory")
# numpy (a notifications run's merged series: element-wise, never a matrix product) starts
# OpenBLAS's thread pool when imported; one thread is all it needs, and the code server's
# forkserver, which imports it for the runs it forks, then starts no thread for it.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# httpx imports its command-line client, and with it rich and click (some 45 ms, in every
# process that fetches or evaluates), whenever they are installed, as Dagster installs
# them. WriteVue never runs that client: marked as absent, httpx keeps its stand-in
# ``httpx.main`` instead. Only before httpx is imported; never in place of a real one.
if "httpx" not in _sys.modules:
    _sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]

# Libraries log request URLs; make sure no key or token in one reaches a log from any
# process that uses WriteVue's code, whatever logging it configures later.
_redaction.install()
