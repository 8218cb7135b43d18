"""Run requests that refresh many connections in few runs: one partition-key range per batch.

A run launch costs seconds and a fresh process, so N connections are split into
ceil(N / batch) runs; each run's step fetches its connections concurrently and records
a materialisation per connection partition. Ranges are taken over the partitions in
the instance's order, so a range holds exactly the connections of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster import RunRequest

from .assets import SourceAssets

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
SOURCE_TAG = "writevue/source"
TRIGGER_TAG = "writevue/trigger"


def chunks(keys: Sequence[str], batch: int) -> list[Sequence[str]]:
    return [keys[start : start + batch] for start in range(0, len(keys), batch)]


def batch_run_requests(
    assets: SourceAssets,
    ordered_keys: Sequence[str],
    *,
    batch: int,
    trigger: str,
    run_key_prefix: str | None = None,
) -> list[RunRequest]:
    """One run request per batch of consecutive partitions (connection UUIDs only)."""
    requests = []
    for chunk in chunks(list(ordered_keys), batch):
        tags = {SOURCE_TAG: assets.source, TRIGGER_TAG: trigger}
        run_key = f"{run_key_prefix}:{chunk[0]}" if run_key_prefix else None
        if len(chunk) == 1:
            requests.append(
                RunRequest(
                    run_key=run_key, asset_selection=assets.keys, partition_key=chunk[0], tags=tags
                )
            )
            continue
        tags |= {RANGE_START_TAG: chunk[0], RANGE_END_TAG: chunk[-1]}
        requests.append(RunRequest(run_key=run_key, asset_selection=assets.keys, tags=tags))
    return requests
