"""A protocol-level viewer: what a browser would receive, without a browser.

Loads a dashboard page, takes the signed session token the page embeds, opens the page's
websocket with it as Bokeh's client in a browser does, and pulls the Bokeh document (the
page itself carries no data: Panel sends the document over the socket). The server never
lets a client make up a session, so this is the only way in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

_SESSION_TOKEN = re.compile(r'"token":\s*"([^"]+)"')


def session_token(page: str) -> str:
    """The Bokeh session token a dashboard page embeds for its websocket."""
    found = _SESSION_TOKEN.search(page)
    if found is None:
        raise ValueError("the page embeds no session token")
    return found.group(1)


def socket_url(page_url: str) -> str:
    """The websocket URL of a dashboard page (``/d/<token>`` → ``ws://…/d/<token>/ws``)."""
    return page_url.replace("http", "ws", 1).split("?")[0].rstrip("/") + "/ws"


@dataclass
class Message:
    """One Bokeh protocol message: its header and its content (decoded JSON)."""

    header: dict
    content: dict

    @property
    def type(self) -> str:
        return self.header.get("msgtype", "")

    def text(self) -> str:
        """The content as text, strings unescaped, for plain searching."""
        return json.dumps(self.content, ensure_ascii=False)


class DocumentSocket:
    """A dashboard's websocket, opened with a session token as a browser opens it."""

    def __init__(self, connection):
        self._connection = connection

    @classmethod
    async def open(
        cls, ws_url: str, token: str, *, timeout: float = 60.0, deflate: bool = False
    ) -> DocumentSocket:
        """Connect and wait for the server's ACK; a refused handshake raises ``HTTPClientError``.

        ``deflate``: offer per-message compression, as browsers do (``extensions`` then
        says whether the server agreed)."""
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(ws_url, connect_timeout=timeout, request_timeout=timeout)
        connection = await websocket_connect(
            request, subprotocols=["bokeh", token], compression_options={} if deflate else None
        )
        socket = cls(connection)
        ack = await socket.receive(timeout)
        if ack is None or ack.type != "ACK":
            socket.close()
            raise ConnectionError("the server closed the socket before its ACK")
        return socket

    @property
    def extensions(self) -> str:
        """The extensions the server agreed to (``Sec-WebSocket-Extensions``), or ""."""
        return self._connection.headers.get("Sec-WebSocket-Extensions", "")

    async def receive(self, timeout: float = 60.0) -> Message | None:
        """The next whole message, or None once the server has closed the socket."""
        frames = []
        for _ in range(3):  # header, metadata, content
            frame = await asyncio.wait_for(self._connection.read_message(), timeout)
            if frame is None:
                return None
            frames.append(frame)
        header = json.loads(frames[0])
        for _ in range(2 * header.get("num_buffers", 0)):  # each buffer: its header, its bytes
            await asyncio.wait_for(self._connection.read_message(), timeout)
        return Message(header, json.loads(frames[2]))

    async def send(self, msgtype: str, content: dict) -> None:
        header = {"msgid": uuid.uuid4().hex, "msgtype": msgtype}
        for frame in (header, {}, content):
            await self._connection.write_message(json.dumps(frame))

    async def pull(self, timeout: float = 60.0) -> Message:
        """The session's whole document, as the browser asks for it after the ACK."""
        await self.send("PULL-DOC-REQ", {})
        while True:
            message = await self.receive(timeout)
            if message is None:
                raise ConnectionError("the server closed the socket instead of sending a document")
            if message.type == "PULL-DOC-REPLY":
                return message

    async def change(self, model_id: str, attr: str, new) -> None:
        """What a browser sends when the client changes a widget (a model's attribute)."""
        event = {"kind": "ModelChanged", "model": {"id": model_id}, "attr": attr, "new": new}
        await self.send("PATCH-DOC", {"events": [event]})

    async def updates(self, seconds: float) -> list[Message]:
        """Every message the server sends in the next ``seconds`` (fewer if it closes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        messages = []
        while (left := deadline - loop.time()) > 0:
            try:
                message = await self.receive(left)
            except TimeoutError:
                break
            if message is None:
                break
            messages.append(message)
        return messages

    def close(self) -> None:
        self._connection.close()


def models(node, name: str) -> Iterator[dict]:
    """Every model of Bokeh type ``name`` in a (pulled) document's JSON."""
    if isinstance(node, dict):
        if node.get("type") == "object" and str(node.get("name", "")).split(".")[-1] == name:
            yield node
        for value in node.values():
            yield from models(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from models(value, name)


def run_sync(coroutine):
    """Run a coroutine to its end from synchronous code, even where an event loop already
    runs in this thread (Playwright's sync API keeps one): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def page_and_document_text(url: str, *, timeout: float = 60.0) -> tuple[int, str]:
    """The page's HTTP status and, for a 200, every string in its Bokeh document."""
    response = httpx.get(url, timeout=timeout)
    if response.status_code != 200:
        return response.status_code, ""

    async def pull() -> str:
        socket = await DocumentSocket.open(
            socket_url(url), session_token(response.text), timeout=timeout
        )
        try:
            return (await socket.pull(timeout)).text()
        finally:
            socket.close()

    return 200, run_sync(pull())
