"""Aggregates only (staging leftovers are swept); staff access leaves an audit record."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest
from support import add_connection, add_stripe_connection

from writevue_pipelines import cli, registry
from writevue_pipelines.privacy import list_events, operator_name, sweep_staging
from writevue_pipelines.settings import ConfigError, Settings


def _stage(folder, age_hours: float) -> None:
    folder.mkdir(parents=True)
    (folder / "records.parquet").write_bytes(b"raw records")
    stamp = time.time() - age_hours * 3600
    for path in (folder / "records.parquet", folder):
        os.utime(path, (stamp, stamp))


def _connection(runtime) -> str:
    _, connection_id = add_connection(
        runtime,
        "stripe",
        "api_key",
        {},
        {"api_key": "sk_y"},
        name="Sweep Co",
        email="ops@sweep.test",
    )
    return connection_id


def test_staging_leftovers_older_than_the_limit_are_swept(runtime):
    staging = runtime.settings.staging_dir
    fresh, stale = _connection(runtime), _connection(runtime)
    erased = "00000000-0000-4000-8000-00000000dead"  # no such connection any more
    _stage(staging / fresh, age_hours=1)
    _stage(staging / stale, age_hours=30)
    _stage(staging / erased, age_hours=0)
    (staging / "stray.tmp").write_bytes(b"x")
    os.utime(staging / "stray.tmp", (time.time() - 90_000, time.time() - 90_000))

    report = sweep_staging(runtime)  # the default limit: 24 hours
    assert sorted(p.name for p in staging.iterdir()) == [fresh]
    assert (report.removed_entries, report.removed_files, report.kept_entries) == (3, 3, 1)
    assert sweep_staging(runtime, max_age=dt.timedelta(0)).removed_entries == 1
    assert list(staging.iterdir()) == []


def test_the_staging_age_limit_is_a_setting():
    assert Settings.from_env({"WRITEVUE_STAGING_MAX_AGE_HOURS": "6"}).staging_max_age_hours == 6
    with pytest.raises(ConfigError, match="WRITEVUE_STAGING_MAX_AGE_HOURS"):
        Settings.from_env({"WRITEVUE_STAGING_MAX_AGE_HOURS": "soon"})


def test_the_memory_a_refresh_holds_records_in_is_a_setting():
    assert Settings.from_env({}).staging_memory_mb == 64
    assert Settings.from_env({"WRITEVUE_STAGING_MEMORY_MB": "0"}).staging_memory_mb == 0
    with pytest.raises(ConfigError, match="WRITEVUE_STAGING_MEMORY_MB must be 0 or more"):
        Settings.from_env({"WRITEVUE_STAGING_MEMORY_MB": "-1"})
    with pytest.raises(ConfigError, match="WRITEVUE_STAGING_MEMORY_MB must be a whole number"):
        Settings.from_env({"WRITEVUE_STAGING_MEMORY_MB": "lots"})


def test_reading_a_tenant_is_audited_and_listed(runtime, capsys):
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, "Watched Co", "ops@watched.test")
        other = registry.add_tenant(session, runtime.keys, "Other Co", "ops@other.test")
    assert cli.main(["tenant", "show", tenant_id, "--actor", "erin"]) == 0
    out = capsys.readouterr().out
    assert "Watched Co" in out and "ops@watched.test" in out
    assert cli.main(["tenant", "show", other, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "Other Co"
    assert cli.main(["refresh", "--tenant", tenant_id, "--actor", "erin"]) == 0
    capsys.readouterr()
    assert cli.main(["tenant", "show", tenant_id, "--actor", "bad\nname"]) == 2
    assert "--actor" in capsys.readouterr().err

    assert cli.main(["audit", "list", "--tenant", tenant_id, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [(e["actor"], e["action"], e["tenant_id"]) for e in events] == [
        ("erin", "tenant.show", tenant_id),
        ("erin", "tenant.refresh", tenant_id),
    ]
    assert all(
        set(e) == {"at", "actor", "action", "tenant_id", "details", "reason"} for e in events
    )
    assert cli.main(["audit", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and operator_name() in lines[1] and other in lines[1]
    assert len(list_events(runtime)) == 3
    assert cli.main(["audit", "list", "--tenant", "nope"]) == 2
    assert "not a valid id" in capsys.readouterr().err


def test_testing_a_connection_is_audited_and_keeps_nothing(runtime, sandbox, capsys):
    from writevue_pipelines import warehouse

    tenant_id, connection_id = add_stripe_connection(runtime, sandbox.url, "sk_test_probe_check")
    assert cli.main(["connection", "test", connection_id, "--actor", "sam"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: stripe connection") and "nothing was kept" in out
    assert sandbox.counters["stripe.balance_transactions"] >= 1
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, connection_id) == 0
        assert registry.get_cursor(session, connection_id, "balance_transactions") is None
    assert not (runtime.settings.staging_dir / connection_id).exists()
    events = list_events(runtime, tenant_id)
    assert [(e.actor, e.action) for e in events] == [("sam", "connection.test")]

    _, broken = add_stripe_connection(runtime, sandbox.url, "bad_key_zz", tenant_id=tenant_id)
    assert cli.main(["connection", "test", broken]) == 2
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "bad_key_zz" not in err
