"""Privacy operations: erasure with proof, export, key rotation, retention and staff audit.

The promises of the privacy policy that only operations can keep. Everything here is
domain core: no Dagster, no Panel. The Dagster side (erasure sensor, retention job)
calls these functions.
"""

from .audit import list_events, operator_name, record_access
from .erasure import (
    ErasureReport,
    pending_requests,
    request_erasure,
    retry_revocations,
    run_erasure,
)
from .export import ExportReport, export_tenant
from .keys import RetireReport, RotationReport, retire_key, rotate_keys
from .retention import SweepReport, sweep_staging
from .verification import VerificationReport, verify_erasure

__all__ = [
    "ErasureReport",
    "ExportReport",
    "RetireReport",
    "RotationReport",
    "SweepReport",
    "VerificationReport",
    "export_tenant",
    "list_events",
    "operator_name",
    "pending_requests",
    "record_access",
    "request_erasure",
    "retire_key",
    "retry_revocations",
    "rotate_keys",
    "run_erasure",
    "sweep_staging",
    "verify_erasure",
]
