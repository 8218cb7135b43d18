"""WriteVue: the domain core and the Dagster code location (``writevue_pipelines.defs``)."""

import sys as _sys

from . import redaction as _redaction

# httpx imports its command-line client, and with it rich and click (some 45 ms, in every
# process that fetches or evaluates), whenever they are installed, as Dagster installs
# them. WriteVue never runs that client: marked as absent, httpx keeps its stand-in
# ``httpx.main`` instead. Only before httpx is imported; never in place of a real one.
if "httpx" not in _sys.modules:
    _sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]

# Libraries log request URLs; make sure no key or token in one reaches a log from any
# process that uses WriteVue's code, whatever logging it configures later.
_redaction.install()
