"""The gateway's own HTTP/1.1 calls, one request per connection: readiness probes of Triton
(rollout.upstream) and the first process's calls to its workers (rollout.gateway_workers).
They are a few a second at most, so asyncio streams, nothing pooled."""

from __future__ import annotations

import asyncio
import contextlib


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes = b"",
    timeout: float,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a connection of its own: (status, body). OSError when nothing
    answers (or no HTTP does), asyncio.TimeoutError past `timeout`."""

    async def once() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
                    f"Content-Length: {len(body)}"]  # fmt: skip
            if token is not None:
                head.append(f"Authorization: Bearer {token}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            try:
                header = await reader.readuntil(b"\r\n\r\n")
                status = header.split(b" ", 2)
                if len(status) < 2 or not status[1].isdigit():
                    raise ConnectionError(f"no HTTP answer from {host}:{port}")
                length = _content_length(header)
                # the body as long as the server says; without a length, until it closes
                payload = await (reader.read() if length is None else reader.readexactly(length))
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                raise ConnectionError(f"a cut or oversized answer from {host}:{port}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return int(status[1]), payload

    return await asyncio.wait_for(once(), timeout)


def _content_length(header: bytes) -> int | None:
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None
