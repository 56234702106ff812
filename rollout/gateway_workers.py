"""Several gateway processes on the same data ports: `python -m rollout.gateway --workers N`.

One gateway process is one event loop, so one CPU core: past a few thousand large requests a
second, that core is the limit (the HTTP binary cells of loadtests/bench_gateway.py). With
``--workers N`` the process that was started (the *leader*) serves as before and also starts
N-1 *followers*, the same gateway in processes of their own. The leader accepts every
connection on the HTTP and gRPC ports and deals them in turn to itself and to the followers
(rollout.conn_handoff), so that each serves an even share of the clients.

The leader alone is what the control plane sees:

- admin port: a table pushed to it (PUT /routes), or pulled (--routes-url), is installed by the
  leader and then pushed to every follower that is up; the PUT answers 200 only once all of
  them installed it. A follower that does not take it is killed and started again, and a
  follower starts from the leader's current table (its own routes file, written before it is
  started, then any newer table pushed as soon as it is up), so no process serves an older
  table than the one confirmed. GET/DELETE /shadow merge or reset the output-diff figures of
  every process (rollout.shadow_report); GET /workers lists the processes.
- metrics port: the leader's /metrics adds every follower's series up
  (rollout.gateway_metrics.merge_exposition), plus ``lastmile_gateway_workers{state}``.
- capture: every process writes segments of its own into the same spool folder (names carry
  the pid and a random instance); only the leader sends them to the control plane
  (--capture-url), and each bounds the folder's size.

Followers listen for admin and metrics on loopback ports of their own (port 0), with a token
made at each leader start (a 0600 file in a private folder), and announce those ports on
stdout. They die with the leader: the end of the channel their connections come through is
their signal to stop. One that exits is started again (backoff 0.5 s to 10 s) and gets no
connections meanwhile. Each keeps its own connection pools, health checks, shadow queue (the
bound is per process) and its share (rate / N) of the shadow comparisons.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rollout.admin_api import leader_entry
from rollout.admin_http import write_atomically
from rollout.conn_handoff import channel_pair
from rollout.gateway_config import ADMIN_HOST, GatewayConfig
from rollout.http_call import request
from rollout.malloc_tuning import tune_malloc
from rollout.routing import RoutingTable

if TYPE_CHECKING:
    from rollout.gateway import Gateway

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # a follower announces its ports within this, or is killed
FIRST_START_S = 15.0  # the leader's start waits this long for its followers, at most
CALL_TIMEOUT_S = 10.0  # one admin or metrics call to a follower
RESPAWN_MIN_S, RESPAWN_MAX_S = 0.5, 10.0
STEADY_S = 60.0  # a follower that ran this long restarts with the shortest backoff again


# -- the follower's configuration, as a file ------------------------------------------------
def follower_config(
    config: GatewayConfig, *, ports: dict[str, int], routes_file: Path, token: str
) -> GatewayConfig:
    """What a follower of a leader with `config` listening on `ports` runs with (its
    connections come from the leader: the channel's fd is given at each start)."""
    return replace(
        config,
        http_port=ports["http"],
        grpc_port=ports.get("grpc", config.grpc_port),
        http_fd=None,
        grpc_fd=None,
        handoff_fd=-1,
        metrics_host=ADMIN_HOST,
        metrics_port=0,
        admin_port=0,
        routes_file=routes_file,
        routes_url=None,  # the leader pulls and pushes
        routes_token=None,
        admin_token=token,
        capture_url=None,  # the leader ships the folder's segments
        shadow_diff_rate=config.shadow_diff_rate / config.workers,
        workers=1,
    )


def dump_config(config: GatewayConfig) -> bytes:
    data = asdict(config)
    data["routes_file"] = str(config.routes_file) if config.routes_file else None
    if config.allowed_upstreams is not None:
        data["allowed_upstreams"] = sorted([h, p] for h, p in config.allowed_upstreams)
    return json.dumps(data).encode()


def load_config(raw: bytes) -> GatewayConfig:
    data: dict[str, Any] = json.loads(raw)
    if data.get("routes_file"):
        data["routes_file"] = Path(data["routes_file"])
    if data.get("allowed_upstreams") is not None:
        data["allowed_upstreams"] = frozenset((h, int(p)) for h, p in data["allowed_upstreams"])
    return GatewayConfig(**data)


@dataclass
class Follower:
    index: int
    routes_file: Path
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    admin_port: int = 0
    metrics_port: int = 0
    up: bool = False
    channel: socket.socket | None = field(default=None, repr=False)  # the leader's end
    starts: int = 0
    last_exit: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "state": "up" if self.up else "down",
            "metrics_port": self.metrics_port or None,  # loopback: one worker's own figures
            "starts": self.starts,
            "last_exit": self.last_exit,
        }


