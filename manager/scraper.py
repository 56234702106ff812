"""The metrics timer of a running system: scrape Triton and the gateway, store the figures.

Every ``interval_s`` the scraper reads each Triton server's /metrics and the gateway's, and
hands the readings to ``manager.services.metrics.Collector``, which keeps the previous
reading per server and stores the interval's figures (rates, averages, percentiles) named by
workspace / pipeline / version / step. About once a minute it applies the retention policy
(downsampling, pruning). With ``LASTMILE_PROMETHEUS_URL`` set it also reads the same figures
from Prometheus (``manager.services.prometheus_source``), stored with source "prometheus".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from manager.errors import GatewayError, LastmileError
from manager.services import gateway_pool, metrics
from manager.services.context import Platform
from manager.services.metrics import GatewayReadings
from manager.services.prometheus_source import Puller
from manager.triton.client import TritonClient

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 60.0


class Scraper:
    """Scrapes the Triton servers (``clients``) and the platform's gateway into the store."""

    def __init__(
        self,
        *,
        platform: Platform,
        clients: Callable[[], dict[str, TritonClient]],
        interval_s: float,
        prometheus: Puller | None = None,
    ) -> None:
        self.platform = platform
        self.clients = clients
        self.interval_s = interval_s
        self.prometheus = prometheus
        self.collector = metrics.Collector(platform)
        self._scrape_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retention_at = 0.0
        self.last_error: str | None = None

    def restarted(self, server: str) -> None:
        """The control plane (re)starts ``server`` now: its counters begin again at zero."""
        self.collector.restarted(server, time.time())

    def _gateway(self) -> GatewayReadings | None:
        if not gateway_pool.attached(self.platform):
            return None
        try:
            readings = gateway_pool.read(self.platform)
        except GatewayError as exc:
            log.debug("gateway scrape failed: %s", exc)
            return None
        return {key: counters.counters() for key, counters in readings.items()}

    def scrape_once(self) -> metrics.Recorded:
        """Read every source now and store the figures (one scrape at a time)."""
        with self._scrape_lock:
            ts = time.time()
            texts: dict[str, str] = {}
            for server, client in self.clients().items():
                try:
                    texts[server] = client.metrics_text()
                except LastmileError as exc:
                    self.last_error = str(exc)
                    log.warning("scrape of %s failed: %s", server, exc)
                finally:
                    client.close()
            return self.collector.record(ts=ts, triton=texts, gateway=self._gateway())

    def tick(self) -> None:
        """One turn of the timer: scrape, then the retention policy when due."""
        self.scrape_once()
        now = time.time()
        if now - self._retention_at >= RETENTION_EVERY_S:
            self._retention_at = now
            metrics.apply_retention(self.platform, now=now)

    def pull_prometheus(self) -> None:
        """Read the windows Prometheus has completed since the last read."""
        assert self.prometheus is not None
        try:
            self.prometheus.pull(self.platform)
            self.prometheus.last_error = None
        except LastmileError as exc:
            self.prometheus.last_error = str(exc)
            log.warning("reading figures from Prometheus failed: %s", exc)

    def _loop(self, turn: Callable[[], None], what: str) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                turn()
            except Exception:  # keep going; a broken turn must not stop the loop
                log.exception("%s failed", what)

    def start(self) -> None:
        # Prometheus is read on a thread of its own: a slow or absent Prometheus never
        # delays the scrapes.
        loops = [(self.tick, "scrape")]
        if self.prometheus is not None:
            loops.append((self.pull_prometheus, "reading Prometheus"))
        self._threads = [
            threading.Thread(target=self._loop, args=loop, name=loop[1], daemon=True)
            for loop in loops
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        if self.prometheus is not None:
            self.prometheus.source.close()
