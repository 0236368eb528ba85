"""How `prefstream ingest` is served: uvicorn, with a deadline for each request's headers.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits for a request's
headers as long as the client takes, so a few hundred connections that send half a request
and stop hold the server's sockets for good (slowloris). ``HeaderDeadline`` closes a
connection whose request headers are not complete ``ingest_header_timeout_s`` after it opened
or after the request's first byte; the body has a deadline of its own
(``streams.commands.serving.admission.read_body``).
"""
from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from streams.settings import Settings

KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections that are slow to send headers."""

    header_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol(settings: Settings) -> type[HeaderDeadline]:
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": settings.ingest_header_timeout_s})


def config(app, settings: Settings, host: str, port: int, **options) -> uvicorn.Config:
    """The uvicorn config `prefstream ingest` serves ``app`` with (and the tests, on loopback)."""
    options = {"log_level": settings.log_level.lower(), "access_log": False, "server_header": False,
               "lifespan": "on", **options}
    return uvicorn.Config(app, host=host, port=port, http=protocol(settings), timeout_keep_alive=KEEP_ALIVE_S,
                          **options)
