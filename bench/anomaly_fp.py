"""Benchmark: the anomaly method's false-positive rate on the sandbox's seeded data.

    python -m bench.anomaly_fp [--tenants 10] [--days 180] [--threshold 3.5]

The sandbox's data have no incidents: each day of each account is drawn from the same
distribution (seeded by account and day), so every day the method flags is a false
positive. WriteVue's whole path makes the daily aggregates: Stripe and GitHub
connections are refreshed from the sandbox over HTTP (fetch, staging, polars
aggregation, warehouse), as a client's would be; GA4's sandbox already serves daily
totals, so its days (``writevue_sandbox.ga4_data.day_metrics``) go through the GA4
source's own ``aggregate`` into the warehouse without the OAuth2 dance. Then every series
``evaluate.detect_anomalies`` judges (each metric's total; a line per currency for
money) is judged on every day that has 8 weeks of history before it.

Prints a table per source and overall: series, judged days, flagged days, rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import tempfile
import time
from collections import Counter

import polars as pl


def _ga4_facts(property_id: str, days: int, today: dt.date) -> pl.DataFrame:
    from writevue_pipelines.sources import SOURCES
    from writevue_sandbox import ga4_data

    names = {
        "sessions": "sessions",
        "active_users": "activeUsers",
        "page_views": "screenPageViews",
        "conversions": "keyEvents",
    }
    rows = []
    for back in range(days, 0, -1):
        day = today - dt.timedelta(days=back)
        found = ga4_data.day_metrics(property_id, day)
        rows.append({"day": day, **{ours: float(found[theirs]) for ours, theirs in names.items()}})
    return SOURCES["ga4"].aggregate(pl.DataFrame(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--days", type=int, default=180, help="history refreshed per connection")
    parser.add_argument("--threshold", type=float, default=3.5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="writevue-anomaly-fp-") as home:
        os.environ["WRITEVUE_HOME"] = home
        os.environ.pop("WRITEVUE_DATABASE_URL", None)
        os.environ["WRITEVUE_HISTORY_DAYS"] = str(args.days)
        from writevue_pipelines import refresh, registry, warehouse
        from writevue_pipelines.home import init_home
        from writevue_pipelines.notifications import anomaly, evaluate
        from writevue_pipelines.runtime import Runtime
        from writevue_pipelines.settings import Settings
        from writevue_sandbox import SandboxServer

        settings = Settings.from_env()
        init_home(settings)
        runtime = Runtime(settings)
        today = dt.datetime.now(dt.UTC).date()
        started = time.perf_counter()
        with SandboxServer() as sandbox:
            tenants, fetched = [], []
            with runtime.db.session() as session:
                for n in range(args.tenants):
                    tenant = registry.add_tenant(session, runtime.keys, f"FP {n}", "fp@bench.test")
                    tenants.append(tenant)
                    fetched.append(
                        registry.add_connection(
                            session,
                            runtime.keys,
                            tenant,
                            "stripe",
                            "api_key",
                            {"base_url": sandbox.url},
                            {"api_key": f"sk_test_{secrets.token_hex(12)}"},
                        )
                    )
                    fetched.append(
                        registry.add_connection(
                            session,
                            runtime.keys,
                            tenant,
                            "github",
                            "api_key",
                            {"base_url": sandbox.url, "owner": f"fp-org-{n}"},
                            {"api_key": f"ghp_{secrets.token_hex(16)}"},
                        )
                    )
                    ga4 = registry.add_connection(
                        session,
                        runtime.keys,
                        tenant,
                        "ga4",
                        "oauth2",
                        {"property_id": str(300_000_000 + n)},
                        {"access_token": secrets.token_hex(16)},
                    )
                    connection = registry.get_connection(session, ga4)
                    facts = _ga4_facts(str(300_000_000 + n), args.days, today)
                    warehouse.upsert_facts(session, connection, facts, window_start=None)
                    registry.record_refresh_result(session, ga4, error=None)
            outcomes = refresh.refresh_connections(runtime, fetched)
        failed = [cid for cid, outcome in outcomes.items() if getattr(outcome, "error", None)]
        if failed:
            raise SystemExit(f"{len(failed)} connections failed to refresh")
        refreshed_s = time.perf_counter() - started

        series, judged, flagged = Counter(), Counter(), Counter()
        started = time.perf_counter()
        with runtime.db.session() as session:
            for tenant_id in tenants:
                tenant = evaluate._Tenant.load(session, tenant_id)
                first = today - dt.timedelta(days=args.days + 1)
                resolver = tenant.resolver(session, first, today - dt.timedelta(days=1))
                days = resolver.figures.days()
                for ref, dimension in evaluate._judged(resolver, ()):
                    definition = resolver.define(ref)
                    source = ref.split(".", 1)[0]
                    values = dict(
                        zip(days, resolver.series(ref, dimension or None, days), strict=True)
                    )
                    series[source] += 1
                    for day in days:
                        verdict = anomaly.detect(
                            values,
                            day,
                            threshold=args.threshold,
                            min_spread=evaluate._min_spread(definition.unit),
                        )
                        if verdict is None:
                            continue
                        judged[source] += 1
                        flagged[source] += verdict.anomalous
        judged_s = time.perf_counter() - started
        runtime.close()

    print(f"{'source':<10}{'series':>8}{'judged days':>13}{'flagged':>9}{'rate':>9}")
    for source in sorted(judged):
        rate = flagged[source] / judged[source]
        print(
            f"{source:<10}{series[source]:>8}{judged[source]:>13}{flagged[source]:>9}{rate:>9.2%}"
        )
    total_judged, total_flagged = sum(judged.values()), sum(flagged.values())
    overall = total_flagged / total_judged if total_judged else 0.0
    print(
        f"{'overall':<10}{sum(series.values()):>8}{total_judged:>13}{total_flagged:>9}"
        f"{overall:>9.2%}"
    )
    print(
        f"tenants={args.tenants} days={args.days} threshold={args.threshold} "
        f"judged={total_judged} flagged={total_flagged} fp_rate={overall:.4f} "
        f"refresh_s={refreshed_s:.1f} judge_s={judged_s:.1f}"
    )


if __name__ == "__main__":
    main()
