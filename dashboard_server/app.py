"""The client's dashboard as a Panel ``Viewer``: its parameters are the state, HTML is the view.

The view never touches tokens or SQL: the server hands it a ``DashboardSource``
(load a period, is the link still alive, where the CSV is). To stay cheap per
view (a few Bokeh models, not hundreds), the header, KPI cards, the charts and the
breakdown table are one HTML pane (``render``); only the period and comparison
buttons (and the custom-range picker, when asked for) are widgets: Bokeh's own, not
Panel's, which would cost the server more per page load than the rest of the view.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Protocol

import panel as pn
import param
from bokeh.models import DateRangePicker, ImportedStyleSheet, RadioButtonGroup, Row
from panel.io.resources import JS_VERSION

from .data import PRESET_DAYS, Period, PeriodError
from .render import GONE_HTML, RELOAD_HTML, RENDERING_CSS, dashboard_html

__all__ = ["GONE_HTML", "RELOAD_HTML", "Dashboard", "DashboardSource", "dashboard_html"]

RANGE_OPTIONS = {f"{days} days": str(days) for days in PRESET_DAYS} | {"Custom": "custom"}
COMPARE_OPTIONS = {"vs previous period": "previous", "vs last year": "last_year"}
#: TV mode: seconds each page of cards shows when they do not all fit (``?rotate=``)
ROTATE_DEFAULT_S, ROTATE_BOUNDS_S = 20, (5, 300)


def _arg(args: Mapping[str, list[bytes]], name: str) -> str:
    values = args.get(name) or [b""]
    return values[0].decode("utf-8", "replace").strip()


def query_state(args: Mapping[str, list[bytes]], today: dt.date | None = None) -> dict:
    """The Viewer's parameters from the page URL's query (``pn.state.session_args``):
    ``range=7|30|90|365``, or ``from``/``to`` (``YYYY-MM-DD``), ``compare=previous|last_year``,
    ``tv=1``, ``rotate=N``.
    Anything else, or anything unreadable, is the default (the last 30 days, 20 s): a
    bookmark never becomes an error page."""
    state: dict = {"tv": _arg(args, "tv").lower() in ("1", "true", "yes")}
    start, end = _arg(args, "from"), _arg(args, "to")
    if start or end:
        try:
            period = Period.parse(start, end, today)
        except PeriodError:
            pass
        else:
            state.update(range="custom", custom=(period.start, period.end))
    elif _arg(args, "range") in {str(days) for days in PRESET_DAYS}:
        state["range"] = _arg(args, "range")
    if _arg(args, "compare") in COMPARE_OPTIONS.values():
        state["compare"] = _arg(args, "compare")
    if _arg(args, "rotate").isdigit():
        low, high = ROTATE_BOUNDS_S
        state["rotate_s"] = min(max(int(_arg(args, "rotate")), low), high)
    return state


def url_script(query: dict[str, str]) -> str:
    """A script that writes the period into the page's URL, without a reload: a reload
    or a bookmark shows the same period. The path (the link) and any other parameter
    (``tv``, ``rotate``) stay as they are; the period is all that is written."""
    return (
        "<script>(function(){var q=new URLSearchParams(location.search),"
        f"v={json.dumps(query)};"
        "['range','from','to','compare'].forEach(function(k){q.delete(k)});"
        "Object.keys(v).forEach(function(k){q.set(k,v[k])});"
        "var s=q.toString(),u=location.pathname+(s?'?'+s:'')+location.hash;"
        "if(u!==location.pathname+location.search+location.hash)"
        "history.replaceState(history.state,'',u)})()</script>"
    )


class DashboardSource(Protocol):
    """What the view may ask of the server about the one tenant it shows."""

    def page(self, period: Period, *, tv: bool, compare: str | None = None) -> str:
        """The dashboard's HTML for the period (``dashboard_html`` of its data), its
        figures compared as asked (None: as the tenant's settings say)."""
        ...

    def default_comparison(self) -> str:
        """previous or last_year: what the tenant's figures are compared with by default."""
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
    rotate_s = param.Integer(
        default=ROTATE_DEFAULT_S,
        bounds=ROTATE_BOUNDS_S,
        doc="TV mode: seconds each page of cards shows when there are more than fit",
    )
    compare = param.Selector(
        default=None,
        objects=[None, *COMPARE_OPTIONS.values()],
        doc="what the figures are compared with; None: the tenant's default",
    )
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
        self._default_compare = source.default_comparison()
        if params.get("compare") is None:
            params["compare"] = self._default_compare
        super().__init__(**params)
        self._settling = False
        self._content = pn.pane.HTML(
            sizing_mode="stretch_width", margin=0, stylesheets=[RENDERING_CSS]
        )
        # The period and comparison buttons are Bokeh's own models (the class Panel's
        # widgets make), not Panel widgets: Panel's layer cost some 15 ms of the server's
        # CPU per page load, about as much as the rest of the view's own work, for nothing
        # a pair of button groups needs. Both share one stylesheet model per URL (each is
        # a model to build and send). The custom-range picker is made when first asked
        # for: most views never use it.
        styles = control_stylesheets(*BUTTON_CSS)
        self._range_buttons = _buttons(RANGE_OPTIONS, self.range, "wv-range", styles)
        self._compare_buttons = _buttons(COMPARE_OPTIONS, self.compare, "wv-compare", styles)
        self._range_buttons.on_change("active", self._range_clicked)
        self._compare_buttons.on_change("active", self._compare_clicked)
        self._custom_picker: DateRangePicker | None = None
        # On a phone the comparison goes below the period: the row wraps.
        self._controls_row = Row(
            children=[self._range_buttons, self._compare_buttons],
            css_classes=["wv-controls"],
            visible=not self.tv,
            styles={"flex-wrap": "wrap", "row-gap": "8px"},
        )
        self._controls = pn.pane.Bokeh(self._controls_row, margin=0)
        self._layout = pn.Column(
            self._controls,
            self._content,
            css_classes=["wv-root"] + (["wv-root-tv"] if self.tv else []),
            styles={"background": "#0b1020", "min-height": "100vh"} if self.tv else {},
            sizing_mode="stretch_width",
            margin=0,
        )
        self.param.watch(self._changed, ["range", "custom", "compare"])
        self.param.watch(self._show_choice, ["range", "compare", "custom"])
        self._draw()  # the server has just checked the link: no second check

    @property
    def period(self) -> Period:
        if self.range == "custom" and self.custom:
            return Period.between(*self.custom)
        days = int(self.range) if self.range != "custom" else 30
        return Period.last(days, self._today())

    @property
    def query(self) -> dict[str, str]:
        """The period (and a comparison other than the tenant's default) as the page URL's
        query says it (``query_state`` reads it back)."""
        if self.range == "custom":
            period = self.period
            query = {"from": period.start.isoformat(), "to": period.end.isoformat()}
        else:
            query = {"range": self.range}
        if self.compare and self.compare != self._default_compare:
            query["compare"] = self.compare
        return query

    def _show_custom_picker(self) -> None:
        if self.range == "custom" and self._custom_picker is None:
            self._custom_picker = DateRangePicker(
                value=_iso_range(self.custom),
                width=260,
                css_classes=["wv-date-picker"],
                stylesheets=control_stylesheets(*PICKER_CSS),
                margin=(5, 10),
            )
            self._custom_picker.on_change("value", self._custom_picked)
            self._controls_row.children = [*self._controls_row.children, self._custom_picker]
        elif self._custom_picker is not None:
            self._custom_picker.visible = self.range == "custom"

    # -- the controls: what the client picked, and what is shown as picked ---------------

    def _range_clicked(self, _attr, _old, index) -> None:
        chosen = _option(RANGE_OPTIONS, index)
        if chosen is None:  # not one of the buttons: show the period as it is
            self._show_choice()
        else:
            self.range = chosen

    def _compare_clicked(self, _attr, _old, index) -> None:
        chosen = _option(COMPARE_OPTIONS, index)
        if chosen is None:
            self._show_choice()
        else:
            self.compare = chosen

    def _custom_picked(self, _attr, _old, value) -> None:
        days = _days(value)
        if days is None:  # not two days: show the period as it is
            self._show_choice()
        else:
            self.custom = days

    def _show_choice(self, *_events) -> None:
        """The buttons (and the picker) show the parameters, however they were set."""
        self._range_buttons.active = _index(RANGE_OPTIONS, self.range)
        self._compare_buttons.active = _index(COMPARE_OPTIONS, self.compare)
        if self._custom_picker is not None:
            self._custom_picker.value = _iso_range(self.custom)

    def _changed(self, *events: param.parameterized.Event) -> None:
        """The client changed the period: draw it, if the link still opens this dashboard.

        Choosing "Custom" starts from the period shown (not from the default), so the
        figures do not change until the client picks other days."""
        if self._settling:
            return
        for event in events:
            if event.name == "range" and event.new == "custom" and event.old != "custom":
                shown = Period.last(int(event.old), self._today())
                self._settling = True
                try:
                    self.custom = (shown.start, shown.end)
                finally:
                    self._settling = False
        if self._on_interaction is not None and not self.gone:
            # The client used a control: counted (anonymised) for the dashboard-use trends.
            self._on_interaction()
        self._render()

    def _render(self) -> None:
        if self.gone:
            return
        if not self._source.alive():
            self.end(GONE_HTML)
            return
        self._draw()

    def _draw(self) -> None:
        self._show_custom_picker()
        page = self._source.page(self.period, tv=self.tv, compare=self.compare)
        if self.tv:
            # The browser (assets/screens.js) shows the cards that fit, a page at a time,
            # and keeps the clock: the server sends the page once per refresh.
            page = (
                f'<div class="wv-tv-screen" data-rotate="{self.rotate_s}">'
                f'<time class="wv-clock" aria-label="local time"></time>{page}</div>'
            )
        self._content.object = page + url_script(self.query)

    def tick(self) -> None:
        """Periodic: in TV mode, reload (if the link still opens this dashboard)."""
        if self.tv:
            self._render()

    def end(self, page: str = GONE_HTML) -> None:
        """Stop showing anything of the tenant: the link is gone (or the page expired).

        A link that no longer works says so in the tenant's own brand, when it has one
        (the source knows it; the server's sweep only knows the default)."""
        self.gone = True
        self._controls_row.visible = False
        branded = getattr(self._source, "gone_page", None)
        if page != RELOAD_HTML and branded is not None:
            page = branded() or page
        self._content.object = page

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def control_stylesheets(*panel_files: str) -> list[ImportedStyleSheet]:
    """The stylesheets a control needs, by URL: ours (``theme.css``: the buttons' colours,
    a brand's included) and those of Panel's design that it uses."""
    ours = [url for url in pn.config.css_files if "/theme.css" in url]
    panel = [f"/static/extensions/panel/{name}?v={JS_VERSION}" for name in panel_files]
    return [ImportedStyleSheet(url=url) for url in ours + panel]


#: what the period and comparison buttons use of Panel's design
BUTTON_CSS = ("css/button.css",)
#: what the custom-range picker (its field and calendar) uses of Panel's design
PICKER_CSS = ("bundled/theme/default.css", "bundled/theme/native.css")


def _buttons(
    options: Mapping[str, str], value: str | None, css_class: str, styles: list
) -> RadioButtonGroup:
    return RadioButtonGroup(
        labels=list(options),
        active=_index(options, value),
        button_type="light",
        css_classes=["solid", css_class],
        margin=(5, 10),
        stylesheets=styles,
    )


def _index(options: Mapping[str, str], value: str | None) -> int | None:
    values = list(options.values())
    return values.index(value) if value in values else None


def _option(options: Mapping[str, str], index) -> str | None:
    values = list(options.values())
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(values):
        return values[index]
    return None


def _iso_range(days) -> tuple[str, str] | None:
    return None if not days else (days[0].isoformat(), days[1].isoformat())


def _days(value) -> tuple[dt.date, dt.date] | None:
    """Two days from what a browser's date-range picker sends, else None."""
    try:
        start, end = value
        return _day(start), _day(end)
    except (TypeError, ValueError):
        return None


def _day(value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        return dt.date.fromisoformat(value[:10])
    raise ValueError(f"not a day: {type(value).__name__}")
