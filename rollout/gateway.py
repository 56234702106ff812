"""KServe v2 HTTP gateway in front of Triton: `python -m rollout.gateway`.

Clients name pipelines; the control plane pushes a routing table (admin port, loopback only,
rollout.routing) mapping each workspace's pipeline to its variants (pipeline versions, each
with its Triton targets) and a strategy (weighted, sticky, shadow), which is how canaries, A/B
splits, shadows and blue/green switches happen without touching clients. Four listeners:

- data port: /v2/health/*, /v2, and per model infer / ready / metadata / config
  (rollout.proxy; HEAD on the GET endpoints);
  nothing else of Triton's API (repository, shared memory, logging, trace, statistics) is
  reachable through the gateway (DESIGN §5);
- gRPC port: the same surface as KServe v2 `inference.GRPCInferenceService`, passed through as
  bytes (rollout.grpc_gateway); --grpc-port 0 turns it off;
- metrics port: Prometheus text at /metrics (rollout.gateway_metrics);
- admin port: GET/PUT /routes (rollout.admin_api: bearer token, allowed upstreams,
  generation window; with --routes-file the table survives restarts), GET/DELETE /shadow (the
  output-diff reports of shadow routes, rollout.shadow_diff). A gateway the control plane
  cannot reach there (a replica on a cluster) pulls the table instead: --routes-url
  (rollout.routes_pull), through the same admission.

Request bodies are checked before they reach Triton (rollout.body_guard: bounded inflation of
gzip/deflate, no shared memory, JSON or nothing) and Triton's errors are mapped and sanitized
on the way back (rollout.upstream_errors). The flags, limits and timeouts of a gateway process
(`GatewayConfig`, `parse_args`) are in rollout.gateway_config. With --workers N, N processes
serve the data ports and this one speaks for all of them (rollout.gateway_workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rollout.admin_api import AdminApi
from rollout.admin_http import SimpleRequest, SimpleResponse, start_simple_server
from rollout.balance import Replica
from rollout.capture import CaptureSpool
from rollout.capture_ship import SegmentShipper
from rollout.conn_handoff import Acceptor, ProtocolFactory, Receiver
from rollout.exchange import Exchange, json_error
from rollout.gateway_config import ADMIN_HOST, GatewayConfig, parse_args
from rollout.gateway_metrics import (
    LOOP_PROBE_S,
    GatewayStats,
    GaugeSource,
    make_registry,
    merged_registry,
)
from rollout.gateway_workers import Workers
from rollout.grpc_gateway import GrpcFrontend
from rollout.http_routing import CompiledRouting
from rollout.http_shadow import ShadowMirrors
from rollout.malloc_tuning import tune_malloc
from rollout.proxy import ClientConnection
from rollout.public_config import EXTENSIONS
from rollout.routes_pull import RoutesPuller
from rollout.routing import RoutingTable
from rollout.shadow_diff import DiffCollector
from rollout.upstream import UpstreamPool, probe_ready

logger = logging.getLogger(__name__)

MAX_ROUTES_BYTES = 16 * 1024 * 1024


def _version() -> str:
    try:
        return metadata.version("lastmile")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class Gateway:
    """State shared by the listeners; every mutation happens on the event loop thread."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.now = self.loop.time()  # coarse clock for timeouts, refreshed by the sweeper
        self.stats = GatewayStats()
        self.clients: set[ClientConnection] = set()
        # exchanges whose client left while Triton works on them: the sweeper times them out
        self.orphans: set[Exchange] = set()
        self.pools: dict[tuple[str, int], UpstreamPool] = {}
        self.last_ready: dict[tuple[str, int], float] = {}
        # each Triton server (by HTTP address), shared by the HTTP and gRPC sides: ejected and
        # admitted again by connects and readiness probes (rollout.balance)
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.shutting_down = False
        self.routing = CompiledRouting(None, self._pool_for)
        self.shadow_diff = DiffCollector(max_rate=config.shadow_diff_rate)
        self.mirrors = ShadowMirrors(self.loop, self.stats, self.shadow_diff)
        self.capture: CaptureSpool | None = None
        self.shipper: SegmentShipper | None = None
        if config.capture_dir:
            self.capture = CaptureSpool(
                Path(config.capture_dir), max_disk_bytes=config.capture_max_bytes
            )
            if config.capture_url:  # the same gateway token as the routes it pulls
                self.shipper = SegmentShipper(
                    Path(config.capture_dir), config.capture_url, config.routes_token
                )
        self.server_metadata = json.dumps(
            {
                "name": "lastmile-gateway",
                "version": _version(),
                "extensions": list(EXTENSIONS),
            }
        ).encode()
        self.registry = make_registry(
            self.stats,
            GaugeSource(
                generation=lambda: self.table.generation if self.table else None,
                client_connections=lambda: len(self.clients),
                upstream_connections=lambda: {p.name: p.total for p in self.pools.values()},
                upstream_up=lambda: {f"{h}:{p}": self._fresh((h, p)) for h, p in self._upstreams()},
                grpc_paths=self._grpc_paths,
                capture=self._capture_counts,
                workers=lambda: self.workers.counts() if self.workers else {},
            ),
        )
        self.grpc: GrpcFrontend | None = None
        if config.grpc_port:
            self.grpc = GrpcFrontend(
                stats=self.stats,
                is_ready=self.is_ready,
                server_name="lastmile-gateway",
                server_version=_version(),
                max_message_bytes=config.max_body_bytes,
                upstream_timeout=config.upstream_timeout,
                diffs=self.shadow_diff,
                shadow_inflight=self.mirrors.inflight,
                lane=self.mirrors.lane,
            )
            self.grpc.replica_for = self.replica_for
            self.grpc.capture = self.capture
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._health_wake = asyncio.Event()
        self.admin = AdminApi(self)
        self.puller = (
            RoutesPuller(self.admin, config.routes_url, config.routes_token, config.routes_poll_s)
            if config.routes_url
            else None
        )
        self.ports: dict[str, int] = {}
        self.workers: Workers | None = None  # the followers, with --workers > 1
        self.acceptor: Acceptor | None = None  # with --workers > 1
        self.receiver: Receiver | None = None  # in a follower

    @property
    def table(self) -> RoutingTable | None:
        return self.routing.table

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        self.admin.load_routes_file()
        self.shadow_diff.start()
        if self.capture is not None:
            self.capture.start()
        if self.shipper is not None:
            self.shipper.start()
        # Connections reach this process from its own listeners (one process), from the
        # leader's accept loop (several: rollout.conn_handoff), or over the leader's channel.
        handed = config.workers > 1 or config.handoff_fd is not None
        listeners = {} if config.handoff_fd is not None else self._listeners()
        factories: dict[str, ProtocolFactory] = {"http": lambda: ClientConnection(self)}
        if not handed:
            if "http" in listeners:
                data = await self.loop.create_server(
                    factories["http"], sock=listeners["http"], backlog=config.backlog
                )
            else:
                data = await self.loop.create_server(
                    factories["http"],
                    config.host,
                    config.http_port,
                    backlog=config.backlog,
                    reuse_address=True,
                )
            self._servers.append(data)
            self.ports["http"] = data.sockets[0].getsockname()[1]
        elif "http" in listeners:
            self.ports["http"] = listeners["http"].getsockname()[1]
        else:
            self.ports["http"] = config.http_port
        metrics = await start_simple_server(
            config.metrics_host or config.host,
            config.metrics_port,
            self._handle_metrics,
            max_body=0,
        )
        admin = await start_simple_server(
            ADMIN_HOST, config.admin_port, self.admin.handle, max_body=MAX_ROUTES_BYTES
        )
        self._servers += [metrics, admin]
        self.ports["metrics"] = metrics.sockets[0].getsockname()[1]
        self.ports["admin"] = admin.sockets[0].getsockname()[1]
        if self.grpc is not None:
            try:
                self.ports["grpc"] = await self.grpc.start(
                    config.host,
                    config.grpc_port or 0,
                    sock=listeners.get("grpc"),
                    listen=not handed,
                )
            except OSError:
                for server in self._servers:
                    server.close()
                raise
            factories["grpc"] = self.grpc.client_protocol
            if "grpc" in listeners:
                self.ports["grpc"] = listeners["grpc"].getsockname()[1]
        if config.handoff_fd is not None:  # a follower: connections come from the leader
            self.receiver = Receiver(
                self.loop,
                socket.socket(fileno=config.handoff_fd),
                factories,
                on_leader_gone=lambda: os.kill(os.getpid(), signal.SIGTERM),
            )
            self.receiver.start()
        elif handed:  # the leader of several: it accepts, and deals connections out
            self.workers = Workers(self, self.ports)
            self.acceptor = Acceptor(self.loop, listeners, factories, self.workers.channels)
            self.acceptor.start()
        self._tasks = [
            self.loop.create_task(self._sweep()),
            self.loop.create_task(self._check_health()),
            self.loop.create_task(self._watch_loop()),
        ]
        if self.puller is not None:
            self._tasks.append(self.loop.create_task(self.puller.run()))
        if self.workers is not None:
            await self.workers.start()
        logger.info(
            "lastmile gateway listening: http %s:%d, grpc %s, metrics %s:%d, admin %s:%d; "
            "routes: %s",
            config.host,
            self.ports["http"],
            f"{config.host}:{self.ports['grpc']}" if "grpc" in self.ports else "off",
            config.metrics_host or config.host,
            self.ports["metrics"],
            ADMIN_HOST,
            self.ports["admin"],
            self.routing.deployed,
        )

    def _listeners(self) -> dict[str, socket.socket]:
        """The listening sockets to serve on, by protocol: those handed down by a supervisor
        that keeps them open across our restarts (--http-fd, --grpc-fd: clients that connect
        while we are down wait in their backlog instead of being refused), and with --workers
        the others bound here, for the leader's accept loop (rollout.conn_handoff)."""
        config, out = self.config, {}
        wanted = {"http": (config.http_fd, config.http_port)}
        if self.grpc is not None:
            wanted["grpc"] = (config.grpc_fd, config.grpc_port or 0)
        for protocol, (fd, port) in wanted.items():
            if fd is not None:
                out[protocol] = socket.socket(fileno=fd)
            elif config.workers > 1:
                family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
                out[protocol] = socket.create_server(
                    (config.host, port), family=family, backlog=config.backlog
                )
        return out

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then drop everything."""
        logger.info("gateway stopping: %d client connection(s) open", len(self.clients))
        for server in self._servers:
            server.close()
        for handoff in (self.acceptor, self.receiver):
            if handoff is not None:
                handoff.close()
        self.shutting_down = True
        followers = None
        if self.workers is not None:  # they drain their own clients meanwhile
            followers = self.loop.create_task(self.workers.stop(self.config.shutdown_timeout))
        grpc_stop = None
        if self.grpc is not None:  # stops accepting now, drains in parallel with HTTP
            grpc_stop = self.loop.create_task(self.grpc.stop(self.config.shutdown_timeout))
        for client in list(self.clients):
            client.shutdown()
        deadline = self.loop.time() + self.config.shutdown_timeout
        while any(c.busy or c.queue for c in self.clients) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for client in list(self.clients):
            client.abort()
        self.mirrors.close()
        if grpc_stop is not None:
            await grpc_stop
        if followers is not None:
            await followers
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pool in self.pools.values():
            pool.retire()
        await asyncio.to_thread(self.shadow_diff.stop, 5.0)
        if self.capture is not None:
            await asyncio.to_thread(self.capture.stop)
        if self.shipper is not None:  # after the spool: what it closed as it stopped goes too
            await asyncio.to_thread(self.shipper.stop)
        await asyncio.sleep(0)  # let transports run their close callbacks
        logger.info("gateway stopped")

    # -- routing ----------------------------------------------------------------------------
    def set_table(self, table: RoutingTable | None) -> None:
        """Swap the routing table in one assignment; pools no longer used are retired."""
        wanted = table.upstreams() if table is not None else set()
        routing = CompiledRouting(table, self._pool_for)
        self.routing = routing
        if self.grpc is not None:
            self.grpc.set_table(table)
        for key in [k for k in self.pools if k not in wanted]:
            self.pools.pop(key).retire()
            self.last_ready.pop(key, None)
        for key in [k for k in self.replicas if k not in wanted]:
            del self.replicas[key]
        self._health_wake.set()

    def _pool_for(self, host: str, port: int) -> UpstreamPool:
        pool = self.pools.get((host, port))
        if pool is None:
            pool = self.pools[(host, port)] = UpstreamPool(
                host,
                port,
                max_connections=self.config.max_upstream_connections,
                connect_timeout=self.config.connect_timeout,
                replica=self.replica_for(host, port),
            )
        return pool

    def replica_for(self, host: str, port: int) -> Replica:
        """The Triton server at this HTTP address (made on first use, kept across tables)."""
        replica = self.replicas.get((host, port))
        if replica is None:
            replica = self.replicas[(host, port)] = Replica(host, port)
        return replica

    def _upstreams(self) -> set[tuple[str, int]]:
        return self.table.upstreams() if self.table is not None else set()

    def _grpc_paths(self) -> dict[str, int]:
        relay = self.grpc.relay if self.grpc is not None else None
        return dict(relay.counts) if relay is not None else {}

    def _capture_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        spool = self.capture
        return (dict(spool.captured), dict(spool.dropped)) if spool is not None else ({}, {})

    def _fresh(self, key: tuple[str, int]) -> bool:
        seen = self.last_ready.get(key)
        window = max(3 * self.config.health_interval, 3.0)
        return seen is not None and self.loop.time() - seen <= window

    def is_ready(self) -> bool:
        """A table is loaded and every route has a variant taking traffic (weight > 0) with a
        target that passed its recent health check: a candidate (weight 0, or a minority
        variant) going down leaves the gateway ready while a stable variant serves."""
        if self.table is None:
            return False
        fresh = self._fresh
        return all(
            any(any(fresh(upstream) for upstream in variant) for variant in route.live_upstreams)
            for route in self.routing.routes.values()
        )

    # -- background -------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._sweep_once(self.loop.time())

    def _sweep_once(self, now: float) -> None:
        """Time out idle clients and overdue orphaned exchanges. A function of its own, so
        that its loop variables end with it: in `_sweep`'s frame, suspended between sweeps,
        they would keep the last closed connection or exchange alive until the next one."""
        self.now = now
        for client in list(self.clients):
            client.check_timeouts(now)
        timeout = self.config.upstream_timeout
        for ex in list(self.orphans):
            if ex.done:
                self.orphans.discard(ex)
            elif now - ex.start > timeout:
                ex.on_timeout()

    async def _watch_loop(self) -> None:
        """Measure how late the loop runs a timer (lastmile_gateway_event_loop_lag_seconds)."""
        lag, clock = self.stats.loop_lag, time.perf_counter  # the loop's clock is in ms
        while True:
            due = clock() + LOOP_PROBE_S
            await asyncio.sleep(LOOP_PROBE_S)
            lag.add(max(0.0, clock() - due))

    async def _check_health(self) -> None:
        interval = self.config.health_interval
        while True:
            upstreams = sorted(self._upstreams())
            results = await asyncio.gather(
                *(probe_ready(h, p, timeout=max(interval, 0.5)) for h, p in upstreams)
            )
            now = self.loop.time()
            for key, ok in zip(upstreams, results, strict=True):
                replica = self.replica_for(*key)
                if ok:
                    if key not in self.last_ready or not self._fresh(key):
                        logger.info("upstream %s:%d is ready", *key)
                    self.last_ready[key] = now
                    replica.admit()
                else:
                    if self._fresh(key):
                        logger.warning("upstream %s:%d failed its readiness check", *key)
                    replica.eject("failed its readiness check")
            self._health_wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._health_wake.wait(), interval)

    # -- side doors -------------------------------------------------------------------------
    async def _handle_metrics(self, request: SimpleRequest) -> SimpleResponse:
        if request.path != "/metrics":
            return SimpleResponse(404, json_error("not found: try /metrics"))
        if request.method != "GET":
            return SimpleResponse(405, json_error("method not allowed"))
        if self.workers is None:
            return SimpleResponse(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        texts = [generate_latest(self.registry).decode(), *await self.workers.metrics()]
        return SimpleResponse(200, generate_latest(merged_registry(texts)), CONTENT_TYPE_LATEST)


async def serve(
    config: GatewayConfig,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Future[Gateway] | None = None,
    install_signal_handlers: bool = True,
    settle_heap: bool = False,
) -> None:
    """Run a gateway until `stop` is set or SIGTERM/SIGINT arrives, then shut down cleanly.
    ``settle_heap``: this process is the gateway's own (``main``), see ``_settle_heap``."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    gateway = Gateway(config)
    await gateway.start()
    if settle_heap:
        _settle_heap()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if started is not None:
        started.set_result(gateway)
    try:
        await stop.wait()
    finally:
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await gateway.shutdown()


def _settle_heap() -> None:
    """What start-up made (modules, pools, the routing table) lives as long as the process:
    move it out of the cyclic collector's way, so that the collections the requests' short
    lived objects trigger look at those alone (a full collection otherwise walks every object
    of every imported module)."""
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # before the requests' buffers: see rollout.malloc_tuning
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_to_exit(serve(config, settle_heap=True))


def run_to_exit(serving: Coroutine[Any, Any, None]) -> int:
    """Run a gateway process's `serving` coroutine on uvloop (asyncio where there is none):
    the process's exit status, 2 when it could not start (port in use, bad address)."""
    runner: Any
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.run
    try:
        runner(serving)
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
