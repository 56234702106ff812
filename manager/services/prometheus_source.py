"""The same figures, read back from a Prometheus that scrapes this system (PromQL).

Where Lastmile cannot scrape Triton itself, or where a Prometheus already does, the figures
of ``manager.observe.figures`` are computed by Prometheus (``rate``, ``histogram_quantile``,
gauges) over windows of ``step`` seconds and stored in the same table with source
"prometheus", attributed to workspaces and pipelines exactly as the direct scraper's are. The
targets must carry the labels ``lastmile prometheus-config`` writes (lastmile_component,
lastmile_server).

How the two sources line up: a point read here at time ``t`` is Prometheus' ``rate(x[step])``
at ``t``, the growth of the samples inside ``(t - step, t]`` extrapolated to the window's
edges; a direct point is the exact growth between two scrapes. Over the same stretch of steady
traffic both give the same rate; at an edge where traffic starts or stops within a window
Prometheus' extrapolation can differ by up to one of its scrape intervals' worth.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from manager import store
from manager.errors import InvalidInput, PrometheusError
from manager.observe.figures import QUANTILES, Figure, VariantFigure, labels_of
from manager.observe.gateway import variant_of
from manager.observe.triton import GAUGES
from manager.services.context import Platform
from manager.services.gateway_figures import CLIENT_CODES
from manager.services.metrics import NameCache, triton_points, variant_points, when

SOURCE = "prometheus"
T = 'lastmile_component="triton"'
G = 'lastmile_component="gateway",variant!=""'
GATEWAY_BY = "lastmile_server, route, variant"
MAX_POINTS_PER_QUERY = 10_000  # Prometheus refuses more than 11,000 per series


def _rate(family: str, w: str) -> str:
    return f"rate({family}{{{T}}}[{w}])"


def triton_queries(w: str) -> dict[str, str]:
    """Figure name -> PromQL for the Triton figures over windows ``w`` (e.g. ``15s``)."""
    success = _rate("nv_inference_request_success", w)
    compute = " + ".join(
        _rate(f"nv_inference_compute_{part}_duration_us", w)
        for part in ("input", "infer", "output")
    )
    computed = f"({success} - ({_rate('nv_cache_num_hits_per_model', w)} or {success} * 0))"
    queries = {
        "requests_per_s": success,
        "failures_per_s": f"{_rate('nv_inference_request_failure', w)} > 0",
        "inferences_per_s": _rate("nv_inference_count", w),
        "executions_per_s": _rate("nv_inference_exec_count", w),
        "batch_size_avg": f"{_rate('nv_inference_count', w)} / "
        f"({_rate('nv_inference_exec_count', w)} > 0)",
        "request_ms_avg": f"{_rate('nv_inference_request_duration_us', w)} / "
        f"({success} > 0) / 1000",
        "queue_ms_avg": f"{_rate('nv_inference_queue_duration_us', w)} / ({success} > 0) / 1000",
        "compute_ms_avg": f"({compute}) / ({computed} > 0) / 1000",
        "cache_hits_per_s": _rate("nv_cache_num_hits_per_model", w),
        "cache_misses_per_s": _rate("nv_cache_num_misses_per_model", w),
    }
    for family, name in GAUGES.items():
        queries[name] = f"{family}{{{T}}}"
    return queries


def gateway_queries(w: str) -> dict[str, str]:
    """Figure name -> PromQL for the gateway's per-variant figures over windows ``w``."""
    requests = f"sum by ({GATEWAY_BY}) (rate(lastmile_gateway_requests_total{{{G}}}[{w}]))"
    not_errors = "|".join(("2..", *CLIENT_CODES))
    errors = (
        f"sum by ({GATEWAY_BY}) "
        f'(rate(lastmile_gateway_requests_total{{{G},code!~"{not_errors}"}}[{w}]))'
    )
    buckets = (
        f"sum by ({GATEWAY_BY}, le) "
        f"(rate(lastmile_gateway_request_duration_seconds_bucket{{{G}}}[{w}]))"
    )
    queries = {
        "gateway_requests_per_s": requests,
        "gateway_errors_per_s": f"{errors} or {requests} * 0",
    }
    for name, q in QUANTILES:
        queries[name] = f"histogram_quantile({q}, {buckets}) * 1000"
    return queries


