"""The dashboard benchmark's baselines: a bare Panel page (the floor) and a naive Panel dashboard.

    python -m bench.dashboard_baselines {bare,naive} --port PORT

Each is served at ``/d/{token}`` like the dashboard, on the warehouse WRITEVUE_HOME
names; the dashboard itself is run as in production, by ``writevue serve``.

The bare page gets the product's server tuning (``dashboard_server.tuning``): websockets
that are compressed, send without Nagle's delay and let a closed page's session go at
once, Bokeh's unused-session check every second, no per-page ``location`` model, the
startup objects frozen out of the garbage collector and freed heap handed back after
sessions end. A floor without them would flatter the dashboard. The naive dashboard stays a plain
``pn.serve``, as someone building it naively would run it: a reference, not a floor.
"""

from __future__ import annotations

import argparse

KINDS = ("bare", "naive")


def serve(kind: str, port: int, origins: list[str] | None = None) -> None:
    """Run a baseline server in this process until it is stopped; its websockets accept
    pages from ``127.0.0.1:port`` and ``origins`` (``host:port``)."""
    import logging

    import panel as pn

    from writevue_pipelines.runtime import Runtime

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    runtime = Runtime.from_env()
    app = bare_page if kind == "bare" else naive_dashboard(runtime)
    pn.extension(notifications=False)
    tuned = kind == "bare"
    tuning = {}
    if tuned:
        from dashboard_server.tuning import SESSION_CHECK_MS, WEBSOCKET_COMPRESSION, release_memory

        pn.state.on_session_destroyed(release_memory)
        tuning = {
            "location": False,
            "check_unused_sessions_milliseconds": SESSION_CHECK_MS,
            **WEBSOCKET_COMPRESSION,
        }
    server = pn.serve(
        {"/d/{token}": app},
        port=port,
        address="127.0.0.1",
        show=False,
        start=False,
        threaded=False,
        verbose=False,
        websocket_origin=[f"127.0.0.1:{port}", *(origins or [])],
        **tuning,
    )
    if tuned:
        from dashboard_server.server import tornado_application
        from dashboard_server.tuning import freeze_startup_objects, install_dashboard_socket

        install_dashboard_socket(tornado_application(server))
        freeze_startup_objects()
    server.start()
    server.io_loop.start()


def bare_page():
    import panel as pn

    return pn.pane.Markdown("# Hello")


def naive_dashboard(runtime):
    """The naive build: a template, a figure per metric, Tabulator, KPI indicators."""
    import panel as pn
    import polars as pl
    from bokeh.plotting import figure

    from dashboard_server.data import load_dashboard
    from writevue_pipelines import links

    def app():
        token = pn.state.route_params.get("token", "")
        with runtime.db.session() as session:
            link = links.resolve_token(session, token)
        data = load_dashboard(runtime, link.tenant_id)
        template = pn.template.BootstrapTemplate(title=data.tenant_name)
        template.main.append(
            pn.FlexBox(
                *[pn.indicators.Number(name=k.label, value=k.value, format="{value:,.0f}")
                  for k in data.kpis]
            )
        )  # fmt: skip
        for metric in sorted(data.series["metric"].unique().to_list()):
            rows = data.series.filter(pl.col("metric") == metric).sort("day")
            plot = figure(
                title=metric, x_axis_type="datetime", height=250, sizing_mode="stretch_width"
            )
            plot.line(rows["day"].to_list(), rows["value"].to_list())
            template.main.append(pn.pane.Bokeh(plot))
        template.main.append(pn.widgets.Tabulator(data.series.to_pandas(), pagination="remote"))
        return template

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_baselines")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--origin", action="append", default=[], help="another host:port pages come from"
    )
    args = parser.parse_args(argv)
    serve(args.kind, args.port, args.origin)


if __name__ == "__main__":
    main()
