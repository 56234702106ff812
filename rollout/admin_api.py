"""The gateway's admin API (GET/PUT /routes, GET/DELETE /shadow) and the routes file read at
start.

Whoever can PUT a routing table decides where every client's tensors go, so:

- with a token (--admin-token-file) every request must carry `Authorization: Bearer <token>`
  (compared in constant time); without one the API is open to anything on the host, which
  the gateway says in its log at start;
- a table must point only at allowed upstreams (--allowed-upstream, the Triton addresses the
  control plane manages): a stolen or mistaken push cannot make the gateway a relay to
  elsewhere;
- generations only go forward, and never beyond max(current, clock in ms) + a window: a table
  stamped 2**62 would otherwise refuse every later push as stale, forever (the routes file
  keeps it across restarts).

A routes file that is unreadable, invalid or refused does not stop the gateway: it starts with
no table and says why, and the control plane pushes a good one.

`GET /shadow` answers the output-diff reports of shadow routes ({"routes": route -> mirror
variant -> report}, rollout.shadow_diff); `DELETE /shadow?route=<workspace/pipeline>` forgets
one route's figures (no `route`: all of them), e.g. when a new shadow starts. With
--workers N both cover every gateway process, and `GET /workers` lists them
(rollout.gateway_workers).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.admin_http import SimpleRequest, SimpleResponse, write_atomically
from rollout.admission import TableRefused, check_generation, check_upstreams
from rollout.exchange import json_error
from rollout.routing import RoutingTable
from rollout.shadow_report import merge_reports

if TYPE_CHECKING:
    from rollout.gateway import Gateway

logger = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 4096


def read_token_file(path: Path) -> str:
    """The admin token in `path` (surrounding whitespace stripped); ValueError when unusable."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise ValueError(f"{path} is larger than {MAX_TOKEN_BYTES} bytes: not a token file")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token must be printable ASCII") from None
    if not token:
        raise ValueError(f"{path} is empty: write the admin token into it")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(f"{path}: the token must be one word of printable ASCII")
    return token


def leader_entry(metrics_port: int | None) -> dict[str, Any]:
    """GET /workers' line for the process that answers it (rollout.gateway_workers)."""
    return {"index": 0, "pid": os.getpid(), "state": "up", "metrics_port": metrics_port,
            "starts": 1, "last_exit": None}  # fmt: skip


