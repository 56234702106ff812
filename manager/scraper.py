"""Scrape Triton's Prometheus endpoint into SQL rows, on a timer.

Triton's metrics are cumulative counters and gauges; storing each scrape as time-stamped rows
lets assays compute rates and compare windows with plain SQL later. Only Triton's own
families (``nv_*``) are kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.errors import LastmileError
from manager.triton.client import TritonClient

log = logging.getLogger(__name__)

KEEP_PREFIX = "nv_"


def parse_metrics(text: str, *, server: str, ts: datetime) -> Iterator[store.MetricSample]:
    """Rows for every ``nv_*`` sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(KEEP_PREFIX):
                continue
            # The parser names counter samples "<family>_total"; keep Triton's own names.
            metric = family.name if sample.name == f"{family.name}_total" else sample.name
            labels = dict(sample.labels)
            model = labels.pop("model", "")
            version = labels.pop("version", "")
            yield store.MetricSample(
                ts=ts,
                server=server,
                model=model,
                version=version,
                metric=metric,
                labels=labels,
                value=float(sample.value),
            )


class Scraper:
    """Scrapes one or more Triton servers every ``interval_s`` into the store."""

    def __init__(
        self,
        *,
        engine: Engine,
        clients: Callable[[], dict[str, TritonClient]],
        interval_s: float,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.engine = engine
        self.clients = clients
        self.interval_s = interval_s
        self.retention = retention
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def scrape_once(self) -> int:
        ts = store.utcnow()
        count = 0
        with Session(self.engine) as session:
            for server, client in self.clients().items():
                try:
                    text = client.metrics_text()
                except LastmileError as exc:
                    self.last_error = str(exc)
                    log.warning("scrape of %s failed: %s", server, exc)
                    continue
                count += store.add_metric_samples(
                    session, samples=parse_metrics(text, server=server, ts=ts)
                )
            store.prune_metric_samples(session, before=ts - self.retention)
            session.commit()
        return count

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scrape_once()
            except Exception:  # keep scraping; a broken scrape must not stop the loop
                log.exception("scrape failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