class PrometheusSource:
    """Runs the queries over a time range (prometheus-api-client) and stores the points."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.url = url.rstrip("/")
        # no retries with back-off inside a read: the next window's read is the retry
        self._prom = PrometheusConnect(
            url=self.url,
            timeout=timeout_s,  # type: ignore[arg-type]
            retry=Retry(total=0, raise_on_status=False),
        )
        self.names = NameCache()

    def close(self) -> None:
        self._prom.close()

    def _query(self, promql: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
        from prometheus_api_client.exceptions import PrometheusApiClientException
        from requests.exceptions import RequestException

        try:
            return list(
                self._prom.custom_query_range(
                    promql, start_time=when(start), end_time=when(end), step=f"{step_s}s"
                )
            )
        except (PrometheusApiClientException, RequestException) as exc:
            raise PrometheusError(
                f"Prometheus at {self.url} could not answer {promql!r}: {exc}",
                hint="check LASTMILE_PROMETHEUS_URL and that Prometheus runs the configuration "
                "of `lastmile prometheus-config`",
            ) from exc

    def _series(
        self, queries: dict[str, str], start: float, end: float, step_s: int
    ) -> Iterator[tuple[str, dict[str, str], float, float]]:
        """(figure name, labels, ts, value) of every finite value the queries return."""
        for name, promql in queries.items():
            for series in self._query(promql, start, end, step_s):
                for ts, text in series.get("values", []):
                    value = float(text)
                    if math.isfinite(value):
                        yield name, dict(series.get("metric", {})), float(ts), value

    def read(self, platform: Platform, *, start: float, end: float, step_s: int) -> int:
        """Store the figures of the windows ending at ``start``, ``start + step_s``, ... up to
        ``end`` (seconds since the epoch), replacing what an earlier read stored for them;
        the number of points stored."""
        if step_s < 1 or end < start:
            raise InvalidInput(f"cannot read windows of {step_s} s from {start} to {end}")
        if (end - start) / step_s > MAX_POINTS_PER_QUERY:
            raise InvalidInput(
                f"{(end - start) / step_s:.0f} windows of {step_s} s in one read",
                hint=f"read at most {MAX_POINTS_PER_QUERY} windows at a time",
            )
        w = f"{step_s}s"
        triton: dict[tuple[str, float], list[Figure]] = defaultdict(list)
        for name, labels, ts, value in self._series(triton_queries(w), start, end, step_s):
            model, version = labels.get("model", ""), labels.get("version", "")
            kept = {"reason": labels["reason"]} if "reason" in labels else {}
            if "gpu_uuid" in labels:
                kept["gpu"] = labels["gpu_uuid"]
            figure = Figure(name, value, model, version, labels_of(kept))
            triton[(labels.get("lastmile_server", ""), ts)].append(figure)
        gateway: dict[tuple[str, float], list[VariantFigure]] = defaultdict(list)
        for name, labels, ts, value in self._series(gateway_queries(w), start, end, step_s):
            owner = variant_of(labels.get("route", ""), labels.get("variant", ""))
            if owner is not None:
                figure_v = VariantFigure(owner[0], owner[1], owner[2], name, value)
                gateway[(labels.get("lastmile_server", ""), ts)].append(figure_v)
        with platform.session() as session:
            names = self.names.get(session)
            points: list[store.MetricPoint] = []
            for (server, ts), figures in triton.items():
                points += triton_points(
                    names, figures, source=SOURCE, server=server, ts=ts, interval_s=step_s
                )
            for (server, ts), figures_v in gateway.items():
                points += variant_points(
                    figures_v, source=SOURCE, server=server, ts=ts, interval_s=step_s
                )
            store.delete_metric_points(
                session, source=SOURCE, after=when(start - step_s / 2), until=when(end)
            )
            count = store.add_metric_points(session, points=points)
            session.commit()
        return count


class Puller:
    """Reads each window once it has ended and Prometheus has scraped past it: windows end on
    multiples of ``step_s`` (epoch), read ``lag_s`` after their end; a backlog (Prometheus
    was down) is caught up to ``max_windows`` at a time."""

    def __init__(
        self, source: PrometheusSource, *, step_s: int, lag_s: float, max_windows: int = 40
    ) -> None:
        self.source = source
        self.step_s = step_s
        self.lag_s = lag_s
        self.max_windows = max_windows
        self.done_until: float | None = None
        self.last_error: str | None = None

    def due(self, now: float | None = None) -> tuple[float, float] | None:
        now = time.time() if now is None else now
        end = math.floor((now - self.lag_s) / self.step_s) * self.step_s
        if self.done_until is not None and end <= self.done_until:
            return None
        first = end if self.done_until is None else self.done_until + self.step_s
        return max(first, end - (self.max_windows - 1) * self.step_s), float(end)

    def pull(self, platform: Platform, now: float | None = None) -> int:
        window = self.due(now)
        if window is None:
            return 0
        count = self.source.read(platform, start=window[0], end=window[1], step_s=self.step_s)
        self.done_until = window[1]
        return count