class Workers:
    """The leader's followers: started, kept running, told every table, asked for figures."""

    def __init__(self, gateway: Gateway, ports: dict[str, int]) -> None:
        self.gateway = gateway
        self.ports = ports  # the leader's, filled in by the time start() runs
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="lastmile-gateway-"))  # 0700
        except OSError as exc:  # a read-only root file system (a pod): say what to give
            raise OSError(
                f"--workers needs a writable folder for its workers' token and tables: {exc}; "
                "point TMPDIR at one (a pod: an emptyDir volume)"
            ) from None
        self.token = secrets.token_urlsafe(32)
        self.config_file = self.folder / "follower.json"
        self.followers = [
            Follower(i, self.folder / f"routes-{i}.json") for i in range(1, gateway.config.workers)
        ]
        self.stopping = False
        # the first start is over (every follower up, or FIRST_START_S passed): until then
        # the admin API answers GET /routes 503, so that supervisors wait for all of them
        self.started = False
        self._came_up = asyncio.Event()  # set whenever a follower comes up

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every follower; return once all are up or FIRST_START_S passed (those not
        up by then keep being started in the background)."""
        config = follower_config(
            self.gateway.config,
            ports=self.ports,
            routes_file=self.folder / "unused.json",  # each is given its own
            token=self.token,
        )
        # written 0600 (mkstemp) in a 0700 folder: it holds the workers' admin token
        write_atomically(self.config_file, dump_config(config))
        for follower in self.followers:
            follower.task = asyncio.create_task(self._keep(follower))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_START_S
        while not all(f.up for f in self.followers):
            self._came_up.clear()
            try:
                await asyncio.wait_for(self._came_up.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                logger.error("gateway workers not up after %.0f s: %s", FIRST_START_S,
                             [f.describe() for f in self.followers if not f.up])  # fmt: skip
                break
        self.started = True

    async def stop(self, timeout: float) -> None:
        """SIGTERM every follower (each drains like the leader), SIGKILL what is left."""
        self.stopping = True
        procs = [f.proc for f in self.followers if f.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        waits = [asyncio.create_task(proc.wait()) for proc in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for follower in self.followers:
            if follower.task is not None:
                follower.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower.task
        shutil.rmtree(self.folder, ignore_errors=True)

    async def _keep(self, follower: Follower) -> None:
        loop = asyncio.get_running_loop()
        delay = RESPAWN_MIN_S
        while not self.stopping:
            began = loop.time()
            try:
                await self._spawn(follower)
            except (OSError, ValueError, asyncio.TimeoutError, ConnectionError) as exc:
                logger.error("gateway worker %d did not start: %s", follower.index, exc)
                if follower.proc is not None and follower.proc.returncode is None:
                    follower.proc.kill()
            if follower.proc is not None:
                code = await follower.proc.wait()
                follower.last_exit = f"exit code {code}" if code >= 0 else f"signal {-code}"
            follower.up = False
            if follower.channel is not None:
                follower.channel.close()
                follower.channel = None
            if self.stopping:
                return
            if loop.time() - began > STEADY_S:
                delay = RESPAWN_MIN_S
            logger.warning("gateway worker %d (pid %s) stopped (%s); starting it again in %.1f s",
                           follower.index, follower.pid, follower.last_exit, delay)  # fmt: skip
            await asyncio.sleep(delay)  # backoff before a restart, not a wait for an event
            delay = min(delay * 2, RESPAWN_MAX_S)

    async def _spawn(self, follower: Follower) -> None:
        sent = self.gateway.table
        if sent is not None:
            await asyncio.to_thread(write_atomically, follower.routes_file, sent.to_json())
        else:
            follower.routes_file.unlink(missing_ok=True)
        follower.starts += 1
        ours, theirs = channel_pair()
        follower.channel = ours
        try:
            follower.proc = proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rollout.gateway_workers", str(self.config_file),
                str(follower.index), str(follower.routes_file), str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
            )  # fmt: skip
        finally:
            theirs.close()
        follower.pid = proc.pid
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if not line:
            raise ValueError("it exited during start-up (its log lines are above)")
        ports = json.loads(line)
        follower.admin_port, follower.metrics_port = int(ports["admin"]), int(ports["metrics"])
        while True:  # a table installed since the routes file was written
            current = self.gateway.table
            if current is None or (sent is not None and current.generation == sent.generation):
                break
            await self._put(follower, current)
            sent = current
        follower.up = True  # no await since the check: the next push includes it
        self._came_up.set()
        logger.info("gateway worker %d up (pid %d)", follower.index, proc.pid)

    # -- what the leader asks of them -------------------------------------------------------
    async def _put(self, follower: Follower, table: RoutingTable) -> None:
        status, body = await request(
            ADMIN_HOST,
            follower.admin_port,
            "PUT",
            "/routes",
            token=self.token,
            body=table.to_json(),
            timeout=CALL_TIMEOUT_S,
        )
        if status != 200:
            raise ValueError(f"HTTP {status}: {body[:200]!r}")

    async def push(self, table: RoutingTable) -> None:
        """Every follower that is up installs `table`; one that does not is restarted (it
        starts from the leader's table)."""
        targets = [f for f in self.followers if f.up]
        results = await asyncio.gather(
            *(self._put(f, table) for f in targets), return_exceptions=True
        )
        for follower, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("gateway worker %d (pid %s) did not take generation %d (%s): "
                             "restarting it", follower.index, follower.pid, table.generation,
                             result or type(result).__name__)  # fmt: skip
                follower.up = False
                if follower.proc is not None and follower.proc.returncode is None:
                    follower.proc.kill()

    async def _gather(self, port_of: str, method: str, path: str) -> list[bytes]:
        targets = [f for f in self.followers if f.up]
        token = self.token if port_of == "admin_port" else None
        results = await asyncio.gather(
            *(
                request(
                    ADMIN_HOST,
                    getattr(f, port_of),
                    method,
                    path,
                    token=token,
                    timeout=CALL_TIMEOUT_S,
                )
                for f in targets
            ),
            return_exceptions=True,
        )
        out = []
        for follower, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException) or result[0] != 200:
                logger.warning("gateway worker %d did not answer %s %s: %s", follower.index,
                               method, path, result)  # fmt: skip
                continue
            out.append(result[1])
        return out

    async def metrics(self) -> list[str]:
        """Every follower's Prometheus text (one that does not answer is left out)."""
        return [body.decode() for body in await self._gather("metrics_port", "GET", "/metrics")]

    async def shadow_snapshots(self) -> list[list[dict[str, Any]]]:
        bodies = await self._gather("admin_port", "GET", "/shadow?snapshot=1")
        return [json.loads(body)["snapshot"] for body in bodies]

    async def reset_shadow(self, route: str | None) -> None:
        path = "/shadow" if route is None else f"/shadow?route={quote(route, safe='')}"
        await self._gather("admin_port", "DELETE", path)

    def channels(self) -> list[socket.socket]:
        """The channels of the followers that are up (rollout.conn_handoff deals to them)."""
        return [f.channel for f in self.followers if f.up and f.channel is not None]

    def counts(self) -> dict[str, int]:
        """Processes by state, the leader included."""
        up = 1 + sum(f.up for f in self.followers)
        return {"up": up, "down": len(self.followers) + 1 - up}

    def describe(self) -> list[dict[str, Any]]:
        return [leader_entry(self.gateway.ports.get("metrics"))] + [
            f.describe() for f in self.followers
        ]


