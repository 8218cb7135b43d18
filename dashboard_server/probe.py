"""A protocol-level viewer: what a browser would receive, without a browser.

Loads a dashboard page, then pulls its Bokeh document over the websocket (the
page itself carries no data: Panel sends the document over the socket) and
returns the text the client would read.
"""

from __future__ import annotations

import json

import httpx


def page_and_document_text(url: str, *, timeout: float = 60.0) -> tuple[int, str]:
    """The page's HTTP status and, for a 200, every string in its Bokeh document."""
    response = httpx.get(url, timeout=timeout)
    if response.status_code != 200:
        return response.status_code, ""
    import panel.models  # noqa: F401 - registers Panel's model types with the client
    from bokeh.client import pull_session
    from bokeh.core.json_encoder import serialize_json

    with pull_session(url=url) as session:
        document = serialize_json(session.document.to_json())
    # Strings inside the document are JSON-escaped; decode them back for plain searching.
    return 200, json.dumps(json.loads(document), ensure_ascii=False)
