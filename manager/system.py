"""The running system behind ``lastmile up``: Triton, the gateway, the scraper, the store.

The management API's lifespan owns one ``System``; stopping the API stops everything it
started, children first. A state file in ``LASTMILE_HOME/run`` tells other commands (the CLI,
``lastmile down``) where things run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from manager import store
from manager.errors import RuntimeSetupError
from manager.private_files import secure_tree, write_private
from manager.procs import ChildRegistry, reap_orphans, started, terminate_group
from manager.scraper import Scraper
from manager.services import assay_runs, reconcile, rollouts
from manager.services.capture import Summariser
from manager.services.context import Platform
from manager.services.gateway_pool import GatewayPool
from manager.services.prometheus_source import PrometheusSource, Puller
from manager.settings import Settings
from manager.state_file import state_path
from manager.triton.client import TritonClient
from manager.triton.cpus import cpu_sets, format_cpu_list
from manager.triton.fleet import TritonFleet
from manager.triton.runtime import EmbeddedTriton, ExternalTriton, TritonRuntime
from manager.watchdog import Watchdog
from rollout.addresses import expand_list

log = logging.getLogger(__name__)


def _cpus(replica: TritonRuntime) -> str | None:
    """The CPUs an embedded server is pinned to (LASTMILE_TRITON_CPUS), None: any."""
    cpus = getattr(replica, "cpus", None)
    return format_cpu_list(sorted(cpus)) if cpus else None


def make_runtime(settings: Settings) -> TritonFleet:
    """The Triton servers of this system: the external ones listed in LASTMILE_TRITON_URL, or
    LASTMILE_TRITON_REPLICAS embedded ones."""
    if settings.triton_url:
        header = settings.triton_control_header
        control: dict[str, str] = {}
        if header is not None:
            name, sep, value = header.get_secret_value().partition("=")
            if not sep or not name.strip():
                raise RuntimeSetupError(
                    "LASTMILE_TRITON_CONTROL_HEADER must be NAME=VALUE",
                    hint="the header and value given to tritonserver --http-restricted-api",
                )
            control = {name.strip(): value.strip()}
        urls = _expanded("LASTMILE_TRITON_URL", settings.triton_url)
        if len(set(urls)) != len(urls):
            raise RuntimeSetupError(
                f"LASTMILE_TRITON_URL lists a server twice: {settings.triton_url!r}",
                hint="give each Triton server's HTTP URL once, comma-separated",
            )
        if len(urls) > 1 and settings.triton_metrics_url:
            raise RuntimeSetupError(
                "LASTMILE_TRITON_METRICS_URL names one server, LASTMILE_TRITON_URL several",
                hint="unset LASTMILE_TRITON_METRICS_URL: each server's metrics are read on its "
                "HTTP port + 2",
            )
        grpc_urls: list[str | None] = [None] * len(urls)
        if settings.triton_grpc_url:
            given = _expanded("LASTMILE_TRITON_GRPC_URL", settings.triton_grpc_url)
            if len(given) != len(urls) or len(set(given)) != len(given):
                raise RuntimeSetupError(
                    f"LASTMILE_TRITON_GRPC_URL lists {len(set(given))} distinct address(es) for "
                    f"{len(urls)} server(s) in LASTMILE_TRITON_URL: {settings.triton_grpc_url!r}",
                    hint="give each server's gRPC HOST:PORT once, in the order of "
                    "LASTMILE_TRITON_URL, or unset it (HTTP port + 1)",
                )
            grpc_urls = list(given)
        return TritonFleet(
            [
                ExternalTriton(
                    url,
                    grpc_url=grpc_url,
                    metrics_url=settings.triton_metrics_url,
                    start_timeout_s=settings.triton_start_timeout_s,
                    control_headers=control,
                    control_over_grpc=settings.triton_control_protocol == "grpc",
                )
                for url, grpc_url in zip(urls, grpc_urls, strict=True)
            ]
        )
    cpus = cpu_sets(settings.triton_cpus, settings.triton_replicas)
    replicas = []
    for i in range(settings.triton_replicas):
        offset = i * settings.triton_port_stride
        suffix = "" if i == 0 else f"-{i}"
        replicas.append(
            EmbeddedTriton(
                repository=settings.repository_dir,
                work_dir=settings.run_dir / f"triton{suffix}",
                http_port=settings.triton_http_port + offset,
                grpc_port=settings.triton_grpc_port + offset,
                metrics_port=settings.triton_metrics_port + offset,
                log_path=settings.logs_dir / f"tritonserver{suffix}.log",
                start_timeout_s=settings.triton_start_timeout_s,
                response_cache_bytes=settings.triton_response_cache_bytes,
                stub_memory_bytes=settings.triton_stub_memory_bytes,
                gpu_metrics=settings.triton_gpu_metrics,
                cpus=cpus[i] if cpus else None,
            )
        )
    return TritonFleet(replicas)


class GatewayProcess:
    """The data-plane gateway as a child process (its own event loop, no GIL sharing).

    Its admin endpoint takes routing tables only with a secret made at each start (written
    0600 to ``run/gateway-admin.key`` for the gateway to read), and only tables whose targets
    are among the Triton servers given here."""

    def __init__(
        self,
        settings: Settings,
        *,
        upstreams: list[str] | None = None,
        on_spawn: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.admin_url = f"http://127.0.0.1:{settings.gateway_admin_port}"
        self.log_path = settings.logs_dir / "gateway.log"
        self.token_path = settings.run_dir / "gateway-admin.key"
        self.upstreams = list(upstreams or [])
        self.on_spawn = on_spawn
        self.token = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._listeners: dict[str, socket.socket] = {}

    def _listener(self, protocol: str) -> socket.socket:
        """The data ports' listening sockets (``http``, ``grpc``), made once and kept here:
        across gateway restarts connecting clients wait in their backlog instead of being
        refused."""
        listener = self._listeners.get(protocol)
        if listener is None:
            host = self.settings.gateway_bind_host
            port = getattr(self.settings, f"gateway_{protocol}_port")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((host, port))
                listener.listen(2048)
            except OSError as exc:
                listener.close()
                raise RuntimeSetupError(
                    f"cannot listen on {host}:{port}: {exc.strerror}",
                    hint="stop what uses the port, or set "
                    f"LASTMILE_GATEWAY_{protocol.upper()}_PORT",
                ) from exc
            listener.set_inheritable(True)
            self._listeners[protocol] = listener
        return listener

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def _admin_get(self, path: str, timeout_s: float) -> httpx.Response | None:
        """GET on the gateway's admin API with its token; None when it does not answer 200."""
        try:
            response = httpx.get(f"{self.admin_url}{path}", headers=self.headers, timeout=timeout_s)
        except httpx.HTTPError:
            return None
        return response if response.status_code == 200 else None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        return self._admin_get("/routes", timeout_s) is not None

    def workers(self, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """The gateway's processes (GET /workers: index, pid, state, starts, last exit); empty
        when it does not answer."""
        response = self._admin_get("/workers", timeout_s)
        if response is None:
            return []
        return [
            {key: w.get(key) for key in ("index", "pid", "state", "starts", "last_exit")}
            for w in response.json().get("workers", [])
        ]

    def start(self, timeout_s: float = 20.0) -> None:
        s = self.settings
        self.token = secrets.token_urlsafe(32)
        write_private(self.token_path, self.token.encode())
        cmd = [
            sys.executable, "-m", "rollout.gateway",
            "--host", s.gateway_bind_host,
            "--http-port", str(s.gateway_http_port),
            "--http-fd", str(self._listener("http").fileno()),
            "--grpc-port", str(s.gateway_grpc_port),
            "--grpc-fd", str(self._listener("grpc").fileno()),
            "--metrics-port", str(s.gateway_metrics_port),
            "--admin-port", str(s.gateway_admin_port),
            "--routes-file", str(s.run_dir / "routes.json"),
            "--admin-token-file", str(self.token_path),
            "--shadow-diff-rate", f"{s.shadow_diff_rate:g}",
            "--capture-dir", str(s.capture_dir),
            "--capture-max-bytes", str(s.capture_max_bytes),
            "--workers", str(s.gateway_workers),
        ]  # fmt: skip
        for upstream in self.upstreams:
            cmd += ["--allowed-upstream", upstream]
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=tuple(listener.fileno() for listener in self._listeners.values()),
            )
        if self.on_spawn is not None:
            self.on_spawn(self._proc.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeSetupError(
                    "the gateway exited during start-up",
                    hint=f"see {self.log_path}; a port may be taken "
                    "(LASTMILE_GATEWAY_HTTP_PORT, LASTMILE_GATEWAY_GRPC_PORT, "
                    "LASTMILE_GATEWAY_ADMIN_PORT, ...)",
                )
            if self.healthy(timeout_s=1):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeSetupError(f"the gateway did not start within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the process (the listening socket stays open for a restart: see close)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate_group(proc.pid, timeout_s=timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def close(self) -> None:
        """Stop for good: the process, then the data ports."""
        self.stop()
        listeners, self._listeners = self._listeners, {}
        for listener in listeners.values():
            listener.close()


class System:
    """Starts and stops everything ``lastmile up`` runs, in dependency order, and keeps it
    running (``manager.watchdog``)."""

    def __init__(self, settings: Settings, *, with_runtime: bool = True) -> None:
        self.settings = settings
        settings.ensure_dirs()
        engine = store.make_engine(settings.db_url)
        store.init_db(engine)
        self.platform = Platform(settings=settings, engine=engine)
        self.with_runtime = with_runtime
        self.gateway: GatewayProcess | None = None
        self.scraper: Scraper | None = None
        self.summariser: Summariser | None = None
        self.assay_loop: assay_runs.Loop | None = None
        self.watchdog: Watchdog | None = None
        self.rollout_loop: rollouts.Loop | None = None
        self.children = ChildRegistry(settings.run_dir)

    @property
    def owns_triton(self) -> bool:
        """The Triton servers are ours to restart (embedded), not someone else's (external)."""
        fleet = self.platform.triton
        return fleet is not None and isinstance(fleet.replicas[0], EmbeddedTriton)

    def start(self) -> None:
        if not self.with_runtime:
            return
        secure_tree(self.settings.home)
        reap_orphans(self.settings.run_dir)
        self.platform.triton = make_runtime(self.settings)
        started_at = time.time()  # what this system starts counts from zero from here
        try:
            fleet = self.platform.triton
            if self.owns_triton:
                for index in range(len(fleet.replicas)):
                    self.start_triton(index)
            else:  # servers we do not own: start with those that answer, the rest join later
                fleet.start_external(self.settings.triton_start_timeout_s)
            self.gateway = GatewayProcess(
                self.settings,
                upstreams=[
                    address
                    for replica in fleet.replicas
                    for address in (
                        replica.endpoints.http_url.removeprefix("http://"),
                        replica.endpoints.grpc_url,
                    )
                ],
                on_spawn=lambda pid: self.children.add("gateway", pid),
            )
            self.start_gateway()
            self.platform.gateway_pool = gateway_pool_of(self.settings)
            self.reconcile()
            self.scraper = Scraper(
                platform=self.platform,
                clients=self._scrape_targets,
                interval_s=self.settings.scrape_interval_s,
                prometheus=prometheus_puller(self.settings),
            )
            # Servers started here counted from zero: their first scrape is an interval, not a
            # baseline (or the warm-ups and first calls of a fast deploy would go uncounted).
            own = [r.endpoints.http_url for r in fleet.replicas] if self.owns_triton else []
            for server in [*own, self.platform.gateway_metrics_url]:
                if server:
                    self.scraper.collector.restarted(server, started_at)
            self.scraper.start()
            self.summariser = Summariser(
                engine=self.platform.engine,
                directory=self.settings.capture_dir,
                width_s=self.settings.capture_window_s,
                interval_s=self.settings.capture_interval_s,
                keep_raw_s=self.settings.capture_keep_raw_s,
                retention=timedelta(days=self.settings.capture_retention_days),
            )
            self.summariser.start()
            summariser = self.summariser
            self.assay_loop = assay_runs.Loop(
                self.platform,
                self.settings.assay_interval_s,
                watermark=lambda: summariser.watermark,
            )
            self.assay_loop.start()
            self.watchdog = Watchdog(self, reconcile=self.reconcile)
            self.platform.unserved = self.unserved
            self.watchdog.start()
            self.rollout_loop = rollouts.Loop(self.platform, self.settings.rollout_tick_s)
            self.rollout_loop.start()
        except BaseException:
            self.stop()
            raise
        self.write_state()

    def write_state(self) -> None:
        """Tell other commands where things run (pids change when a child is restarted)."""
        write_private(state_path(self.settings), json.dumps(self.status(), indent=2).encode())

    def start_triton(self, index: int = 0) -> None:
        """Start (or restart) one replica of the Triton pool."""
        assert self.platform.triton is not None
        replica = self.platform.triton.replicas[index]
        if isinstance(replica, EmbeddedTriton):
            name = "triton" if index == 0 else f"triton-{index}"
            replica.on_spawn = lambda pid: self.children.add(name, pid)
        if self.scraper is not None:  # its counters start again from zero
            self.scraper.restarted(replica.endpoints.http_url)
        replica.start()

    def start_gateway(self) -> None:
        assert self.gateway is not None
        if self.scraper is not None and self.platform.gateway_metrics_url:
            self.scraper.restarted(self.platform.gateway_metrics_url)
        self.gateway.start()
        self.platform.gateway_admin_url = self.gateway.admin_url
        self.platform.gateway_metrics_url = (
            f"http://{self.settings.gateway_host}:{self.settings.gateway_metrics_port}/metrics"
        )
        self.platform.gateway_admin_token = self.gateway.token

    def reconcile(self) -> dict[str, Any]:
        """Bring the repository, Triton and the gateway to what the store says is live."""
        return reconcile.reconcile(self.platform)

    def _scrape_targets(self) -> dict[str, TritonClient]:
        fleet = self.platform.triton
        if fleet is None:
            return {}
        return {
            r.endpoints.http_url: r.client(5.0)
            for r, up in zip(fleet.replicas, fleet.up, strict=True)
            if up
        }

    def stop(self) -> None:
        if self.assay_loop:
            self.assay_loop.stop()
        if self.rollout_loop:
            self.rollout_loop.stop()
        if self.watchdog:
            self.watchdog.stop()
        if self.scraper:
            self.scraper.stop()
        if self.gateway:
            self.gateway.close()  # its capture spool writes what it holds before it exits
        if self.summariser:
            self.summariser.stop()
        if self.platform.triton:
            self.platform.triton.stop()
        self.children.clear()
        state_path(self.settings).unlink(missing_ok=True)
        self.platform.engine.dispose()

    def status(self) -> dict[str, Any]:
        s = self.settings
        triton = self.platform.triton
        host = s.gateway_host
        health = self.watchdog.status() if self.watchdog else {}
        serving = self.watchdog.replica_serving() if self.watchdog else []
        return {
            "home": str(s.home.resolve()),
            "pid": os.getpid(),
            "pid_started": started(os.getpid()),
            "api": {"url": s.local_api_url},
            "gateway": {
                "http": f"http://{host}:{s.gateway_http_port}",
                "grpc": f"{host}:{s.gateway_grpc_port}",
                "metrics": f"http://{host}:{s.gateway_metrics_port}/metrics",
                "pid": self.gateway.pid if self.gateway else None,
                "workers": self.gateway.workers() if self.gateway else [],
                **health.get("gateway", {"state": "up" if self.gateway else "down"}),
            },
            "triton": [
                {
                    **replica.endpoints.to_dict(),
                    "replica": index,
                    "embedded": isinstance(replica, EmbeddedTriton),
                    "pid": getattr(replica, "pid", None),
                    "cpus": _cpus(replica),
                    "ready": _ready(replica),
                    **(
                        health["triton"][index]
                        if index < len(health.get("triton", []))
                        else {"state": "up"}
                    ),
                    **(serving[index] if index < len(serving) else {}),
                }
                for index, replica in enumerate(triton.replicas if triton else [])
            ],
            "database": _redact(s.db_url),
            "profile": s.profile,
        }

    def unserved(self) -> dict[str, str]:
        """Live deployments' ensembles that are not served right now, with the reason."""
        return self.watchdog.unserved() if self.watchdog else {}


def gateway_pool_of(settings: Settings) -> GatewayPool:
    """The gateways whose figures count with this system's own (LASTMILE_GATEWAY_METRICS_URLS);
    RuntimeSetupError for a malformed list."""
    try:
        return GatewayPool(settings.gateway_metrics_urls)
    except ValueError as exc:
        raise RuntimeSetupError(
            f"LASTMILE_GATEWAY_METRICS_URLS: {exc}",
            hint="comma-separated http://HOST:PORT/metrics, {A..B} ranges, or "
            "dns+http://NAME:PORT/metrics for every address of a headless Service",
        ) from None


def _expanded(variable: str, text: str) -> list[str]:
    """A comma-separated list of servers, each entry one address or a range of them
    (``http://triton-{0..7}.triton-headless:8000``: a StatefulSet's pods, up to as many as it
    may scale to)."""
    try:
        return expand_list(text)
    except ValueError as exc:
        raise RuntimeSetupError(
            f"{variable}: {exc}", hint="write a range as {FIRST..LAST}, e.g. triton-{0..7}"
        ) from None


def prometheus_puller(settings: Settings) -> Puller | None:
    """The reader of LASTMILE_PROMETHEUS_URL's figures, when set: windows of
    LASTMILE_PROMETHEUS_STEP_S, each read once Prometheus (scraping every
    LASTMILE_SCRAPE_INTERVAL_S, as `lastmile prometheus-config` writes) has scraped past it."""
    if not settings.prometheus_url:
        return None
    if settings.prometheus_step_s < 2 * settings.scrape_interval_s:
        raise RuntimeSetupError(
            f"LASTMILE_PROMETHEUS_STEP_S={settings.prometheus_step_s} holds fewer than two "
            f"scrapes of {settings.scrape_interval_s:g} s (LASTMILE_SCRAPE_INTERVAL_S)",
            hint="rate() needs two samples per window: raise LASTMILE_PROMETHEUS_STEP_S",
        )
    source = PrometheusSource(settings.prometheus_url)
    return Puller(source, step_s=settings.prometheus_step_s, lag_s=2 * settings.scrape_interval_s)


def _ready(triton: TritonRuntime) -> bool:
    with triton.client(2.0) as client:
        return client.is_ready()


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
