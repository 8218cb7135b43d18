"""WriteVue: the domain core and the Dagster code location (``writevue_pipelines.defs``)."""

from . import redaction as _redaction

# Libraries log request URLs; make sure no key or token in one reaches a log from any
# process that uses WriteVue's code, whatever logging it configures later.
_redaction.install()
