"""The gateway's public gRPC port: an HTTP/2 relay with a fast path for ModelInfer.

grpc.aio costs ~550-600 µs of CPU per proxied call on the 2-core dev box — more than Triton
spends on the model — whatever the tuning (generic handlers, uvloop, a sync server with a thread
pool: loadtests/bench_gateway.py's docstring has the figures). So the public port speaks HTTP/2
itself (rollout.h2_conn) and handles the call that matters, unary ModelInfer, at the frame
level: it reads the whole request, routes it exactly as the grpc.aio frontend would (same
routing table, strategies, balancer, statistics), appends the rename suffix, sends it on a
multiplexed HTTP/2 connection to the chosen Triton, and stamps Triton's answer on the way back
(public name, pipeline version, `lastmile_variant` appended; `lastmile-variant` initial
metadata). ~115 µs per call. Shadow routes mirror the call on connections of their own, read
on the slow lane (rollout.grpc_relay_mirror, rollout.lane).

Everything else — every other method, streams, compressed or malformed messages,
unknown models, shared-memory parameters, versions not served, and a ModelInfer whose upstream
said the call reached no model (not loaded there, or the replica refused the connection) — is
relayed stream for stream to the grpc.aio frontend (rollout.grpc_gateway) listening on a
loopback port, which answers exactly as before. A fast-path call is only handed over before it
reached a model, so nothing runs twice.

This module holds the listener and the connection pools (`GrpcRelay`, `UpstreamPool`); each
call's own state machine, fast path and hand-over is rollout.grpc_relay_call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from rollout.grpc_relay_call import Call, metadata_too_large
from rollout.grpc_routing import GrpcUpstream
from rollout.h2_conn import H2Conn
from rollout.h2_stream import Flusher, Headers, Stream

if TYPE_CHECKING:
    from rollout.grpc_gateway import GrpcFrontend
    from rollout.lane import SlowLane

logger = logging.getLogger(__name__)


class UpstreamPool:
    """Multiplexed HTTP/2 connections to one gRPC server (a Triton, or the grpc.aio frontend);
    a new connection only when the open ones are full or going away."""

    def __init__(
        self, relay: GrpcRelay, host: str, port: int, lane: SlowLane | None = None
    ) -> None:
        self.relay = relay
        self.lane = lane  # set for the shadow copies' own connections (rollout.lane)
        self.host, self.port = host, port
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.conns: list[H2Conn] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def open(self, leg: Any, headers: Headers, end_stream: bool = False) -> Stream:
        for conn in self.conns:
            if conn.can_open():
                return conn.open_stream(leg, headers, end_stream)
        conn = H2Conn(self.relay.flusher, client=True, on_closed=self._closed, lane=self.lane)
        self.conns.append(conn)
        task = self.relay.loop.create_task(self._connect(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn.open_stream(leg, headers, end_stream)

    async def _connect(self, conn: H2Conn) -> None:
        try:
            await self.relay.loop.create_connection(lambda: conn, self.host, self.port)
        except OSError as exc:
            logger.debug("gRPC relay: cannot connect to %s: %s", self.authority, exc)
            conn.fail()
            self.relay.flusher.flush()

    def _closed(self, conn: H2Conn) -> None:
        with contextlib.suppress(ValueError):
            self.conns.remove(conn)

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        for task in self.tasks:
            task.cancel()


class GrpcRelay:
    """The public gRPC listener: client connections, upstream pools, graceful stop."""

    def __init__(self, frontend: GrpcFrontend, max_body: int) -> None:
        self.frontend = frontend
        self.loop = frontend.loop
        self.stats = frontend.stats
        self.upstream_timeout = frontend.upstream_timeout
        self.max_body = max_body + 5
        self.flusher = Flusher(self.loop)
        self.clients: set[H2Conn] = set()
        self.server: asyncio.Server | None = None
        self.slow: UpstreamPool = UpstreamPool(self, "127.0.0.1", 0)
        self.pools: set[UpstreamPool] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        # calls answered on the fast path / streams relayed to the grpc.aio frontend (only
        # ever incremented: /metrics exports them as counters)
        self.counts = {"fast": 0, "relayed": 0}

    async def start(
        self,
        host: str,
        port: int,
        slow_port: int,
        sock: socket.socket | None = None,
        *,
        listen: bool = True,
    ) -> int:
        self.slow = UpstreamPool(self, "127.0.0.1", slow_port)
        if not listen:  # connections come through client() (rollout.conn_handoff)
            return port
        if sock is not None:  # handed down by a supervisor that keeps it across restarts
            self.server = await self.loop.create_server(self.client, sock=sock)
        else:
            self.server = await self.loop.create_server(
                self.client, host, port, reuse_address=True, reuse_port=False
            )
        return int(self.server.sockets[0].getsockname()[1])

    def client(self) -> H2Conn:
        conn = H2Conn(
            self.flusher, client=False, on_stream=lambda stream: Call(self, stream),
            on_closed=self._client_closed, too_large=metadata_too_large,
        )  # fmt: skip
        self.clients.add(conn)
        self.idle.clear()
        return conn

    def _client_closed(self, conn: H2Conn) -> None:
        self.clients.discard(conn)
        if not self.clients:
            self.idle.set()

    def pool_for(self, upstream: GrpcUpstream) -> UpstreamPool:
        pool: UpstreamPool | None = upstream.pool
        if pool is None:
            pool = upstream.pool = UpstreamPool(self, upstream.host, upstream.port)
            self.pools.add(pool)
        return pool

    def mirror_pool_for(self, upstream: GrpcUpstream) -> UpstreamPool:
        """Connections to `upstream` for shadow copies alone: no client waits on what they
        read, so they read it on the slow lane (rollout.lane), a few frames a turn."""
        pool: UpstreamPool | None = upstream.mirror_pool
        if pool is None:
            pool = UpstreamPool(self, upstream.host, upstream.port, self.frontend.lane)
            upstream.mirror_pool = pool
            self.pools.add(pool)
        return pool

    def forget(self, upstream: GrpcUpstream) -> None:
        """A Triton no longer in the table: its connections close."""
        for pool in (upstream.pool, upstream.mirror_pool):
            if pool is not None:
                self.pools.discard(pool)
                pool.close()

    async def stop(self, grace: float) -> None:
        """No new connections; GOAWAY to clients; wait up to `grace` for their calls."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.clients):
            conn.shutdown()
        self.flusher.flush()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), grace)
        for conn in list(self.clients):
            conn.close()

    def close_upstreams(self) -> None:
        self.slow.close()
        for pool in self.pools:
            pool.close()
        self.pools.clear()
