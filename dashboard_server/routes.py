"""Every route the server exposes is behind a live link (or a one-time token) or serves
fixed files; Panel's route that imports any module a URL names is taken out.

``pn.serve`` adds ``/components/<module>/<class>/<attribute>/<file>`` for components
that ship their own files: it calls ``importlib.import_module`` on the URL's segment,
before any check, for anyone. No dashboard uses it (Panel's and Bokeh's own files are
under ``/static/``), so it is removed; its URLs get the 404 page like any unknown path.
``routes`` lists what is left, for the test that holds it to an allow-list.
"""

from __future__ import annotations

from panel.io.server import ComponentResourceHandler
from tornado import routing
from tornado.web import Application


def remove_module_import_route(app: Application) -> None:
    """Take Panel's ``/components/…`` route out (before the server starts)."""
    rules = app.wildcard_router.rules
    kept = [rule for rule in rules if not _is_component_route(rule)]
    if len(kept) == len(rules):
        raise RuntimeError("panel's /components route was not found; check what replaced it")
    rules[:] = kept


def _is_component_route(rule: routing.Rule) -> bool:
    target = rule.target
    return isinstance(target, type) and issubclass(target, ComponentResourceHandler)


def routes(app: Application) -> list[tuple[str, str]]:
    """(path pattern, or the matcher's class for a rule without one; handler class) of
    every rule ``app`` routes by, in the order they are tried."""
    found: list[tuple[str, str]] = []

    def walk(router: routing.RuleRouter) -> None:
        for rule in router.rules:
            if isinstance(rule.target, routing.RuleRouter):
                walk(rule.target)
                continue
            regex = getattr(rule.matcher, "regex", None)
            where = regex.pattern if regex is not None else type(rule.matcher).__name__
            found.append((where, getattr(rule.target, "__name__", type(rule.target).__name__)))

    walk(app.default_router)
    return found