class AdminApi:
    """GET/PUT /routes and GET/DELETE /shadow for one gateway; every mutation runs on the
    gateway's event loop."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        config = gateway.config
        self._token = config.admin_token.encode() if config.admin_token is not None else None
        allowed = config.allowed_upstreams
        self._allowed = (
            frozenset((h.lower(), p) for h, p in allowed) if allowed is not None else None
        )
        self._lock = asyncio.Lock()
        # the table GET /routes reports: the last one every gateway process serves (the first
        # process switches before it pushes to its followers, and reports it after they have)
        self.installed: RoutingTable | None = None

    # -- checks -----------------------------------------------------------------------------
    def authorized(self, request: SimpleRequest) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode("latin-1"), self._token)

    def admit(self, table: RoutingTable) -> None:
        """TableRefused when `table` must not be installed now."""
        if self._allowed is not None:
            check_upstreams(table, self._allowed)
        current = self.gateway.table
        check_generation(
            table.generation,
            current=current.generation if current is not None else None,
            now_ms=time.time_ns() // 1_000_000,
            window_ms=self.gateway.config.generation_window_ms,
        )

    # -- start ------------------------------------------------------------------------------
    def load_routes_file(self) -> None:
        """Install the table saved in --routes-file, if it is there and acceptable."""
        path = self.gateway.config.routes_file
        if self._token is None:
            logger.warning(
                "the admin API is unauthenticated: any process on this host can replace the "
                "routing table; start the gateway with --admin-token-file"
            )
        if path is None:
            return
        if not path.exists():
            if self.gateway.config.handoff_fd is None:  # a follower: the leader pushes
                logger.warning("routes file %s does not exist yet; waiting for PUT /routes", path)
            return
        try:
            table = RoutingTable.from_json(path.read_bytes())
            self.admit(table)
        except (OSError, ValueError) as exc:
            logger.error(
                "ignoring routes file %s: %s; starting with no routing table until the control "
                "plane pushes one (PUT /routes)",
                path,
                exc,
            )
            return
        self.gateway.set_table(table)
        logger.info("loaded routing table generation %d from %s", table.generation, path)

    async def install(self, table: RoutingTable) -> None:
        """Admit `table`, save it in the routes file, then serve it (TableRefused: nothing
        changed). Pushed (PUT /routes) and pulled (--routes-url) tables both come here."""
        gateway = self.gateway
        async with self._lock:
            self.admit(table)
            routes_file = gateway.config.routes_file
            if routes_file is not None:
                await asyncio.to_thread(write_atomically, routes_file, table.to_json())
            gateway.set_table(table)
            if gateway.workers is not None:  # answered once every follower serves it too
                await gateway.workers.push(table)
            self.installed = table
        logger.info(
            "routing table generation %d installed: %s", table.generation, gateway.routing.deployed
        )

    # -- requests ---------------------------------------------------------------------------
    async def handle(self, request: SimpleRequest) -> SimpleResponse:
        if not self.authorized(request):
            return SimpleResponse(
                401,
                json_error("unauthorized: send the admin token as 'Authorization: Bearer <token>'"),
                headers=(("WWW-Authenticate", 'Bearer realm="lastmile-gateway-admin"'),),
            )
        if request.path == "/shadow":
            return await self.shadow(request)
        if request.path == "/workers" and request.method == "GET":
            workers = self.gateway.workers
            listed = (
                workers.describe()
                if workers is not None
                else [leader_entry(self.gateway.ports.get("metrics"))]
            )
            return SimpleResponse(200, json.dumps({"workers": listed}).encode())
        if request.path != "/routes":
            return SimpleResponse(
                404,
                json_error(
                    "not found: the admin API is GET/PUT /routes, GET/DELETE /shadow, GET /workers"
                ),
            )
        gateway = self.gateway
        if request.method == "GET":
            if gateway.workers is not None and not gateway.workers.started:
                return SimpleResponse(503, json_error("starting its worker processes"))
            table = self.installed if self.installed is not None else gateway.table
            if table is None:  # 200 all the same: supervisors poll this to see we are up
                return SimpleResponse(200, b'{"generation":null,"routes":{}}')
            return SimpleResponse(200, table.to_json())
        if request.method != "PUT":
            return SimpleResponse(405, json_error("method not allowed: use GET or PUT"))
        try:
            table = RoutingTable.from_json(request.body)
        except ValueError as exc:
            return SimpleResponse(400, json_error(str(exc)))
        try:
            await self.install(table)
        except TableRefused as exc:
            logger.warning("routing table refused: %s", exc)
            return SimpleResponse(exc.status, json_error(str(exc)))
        body = json.dumps({"generation": table.generation, "routes": sorted(table.routes)})
        return SimpleResponse(200, body.encode())

    async def shadow(self, request: SimpleRequest) -> SimpleResponse:
        """The output-diff reports (of every gateway process: rollout.gateway_workers), or
        `?snapshot=1`, this process's figures for a leader to merge."""
        collector, workers = self.gateway.shadow_diff, self.gateway.workers
        if request.method == "GET":
            if request.query.get("snapshot"):
                body = json.dumps({"snapshot": collector.snapshot()}, separators=(",", ":"))
                return SimpleResponse(200, body.encode())
            snapshots = [collector.snapshot()]
            if workers is not None:
                snapshots += await workers.shadow_snapshots()
            body = json.dumps({"routes": merge_reports(snapshots)}, separators=(",", ":"))
            return SimpleResponse(200, body.encode())
        if request.method != "DELETE":
            return SimpleResponse(405, json_error("method not allowed: use GET or DELETE"))
        route = request.query.get("route") or None
        collector.reset(route)
        if workers is not None:
            await workers.reset_shadow(route)
        logger.info("shadow diff figures reset for %s", route or "every route")
        return SimpleResponse(200, json.dumps({"reset": route}).encode())
