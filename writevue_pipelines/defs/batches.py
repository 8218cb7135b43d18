"""Run requests that refresh many connections in few runs: one partition-key range per batch.

A run launch costs seconds and a fresh process, so N connections are split into
ceil(N / batch) runs; each run's step fetches its connections concurrently and records
a materialisation per connection partition. Ranges are taken over the partitions in
the instance's order, so a range holds exactly the connections of its batch.

Runs are tagged so they can be filtered by client in the UI, with ids only: a run
whose connections all belong to one tenant gets ``writevue/tenant=<tenant id>``; a
batch spanning several tenants cannot name them all under one tag key, so it gets
``writevue/tenants=<how many>`` instead (its partitions name its connections).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dagster import RunRequest

from .assets import SourceAssets

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
SOURCE_TAG = "writevue/source"
TRIGGER_TAG = "writevue/trigger"
TENANT_TAG = "writevue/tenant"
TENANTS_TAG = "writevue/tenants"


def chunks(keys: Sequence[str], batch: int) -> list[Sequence[str]]:
    return [keys[start : start + batch] for start in range(0, len(keys), batch)]


def tenant_tags(connection_ids: Sequence[str], tenant_of: Mapping[str, str]) -> dict[str, str]:
    """``writevue/tenant`` when the connections share one tenant, else how many tenants."""
    tenants = {tenant_of[cid] for cid in connection_ids if cid in tenant_of}
    if len(tenants) == 1:
        return {TENANT_TAG: next(iter(tenants))}
    return {TENANTS_TAG: str(len(tenants))} if tenants else {}


def contiguous_batches(
    ordered_keys: Sequence[str], wanted: Sequence[str], batch: int
) -> list[list[str]]:
    """``wanted`` in batches of at most ``batch`` that are each a run of consecutive keys of
    ``ordered_keys`` (the instance's partition order), so each batch is one range."""
    chosen = set(wanted)
    batches: list[list[str]] = []
    current: list[str] = []
    for key in ordered_keys:
        if key in chosen and len(current) < batch:
            current.append(key)
            continue
        if current:
            batches.append(current)
        current = [key] if key in chosen else []
    if current:
        batches.append(current)
    return batches


def batch_run_requests(
    assets: SourceAssets,
    ordered_keys: Sequence[str],
    *,
    batch: int,
    trigger: str,
    run_key_prefix: str | None = None,
    tenant_of: Mapping[str, str] | None = None,
) -> list[RunRequest]:
    """One run request per batch of consecutive partitions (connection UUIDs only), for the
    source's job; ``tenant_of`` (connection id -> tenant id) adds the tenant tags."""
    requests = []
    for chunk in chunks(list(ordered_keys), batch):
        tags = {SOURCE_TAG: assets.source, TRIGGER_TAG: trigger}
        tags |= tenant_tags(chunk, tenant_of or {})
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
