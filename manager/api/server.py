"""Serving the API with uvicorn, plus what uvicorn lacks: a deadline for a request's headers.

A client that opens a connection and sends its headers a byte at a time (slowloris) would
hold a connection forever; here it has ``LASTMILE_API_HEADER_TIMEOUT_S`` from the connection
(or from the previous response on a kept-alive one) to finish its request line and headers,
after which the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from manager.settings import Settings


class HeaderDeadlineH11(H11Protocol):
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE:  # still no complete request line + headers
            self.logger.info("closing a connection that sent no complete request headers in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


def serve(app: Any, settings: Settings) -> None:
    import uvicorn

    protocol = type(
        "HeaderDeadline", (HeaderDeadlineH11,), {"header_timeout_s": settings.api_header_timeout_s}
    )
    uvicorn.run(
        app,
        host=settings.api_bind_host,
        port=settings.api_port,
        http=protocol,  # type: ignore[arg-type]
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=64 * 1024,
    )
