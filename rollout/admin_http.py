"""A tiny HTTP/1.1 server for the gateway's side doors: the admin API and /metrics.

These listeners see a request every few seconds (a routing push, a Prometheus scrape), so they
favour simplicity over speed: asyncio streams, one request at a time per connection, bodies
bounded. They reuse httptools (already a dependency) rather than pulling in a framework, which
DESIGN §2 keeps out of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import httptools

from rollout.exchange import json_error, status_line

logger = logging.getLogger(__name__)


MAX_HEADER_BYTES = 16 * 1024


@dataclass
class SimpleRequest:
    method: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    query: dict[str, str] = field(default_factory=dict)  # the last value of each name


@dataclass
class SimpleResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[SimpleRequest], Awaitable[SimpleResponse]]


@dataclass
class _Collector:
    """httptools callbacks that collect whole requests (side doors only, bodies are small)."""

    max_body: int
    done: list[tuple[SimpleRequest, bool]] = field(default_factory=list)
    url: bytes = b""
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    header_size: int = 0
    parser: httptools.HttpRequestParser | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > 8192:
            raise ValueError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_size += len(name) + len(value)
        if self.header_size > MAX_HEADER_BYTES:
            raise ValueError("headers too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            raise ValueError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        path, _, query = self.url.decode("latin-1").partition("?")
        method = self.parser.get_method().decode("latin-1")
        request = SimpleRequest(
            method, path, b"".join(self.body), self.headers, dict(parse_qsl(query))
        )
        self.done.append((request, self.parser.should_keep_alive()))
        self.url, self.body, self.size = b"", [], 0
        self.headers, self.header_size = {}, 0


async def start_simple_server(
    host: str, port: int, handler: Handler, *, max_body: int, idle_timeout: float = 30.0
) -> asyncio.Server:
    """Serve `handler` on host:port; the caller owns the returned server and closes it."""

    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        collector = _Collector(max_body=max_body)
        parser = httptools.HttpRequestParser(collector)
        collector.parser = parser
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), idle_timeout)
                except asyncio.TimeoutError:
                    return
                if not data:
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    cause = str(exc.__context__)
                    status = 431 if "headers" in cause else 413 if "too large" in cause else 400
                    writer.write(_render(SimpleResponse(status, json_error(str(exc))), False))
                    await writer.drain()
                    return
                while collector.done:
                    request, keep_alive = collector.done.pop(0)
                    try:
                        response = await handler(request)
                    except Exception:
                        logger.exception(
                            "admin handler failed for %s %s", request.method, request.path
                        )
                        response = SimpleResponse(500, json_error("internal error"))
                    writer.write(_render(response, keep_alive))
                    await writer.drain()
                    if not keep_alive:
                        return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            collector.parser = None  # the two point at each other: freed without the collector
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(serve_connection, host, port, reuse_address=True)


def _render(response: SimpleResponse, keep_alive: bool) -> bytes:
    head = [status_line(response.status)]
    if response.body:
        head.append(f"Content-Type: {response.content_type}\r\n".encode())
    for name, value in response.headers:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    head.append(b"Content-Length: %d\r\n" % len(response.body))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + response.body


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
