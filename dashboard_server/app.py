"""The client's dashboard as a Panel ``Viewer``: its parameters are the state, HTML is the view.

The view never touches tokens or SQL: the server hands it a ``DashboardSource``
(load a period, is the link still alive, where the CSV is). To stay cheap per
view (a few Bokeh models, not hundreds), the header, KPI cards, the charts and the
breakdown table are one HTML pane (``render``); only the date-range picker is made
of widgets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

import panel as pn
import param

from .data import PRESET_DAYS, Period
from .render import GONE_HTML, RELOAD_HTML, RENDERING_CSS, dashboard_html

__all__ = ["GONE_HTML", "RELOAD_HTML", "Dashboard", "DashboardSource", "dashboard_html"]

RANGE_OPTIONS = {f"{days} days": str(days) for days in PRESET_DAYS} | {"Custom": "custom"}


class DashboardSource(Protocol):
    """What the view may ask of the server about the one tenant it shows."""

    def page(self, period: Period, *, tv: bool) -> str:
        """The dashboard's HTML for the period (``dashboard_html`` of its data)."""
        ...

    def alive(self) -> bool: ...


# -- the Viewer -------------------------------------------------------------------------


class Dashboard(pn.viewable.Viewer):
    """One client's dashboard. The date range and TV mode are its state.

    Nothing here schedules itself: the server calls ``tick`` every ``refresh_s`` seconds
    while the session is open, and ``end`` once its link is gone (see
    ``dashboard_server.ticker``). Every change the client makes asks the source whether
    the link is still alive before anything is rendered.
    """

    range = param.Selector(default="30", objects=list(RANGE_OPTIONS.values()))
    custom = param.CalendarDateRange(default=None, doc="the custom period, when range is custom")
    tv = param.Boolean(default=False, doc="TV mode: reloads itself, large type, dark")
    refresh_s = param.Integer(default=60, bounds=(1, None))
    gone = param.Boolean(default=False, doc="the link was revoked or expired while open")

    def __init__(
        self,
        source: DashboardSource,
        *,
        today: Callable[[], dt.date] | None = None,
        on_interaction: Callable[[], None] | None = None,
        **params,
    ):
        self._source = source
        self._on_interaction = on_interaction
        self._today = today or (lambda: dt.datetime.now(dt.UTC).date())
        if params.get("custom") is None:
            period = Period.last(30, self._today())
            params["custom"] = (period.start, period.end)
        super().__init__(**params)
        self._content = pn.pane.HTML(
            sizing_mode="stretch_width", margin=0, stylesheets=[RENDERING_CSS]
        )
        picker = pn.widgets.RadioButtonGroup.from_param(
            self.param.range, options=RANGE_OPTIONS, name="", button_type="light"
        )
        # The custom-range picker is made when first asked for: most views never use it,
        # and every widget is Bokeh models to build, send and draw on each page load.
        self._custom_picker: pn.widgets.DateRangePicker | None = None
        self._controls = pn.Row(picker, css_classes=["wv-controls"], visible=not self.tv)
        self._layout = pn.Column(
            self._controls,
            self._content,
            css_classes=["wv-root"] + (["wv-root-tv"] if self.tv else []),
            styles={"background": "#0b1020", "min-height": "100vh"} if self.tv else {},
            sizing_mode="stretch_width",
            margin=0,
        )
        self._draw()  # the server has just checked the link: no second check

    @property
    def period(self) -> Period:
        if self.range == "custom" and self.custom:
            return Period.between(*self.custom)
        days = int(self.range) if self.range != "custom" else 30
        return Period.last(days, self._today())

    def _show_custom_picker(self) -> None:
        if self.range == "custom" and self._custom_picker is None:
            self._custom_picker = pn.widgets.DateRangePicker.from_param(
                self.param.custom, name="", width=260
            )
            self._controls.append(self._custom_picker)
        elif self._custom_picker is not None:
            self._custom_picker.visible = self.range == "custom"

    @param.depends("range", "custom", watch=True)
    def _render(self) -> None:
        """The client changed the period: draw it, if the link still opens this dashboard."""
        if self.gone:
            return
        if not self._source.alive():
            self.end(GONE_HTML)
            return
        self._draw()

    def _draw(self) -> None:
        self._show_custom_picker()
        self._content.object = self._source.page(self.period, tv=self.tv)

    @param.depends("range", "custom", watch=True)
    def _interacted(self) -> None:
        """The client used a control: counted (anonymised) for the dashboard-use trends."""
        if self._on_interaction is not None and not self.gone:
            self._on_interaction()

    def tick(self) -> None:
        """Periodic: in TV mode, reload (if the link still opens this dashboard)."""
        if self.tv:
            self._render()

    def end(self, page: str = GONE_HTML) -> None:
        """Stop showing anything of the tenant: the link is gone (or the page expired)."""
        self.gone = True
        self._controls.visible = False
        self._content.object = page

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout
