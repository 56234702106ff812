"""Helpers for the in-process gateway tests (no tests here).

The gateway runs for real (its own listeners on loopback, port 0); what stands in for Triton is
a small HTTP/1.1 server that answers like Triton's KServe v2 endpoints and lets a test script
misbehaviour (slow answers, dropped connections, error bodies) that a real Triton will not
produce on demand. Clients speak raw HTTP so that keep-alive, pipelining and framing are visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
from prometheus_client.parser import text_string_to_metric_families

from rollout.gateway import Gateway, GatewayConfig, serve


@dataclass
class Message:
    """One parsed HTTP request or response."""

    method: str = ""
    path: str = ""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    keep_alive: bool = True
    connection: int = 0  # which upstream connection carried a request (FakeTriton)

    def json(self) -> Any:
        return json.loads(self.body)


class _Parse:
    """httptools callbacks collecting complete messages (requests or responses)."""

    def __init__(self, response: bool) -> None:
        self.parser: Any = (
            httptools.HttpResponseParser(self) if response else httptools.HttpRequestParser(self)
        )
        self.response = response
        self.done: list[Message] = []
        self._cur = Message()

    def on_message_begin(self) -> None:
        self._cur = Message()

    def on_url(self, url: bytes) -> None:
        self._cur.path += url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._cur.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._cur.body += body

    def on_message_complete(self) -> None:
        cur = self._cur
        if self.response:
            cur.status = self.parser.get_status_code()
        else:
            cur.method = self.parser.get_method().decode()
        cur.keep_alive = self.parser.should_keep_alive()
        self.done.append(cur)


class RawClient:
    """A keep-alive HTTP/1.1 client connection that shows exactly what the gateway sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._parse = _Parse(response=True)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Message:
        self.send(build_request(method, path, body, headers))
        return await self.response()

    async def response(self, timeout: float = 5.0) -> Message:
        async with asyncio.timeout(timeout):
            while not self._parse.done:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed before a complete response")
                self._parse.parser.feed_data(data)
        return self._parse.done.pop(0)

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def build_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    headers = dict(headers or {})
    if body and "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def http(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Message:
    client = await RawClient.connect(port)
    try:
        return await client.request(method, path, body, headers)
    finally:
        await client.close()


Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[[Message], Awaitable[Reply | None]]


def infer_body(values: list[float] | None = None) -> bytes:
    data = values or [1.0, 2.0, 3.0, 4.0]
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, len(data)], "datatype": "FP32", "data": data}]}
    ).encode()


def _echo(tensor: Any) -> dict[str, Any]:
    """An output for an input: same data (JSON or binary size), named y for x."""
    if not isinstance(tensor, dict):
        return {}
    name = tensor.get("name", "x")
    out = {
        "name": "y" if name == "x" else f"{name}_out",
        "datatype": tensor.get("datatype", "FP32"),
        "shape": tensor.get("shape", []),
    }
    if "data" in tensor:
        out["data"] = tensor["data"]
    else:
        out["parameters"] = tensor.get("parameters", {})
    return out


def infer_reply(req: Message, model: str, version: str, **extra: Any) -> Reply:
    """What Triton answers to an inference request: the inputs echoed as outputs, "id" first
    when the request had one (as Triton 2.51 writes it), binary tensors echoed back."""
    header_len = req.headers.get("inference-header-content-length")
    json_part = req.body[: int(header_len)] if header_len is not None else req.body
    try:
        request = json.loads(json_part)
    except ValueError:
        request = {}
    head: dict[str, Any] = {}
    if isinstance(request, dict) and "id" in request:
        head["id"] = request["id"]
    head.update(model_name=model, model_version=version, **extra)
    inputs = request.get("inputs", []) if isinstance(request, dict) else []
    head["outputs"] = [_echo(t) for t in inputs] if isinstance(inputs, list) else []
    text = json.dumps(head, separators=(",", ":"))
    if header_len is not None:  # echo the binary part back, framed like Triton
        raw = req.body[int(header_len) :]
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(text)),
        }
        return 200, headers, text.encode() + raw
    return 200, {"Content-Type": "application/json"}, text.encode()


async def triton_like(req: Message) -> Reply | None:
    """Answers the way Triton 2.51 does for a healthy model named by the path."""
    parts = req.path.split("/")
    if req.path == "/v2/health/ready":
        return 200, {}, b""
    if len(parts) < 4 or parts[1:3] != ["v2", "models"]:
        return 404, {"Content-Type": "application/json"}, b'{"error":"Not Found"}'
    model = parts[3]
    version = parts[5] if len(parts) > 5 and parts[4] == "versions" else "1"
    if model.startswith("missing"):
        body = json.dumps({"error": f"Request for unknown model: '{model}' is not found"})
        return 400, {"Content-Type": "application/json"}, body.encode()
    if parts[-1] == "ready":
        return 200, {"Content-Type": "text/plain"}, b""
    if parts[-1] != "infer":
        meta = {"name": model, "versions": ["1"], "platform": "python", "inputs": []}
        return 200, {"Content-Type": "application/json"}, json.dumps(meta).encode()
    return infer_reply(req, model, version)


class FakeTriton:
    """Loopback HTTP/1.1 keep-alive server; `handler` returns a reply or None (= hang up)."""

    def __init__(self, handler: Handler = triton_like, pieces: tuple[int, ...] = ()) -> None:
        self.handler = handler
        # sizes a response is written in, each piece drained before the next (the last size
        # repeats); empty: one write
        self.pieces = pieces
        self.requests: list[Message] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> list[Message]:
        """The requests received except the gateway's health probes."""
        return [r for r in self.requests if r.path != "/v2/health/ready"]

    @property
    def infers(self) -> list[Message]:
        """The inference requests received (the gateway's health probes left out)."""
        return [r for r in self.requests if r.path.endswith("/infer")]

    async def start(self, port: int = 0) -> FakeTriton:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        self._server = None

    async def drop_connections(self) -> None:
        """Close every open connection, as a restarting or idle-timing-out Triton would."""
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        self._writers.add(writer)
        parse = _Parse(response=False)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                parse.parser.feed_data(data)
                while parse.done:
                    req = parse.done.pop(0)
                    req.connection = connection
                    self.requests.append(req)
                    reply = await self.handler(req)
                    if reply is None:
                        return
                    status, headers, body = reply
                    head = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
                    if headers.get("Transfer-Encoding") == "chunked":  # two chunks, then the end
                        half = len(body) // 2
                        body = (
                            b"".join(
                                b"%x\r\n%s\r\n" % (len(part), part)
                                for part in (body[:half], body[half:])
                                if part
                            )
                            + b"0\r\n\r\n"
                        )
                    else:
                        head.append(f"Content-Length: {len(body)}")
                    data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
                    await self._write(writer, data)
        except (ConnectionError, httptools.HttpParserError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        offset, sizes = 0, list(self.pieces)
        while offset < len(data):
            size = sizes.pop(0) if len(sizes) > 1 else (sizes[0] if sizes else len(data))
            writer.write(data[offset : offset + size])
            await writer.drain()
            offset += size


def variant(
    pipeline: str, version: int, targets: list[dict[str, Any]], weight: float = 100.0
) -> dict[str, Any]:
    """A routing-table variant: pipeline version `version` served by `targets` (url, model,
    optional version and grpc)."""
    return {
        "name": f"{pipeline}/{version}",
        "version": version,
        "weight": weight,
        "targets": targets,
    }


def route(
    pipeline: str, variants: list[dict[str, Any]], workspace: str = "default", **extra: Any
) -> dict[str, Any]:
    """A routing-table route; `extra`: strategy, sticky, shadow."""
    return {"workspace": workspace, "pipeline": pipeline, "variants": variants, **extra}


def table(generation: int, *routes_: dict[str, Any]) -> bytes:
    """A version-2 routing table of `routes_`, keyed "<workspace>/<pipeline>"."""
    return json.dumps(
        {
            "generation": generation,
            "routes": {f"{r['workspace']}/{r['pipeline']}": r for r in routes_},
        }
    ).encode()


def routes(generation: int = 1, **pipeline_targets: list[dict[str, Any]]) -> bytes:
    """The simplest table: each pipeline of the default workspace served by one variant
    (version 1) with the given targets."""
    return table(
        generation,
        *(route(name, [variant(name, 1, targets)]) for name, targets in pipeline_targets.items()),
    )


@contextlib.asynccontextmanager
async def running_gateway(**overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway serving in this event loop on ephemeral loopback ports."""
    values: dict[str, Any] = {
        "http_port": 0, "metrics_port": 0, "admin_port": 0, "health_interval": 0.2,
    }  # fmt: skip
    values.update(overrides)
    stop = asyncio.Event()
    started: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(GatewayConfig(**values), stop=stop, started=started, install_signal_handlers=False)
    )
    either: set[asyncio.Future[Any]] = {task, started}
    done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    gateway = started.result()
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def put_routes(gateway: Gateway, body: bytes) -> Message:
    return await http(gateway.ports["admin"], "PUT", "/routes", body)


async def wait_ready(gateway: Gateway, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not gateway.is_ready():
            await asyncio.sleep(0.02)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text, keyed by (name, sorted label pairs)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
