"""A new built-in source is one file: the example in docs/sources/adding-a-source.md, added
to a copy of the product and nothing else, is registered, validated, refreshed into the
warehouse through the shared HTTP layer from a real local peer, and given its Dagster
assets, schedule and sensors."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from support import remember_secret

from writevue_pipelines.sources import SOURCES
from writevue_sandbox import rest as rest_sandbox
from writevue_sandbox.rest import RestHandler

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sources" / "adding-a-source.md"
KEY = remember_secret("rest_example_shop_key_0042")

#: what the copy of the product is asked, in its own process; it answers in JSON
CHECKS = """
import asyncio, datetime as dt, json, sys

import writevue_pipelines
from writevue_pipelines import refresh, registry, warehouse
from writevue_pipelines.errors import InvalidInput
from writevue_pipelines.home import init_home
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings
from writevue_pipelines.sources import SOURCES, get_source
from writevue_pipelines.sources.http import WriteRefused, open_client

sandbox_url, key = sys.argv[1], sys.argv[2]
source = get_source("example_shop")
report = {"package": writevue_pipelines.__file__, "sources": sorted(SOURCES)}
report["module"] = type(source).__module__
report["refused"] = []
for options in ({"base_url": "ftp://shop.example"}, {"colour": "red"}):
    try:
        source.validate_options(options)
    except InvalidInput as exc:
        report["refused"].append(str(exc))

runtime = Runtime(Settings.from_env())
init_home(runtime.settings)
with runtime.db.session() as session:
    tenant = registry.add_tenant(session, runtime.keys, "Shop Ltd", "ops@shop.test")
    options = source.validate_options({"base_url": sandbox_url})
    connection_id = registry.add_connection(
        session, runtime.keys, tenant, "example_shop", "api_key", options, {"api_key": key}
    )
outcome = refresh.refresh_connections(runtime, [connection_id])[connection_id]
report["error"] = None if outcome.error is None else refresh.safe_error(outcome.error)
report["window_start"] = outcome.fetched.window_start
report["requests"] = outcome.fetched.requests
with runtime.db.session() as session:
    facts = warehouse.tenant_facts(session, tenant, dt.date(2000, 1, 1), dt.date(2100, 1, 1))
    report["cursor"] = registry.get_cursor(session, connection_id, source.stream)
    connection = registry.get_connection(session, connection_id)
report["facts"] = [[m, d, day.isoformat(), v] for m, d, day, v in facts.iter_rows()]


async def try_to_write():
    allow = source.allowed_writes(connection)
    async with open_client(base_url=sandbox_url, allow=allow) as client:
        try:
            await client.post("/v2/orders", json={"amount": 1})
        except WriteRefused:
            return "refused"
        return "sent"


report["post"] = asyncio.run(try_to_write())

from writevue_pipelines.defs import defs

graph = defs.resolve_asset_graph()
report["assets"] = sorted(
    key.to_user_string()
    for key in graph.get_all_asset_keys()
    if key.to_user_string().startswith("example_shop")
)
report["schedule"] = defs.resolve_schedule_def("example_shop_refresh").name
report["sensors"] = [
    defs.resolve_sensor_def(f"example_shop_{kind}").name
    for kind in ("connection_partitions", "failing_connections")
]
runtime.close()
print(json.dumps(report))
"""


class ExampleShopOrders(RestHandler):
    """Example Shop's orders API: the sandbox's seeded orders with Link-header paging."""

    async def get(self) -> None:
        await super().get("header_link")


def example_from_doc() -> tuple[str, str]:
    """(path in the repository, code) of the file the doc presents as the whole source."""
    found = re.findall(
        r"<!-- example: (\S+) -->\n```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S
    )
    assert len(found) == 1, "the doc presents exactly one complete example"
    return found[0]


def expected_facts(start: dt.date) -> dict[tuple[str, str, str], float]:
    """Orders and revenue per metric, currency and day, straight from the sandbox's data."""
    facts: dict[tuple[str, str, str], float] = defaultdict(float)
    for order in rest_sandbox.all_orders(rest_sandbox.account_for(KEY)):
        day = order["created_at"][:10]
        if dt.date.fromisoformat(day) >= start:
            facts[("orders", order["currency"], day)] += 1
            facts[("revenue", order["currency"], day)] += float(order["amount"])
    return dict(facts)


def test_the_example_is_documentation_not_a_shipped_source():
    path, _ = example_from_doc()
    assert not (ROOT / path).exists() and "example_shop" not in SOURCES


def test_a_new_source_is_one_file(tmp_path, sandbox):
    path, code = example_from_doc()
    copy = tmp_path / "product"
    shutil.copytree(
        ROOT / "writevue_pipelines",
        copy / "writevue_pipelines",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (copy / path).write_text(code, encoding="utf-8")  # the one file added
    sandbox.app.add_handlers(r".*", [(r"/v2/orders", ExampleShopOrders)])

    env = {**os.environ, "WRITEVUE_HOME": str(tmp_path / "home")}
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(ROOT)])
    for name in ("WRITEVUE_DATABASE_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", CHECKS, sandbox.url, KEY],
        capture_output=True,
        text=True,
        env=env,
        cwd=copy,  # `-c` puts the working directory first on the path
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    # The copy, not the product, answered; the registry found the new file by itself.
    assert report["package"].startswith(str(copy))
    assert report["sources"] == sorted([*SOURCES, "example_shop"])
    assert report["module"] == "writevue_pipelines.sources.example_shop"
    assert report["refused"] == [
        "Option base_url must be an http(s) URL such as https://api.example.com.",
        "Source 'example_shop' has no option 'colour'; it takes base_url.",
    ]

    # A refresh read every page through the shared HTTP layer and landed the facts.
    assert report["error"] is None
    start = dt.date.fromisoformat(report["window_start"])
    expected = expected_facts(start)
    got = {(m, d, day): v for m, d, day, v in report["facts"]}
    assert got.keys() == expected.keys() and expected
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    orders = int(sum(v for (m, _, _), v in expected.items() if m == "orders"))
    assert report["requests"] == sandbox.counters["rest.header_link"] == -(-orders // 100)
    assert report["cursor"] == max(
        o["created_at"] for o in rest_sandbox.all_orders(rest_sandbox.account_for(KEY))
    )
    assert sandbox.counters["rest.auth.header"] == report["requests"]

    # Read-only without a line of its own, and scheduled by Dagster like every source.
    assert report["post"] == "refused"
    assert report["assets"] == ["example_shop_daily_metrics", "example_shop_fetch"]
    assert report["schedule"] == "example_shop_refresh"
    assert report["sensors"] == [
        "example_shop_connection_partitions",
        "example_shop_failing_connections",
    ]