# -- the follower's process -----------------------------------------------------------------
async def _follow(config: GatewayConfig) -> None:
    from rollout.gateway import serve

    loop = asyncio.get_running_loop()
    started: asyncio.Future[Gateway] = loop.create_future()
    serving = asyncio.create_task(serve(config, started=started, settle_heap=True))
    either: set[asyncio.Future[Any]] = {serving, started}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        gateway = started.result()
        ports = {"admin": gateway.ports["admin"], "metrics": gateway.ports["metrics"]}
        sys.stdout.write(json.dumps(ports) + "\n")
        sys.stdout.flush()
        os.dup2(2, 1)  # anything printed later goes to the log, not into a pipe nobody reads
    await serving


def main(argv: list[str] | None = None) -> int:
    """`python -m rollout.gateway_workers CONFIG INDEX ROUTES_FILE CHANNEL_FD` (started by a
    leader)."""
    tune_malloc()  # as the leader did (rollout.malloc_tuning)
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print("usage: python -m rollout.gateway_workers CONFIG INDEX ROUTES_FILE CHANNEL_FD "
              "(started by `python -m rollout.gateway --workers N`)", file=sys.stderr)  # fmt: skip
        return 2
    config = replace(
        load_config(Path(args[0]).read_bytes()), routes_file=Path(args[2]), handoff_fd=int(args[3])
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [worker {args[1]}]: %(message)s",
    )
    from rollout.gateway import run_to_exit  # rollout.gateway imports this module

    return run_to_exit(_follow(config))


if __name__ == "__main__":
    sys.exit(main())
