"""The gateway's one-shot HTTP client (rollout.http_call) and the readiness probe built on it,
against small real servers: an answer read by its Content-Length from a server that keeps the
connection open, and servers that close early, answer garbage or refuse readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from rollout.http_call import request
from rollout.upstream import probe_ready

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(answer: Answer) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _replying(raw: bytes, *, close: bool) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()
        else:  # keeps the connection open: the client must stop at Content-Length
            await reader.read()

    return answer


def test_answers_are_read_by_length_and_bad_ones_fail_the_probe() -> None:
    async def scenario() -> None:
        cases = {
            "ready, connection kept": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
            "not ready": (b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n", True),
            "closed before answering": (b"", True),
            "not HTTP": (b"SSH-2.0-OpenSSH\r\n\r\n", True),
            "cut short": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", True),
        }
        probed = {}
        for name, (raw, close) in cases.items():
            server, port = await _serve(_replying(raw, close=close))
            async with server:
                probed[name] = await probe_ready("127.0.0.1", port, timeout=5)
                if name == "ready, connection kept":
                    got = await request("127.0.0.1", port, "GET", "/x", token="t", timeout=5)
                    assert got == (200, b"ok")
        assert probed == {
            "ready, connection kept": True,
            "not ready": False,
            "closed before answering": False,
            "not HTTP": False,
            "cut short": False,
        }
        # nothing listens: refused, not raised
        server, port = await _serve(_replying(b"", close=True))
        server.close()
        await server.wait_closed()
        assert await probe_ready("127.0.0.1", port, timeout=5) is False

    asyncio.run(scenario())
