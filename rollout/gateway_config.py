"""What one gateway process is configured with: `GatewayConfig`, and the command line of
`python -m rollout.gateway` that fills it (`parse_args`, which refuses contradictory flags and
reads the token files). The process itself, its listeners and their wiring are rollout.gateway.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from rollout.addresses import expand_ordinals
from rollout.admin_api import read_token_file
from rollout.admission import parse_address
from rollout.shadow_diff import DEFAULT_MAX_RATE

DESCRIPTION = "KServe v2 HTTP gateway in front of Triton: `python -m rollout.gateway`."
DEFAULT_GRPC_PORT = 8001
ADMIN_HOST = "127.0.0.1"  # the admin API never leaves the host, token or not
DAY_MS = 24 * 3600 * 1000
MAX_WORKERS = 64


@dataclass
class GatewayConfig:
    """Listeners, limits and timeouts of one gateway process (seconds, bytes)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    # an inherited, already listening socket for the data port (instead of host/http_port)
    http_fd: int | None = None
    # 0 or None: no gRPC listener. The CLI defaults to DEFAULT_GRPC_PORT; embedding code (tests,
    # the unit harness) opts in, so that two gateways in one host never fight over 8001.
    grpc_port: int | None = None
    # an inherited, already listening socket for the gRPC port (instead of host/grpc_port)
    grpc_fd: int | None = None
    metrics_port: int = 8002
    admin_port: int = 8003
    metrics_host: str | None = None  # default: same as host (Prometheus may scrape remotely)
    routes_file: Path | None = None
    # Pull the routing table from the control plane (GET, bearer token) every routes_poll_s,
    # for gateways it cannot push to (replicas on a cluster); None: wait for PUT /routes.
    routes_url: str | None = None
    routes_token: str | None = field(default=None, repr=False)
    routes_poll_s: float = 2.0
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 256 * 1024 * 1024
    # A gzip/deflate body is inflated by the gateway up to this many bytes (413 past it);
    # 0 means twice max_body_bytes.
    max_inflated_bytes: int = 0
    # Bearer token every admin request must carry (None: the admin API is open on loopback).
    admin_token: str | None = field(default=None, repr=False)
    # (host, port) pairs a routing table may point at, HTTP and gRPC alike (None: any).
    allowed_upstreams: frozenset[tuple[str, int]] | None = None
    # A pushed generation may exceed max(current, clock in ms) by at most this much.
    generation_window_ms: int = DAY_MS
    idle_timeout: float = 60.0  # keep-alive client with no request in progress
    request_timeout: float = 120.0  # to receive one whole request once it has started
    upstream_timeout: float = 300.0  # from a complete request to Triton's complete response
    connect_timeout: float = 2.0
    max_upstream_connections: int = 512  # per upstream host:port; excess requests queue
    health_interval: float = 1.0
    shutdown_timeout: float = 30.0
    backlog: int = 2048
    shadow_diff_rate: float = DEFAULT_MAX_RATE  # shadow pairs compared per s and route/mirror
    capture_dir: str | None = None  # the capture spool's folder (None: routes capture nothing)
    capture_max_bytes: int = 512 << 20  # the spool's bound on disk; past it, drop and count
    capture_url: str | None = None  # send closed segments to the control plane here
    # processes serving the data ports (rollout.gateway_workers): this one and workers - 1
    # followers sharing its listening sockets
    workers: int = 1
    # a follower's end of the channel its connections come through (rollout.conn_handoff)
    handoff_fd: int | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.max_inflated_bytes <= 0:
            self.max_inflated_bytes = 2 * self.max_body_bytes


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    defaults = GatewayConfig()
    p = argparse.ArgumentParser(prog="python -m rollout.gateway", description=DESCRIPTION)
    p.add_argument("--host", default=defaults.host, help="address of the data listener")
    p.add_argument("--http-port", type=int, default=defaults.http_port)
    p.add_argument(
        "--http-fd",
        type=int,
        default=None,
        help="serve HTTP on this inherited listening socket (a supervisor keeps it open across "
        "restarts) instead of binding --host/--http-port",
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help="KServe v2 gRPC port, bound on --host (0: no gRPC listener)",
    )
    p.add_argument(
        "--grpc-fd",
        type=int,
        default=None,
        help="serve gRPC on this inherited listening socket (kept open across restarts, as "
        "--http-fd) instead of binding --host/--grpc-port",
    )
    p.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    p.add_argument("--metrics-host", default=None, help="address of /metrics (default: --host)")
    p.add_argument(
        "--admin-port",
        type=int,
        default=defaults.admin_port,
        help=f"admin API port, always bound to {ADMIN_HOST}",
    )
    p.add_argument(
        "--routes-file",
        type=Path,
        default=None,
        help="load the routing table from here at start, rewrite it on each PUT",
    )
    p.add_argument(
        "--routes-url",
        default=None,
        help="pull the routing table from the control plane here (e.g. "
        "http://lastmile-manager:8080/api/v1/gateway/routes) every --routes-poll-s, for "
        "gateways it cannot push to",
    )
    p.add_argument(
        "--routes-token-file",
        type=Path,
        default=None,
        help="file holding the token sent as 'Authorization: Bearer TOKEN' to --routes-url "
        "(the manager's LASTMILE_GATEWAY_PULL_TOKEN)",
    )
    p.add_argument("--routes-poll-s", type=float, default=defaults.routes_poll_s)
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    p.add_argument(
        "--max-inflated-bytes",
        type=int,
        default=0,
        help="largest inflated size of a gzip/deflate request body (default: 2 x max body)",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=None,
        help="file holding the token the admin API requires as 'Authorization: Bearer TOKEN'",
    )
    p.add_argument(
        "--allowed-upstream",
        action="append",
        type=_addresses,
        default=None,
        metavar="HOST:PORT",
        help="an address (Triton HTTP or gRPC) routing tables may point at, or a range of "
        "them (triton-{0..7}.triton-headless:8000: a StatefulSet's pods); repeat it; "
        "default: any",
    )
    p.add_argument(
        "--generation-window-ms",
        type=int,
        default=defaults.generation_window_ms,
        help="refuse a routing table whose generation exceeds max(current, clock in ms) by more",
    )
    p.add_argument("--max-header-bytes", type=int, default=defaults.max_header_bytes)
    p.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    p.add_argument("--request-timeout", type=float, default=defaults.request_timeout)
    p.add_argument("--upstream-timeout", type=float, default=defaults.upstream_timeout)
    p.add_argument(
        "--max-upstream-connections", type=int, default=defaults.max_upstream_connections
    )
    p.add_argument("--health-interval", type=float, default=defaults.health_interval)
    p.add_argument(
        "--shadow-diff-rate",
        type=float,
        default=defaults.shadow_diff_rate,
        help="shadow answer pairs compared per second per route and mirror (the others count "
        "for latency only)",
    )
    p.add_argument(
        "--capture-dir",
        default=None,
        help="folder of the data-capture spool (routes with a capture rate write there)",
    )
    p.add_argument(
        "--capture-max-bytes",
        type=int,
        default=defaults.capture_max_bytes,
        help="bytes the capture spool may hold on disk; past it, captures are dropped",
    )
    p.add_argument(
        "--capture-url",
        default=None,
        help="send each closed capture segment to the control plane here (e.g. "
        "http://lastmile-manager:8080/api/v1/gateway/capture, with the token of "
        "--routes-token-file), for gateways that share no folder with it; needs --capture-dir",
    )
    p.add_argument("--shutdown-timeout", type=float, default=defaults.shutdown_timeout)
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="gateway processes serving the data ports on the same sockets (one event loop, "
        "so one CPU core, each); this one answers the admin and metrics ports for all",
    )
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    if not 1 <= a.workers <= MAX_WORKERS:
        p.error(f"--workers must be between 1 and {MAX_WORKERS} processes, got {a.workers}")
    if not a.shadow_diff_rate > 0:
        p.error(f"--shadow-diff-rate must be > 0 pairs per second, got {a.shadow_diff_rate:g}")
    token = None
    if a.admin_token_file is not None:
        try:
            token = read_token_file(a.admin_token_file)
        except ValueError as exc:
            p.error(f"--admin-token-file: {exc}")
    routes_token = None
    if a.capture_url is not None:
        if a.capture_dir is None:
            p.error("--capture-url needs --capture-dir (the folder segments wait in)")
        if not a.capture_url.startswith(("http://", "https://")):
            p.error(f"--capture-url must be an http:// or https:// URL, got {a.capture_url!r}")
    if a.routes_token_file is not None:
        if a.routes_url is None and a.capture_url is None:
            p.error("--routes-token-file needs --routes-url or --capture-url")
        try:
            routes_token = read_token_file(a.routes_token_file)
        except ValueError as exc:
            p.error(f"--routes-token-file: {exc}")
    if a.routes_url is not None:
        if not a.routes_url.startswith(("http://", "https://")):
            p.error(f"--routes-url must be an http:// or https:// URL, got {a.routes_url!r}")
        if not a.routes_poll_s > 0:
            p.error(f"--routes-poll-s must be > 0 seconds, got {a.routes_poll_s:g}")
    config = GatewayConfig(
        host=a.host,
        http_port=a.http_port,
        http_fd=a.http_fd,
        grpc_port=a.grpc_port,
        grpc_fd=a.grpc_fd,
        metrics_port=a.metrics_port,
        admin_port=a.admin_port,
        metrics_host=a.metrics_host,
        routes_file=a.routes_file,
        routes_url=a.routes_url,
        routes_token=routes_token,
        routes_poll_s=a.routes_poll_s,
        max_body_bytes=a.max_body_bytes,
        max_inflated_bytes=a.max_inflated_bytes,
        admin_token=token,
        allowed_upstreams=(
            frozenset(one for given in a.allowed_upstream for one in given)
            if a.allowed_upstream
            else None
        ),
        generation_window_ms=a.generation_window_ms,
        max_header_bytes=a.max_header_bytes,
        idle_timeout=a.idle_timeout,
        request_timeout=a.request_timeout,
        upstream_timeout=a.upstream_timeout,
        max_upstream_connections=a.max_upstream_connections,
        health_interval=a.health_interval,
        shutdown_timeout=a.shutdown_timeout,
        shadow_diff_rate=a.shadow_diff_rate,
        capture_dir=a.capture_dir,
        capture_max_bytes=a.capture_max_bytes,
        capture_url=a.capture_url,
        workers=a.workers,
        log_level=a.log_level,
    )
    return config


def _addresses(text: str) -> list[tuple[str, int]]:
    """HOST:PORT, or a range of them (``triton-{0..7}.triton-headless:8000``)."""
    try:
        return [parse_address(one) for one in expand_ordinals(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
