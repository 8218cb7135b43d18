"""One dynamic partition set per source; a partition key is a connection's opaque UUID."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

from ..sources import SOURCES


def partitions_name(source: str) -> str:
    return f"{source}_connections"


#: source name -> its connections as dynamic partitions. Keys are connection UUIDs only:
#: Dagster's OSS event log cannot be wiped per partition, so nothing personal may enter it.
CONNECTION_PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    name: DynamicPartitionsDefinition(name=partitions_name(name)) for name in SOURCES
}
