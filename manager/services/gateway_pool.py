"""Per-variant figures of several gateways as one: this system's own and the replicas it does
not run (``LASTMILE_GATEWAY_METRICS_URLS``), so that a canary gate judges every client's
traffic, not the share that happened to pass through one gateway.

Each gateway's counters are cumulative and start again from zero when it restarts, and a
gateway may be unreachable for a moment or go away (scaled in). The pool keeps, per gateway
and (route, variant), what it counted before its counters last went down, and the last
reading of one that does not answer, so that the sum only grows: a rollout window (the
difference of two sums) never counts a restart as traffic. In-flight requests are a gauge:
the sum of the gateways that answered.

Addresses: a list of metrics URLs, each one URL, a range (``gw-{0..9}.gw:8002``), or
``dns+http://NAME:PORT/PATH`` for every address the name resolves to now (the pods behind a
headless Service, as Prometheus' DNS service discovery reads them).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import httpx

from manager.errors import GatewayError
from manager.services.context import Platform
from manager.services.gateway_figures import VariantCounters, parse
from rollout.addresses import expand_list

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (route, variant)
Readings = dict[Key, VariantCounters]


def discover(spec: str | None) -> list[str]:
    """The metrics URLs ``spec`` names now (ranges expanded, ``dns+`` names resolved; a name
    that does not resolve names none). ValueError for a malformed entry."""
    urls: list[str] = []
    for one in expand_list(spec or ""):
        if one.startswith("dns+"):
            urls += _resolved(one.removeprefix("dns+"))
        else:
            _check(one)
            urls.append(one)
    return list(dict.fromkeys(urls))


def _check(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a gateway metrics URL must be http://HOST:PORT/PATH, got {url!r}")


def _resolved(url: str) -> list[str]:
    _check(url)
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        log.debug("%s does not resolve: %s", host, exc)
        return []
    out = []
    for *_rest, address in infos:
        ip = str(address[0])
        netloc = (f"[{ip}]" if ":" in ip else ip) + (f":{port}" if port else "")
        out.append(urlunsplit(parts._replace(netloc=netloc)))
    return sorted(set(out))


def add(into: Readings, more: Mapping[Key, VariantCounters], *, inflight: bool) -> None:
    """Add ``more``'s counters to ``into`` (in-flight requests too when ``inflight``)."""
    for key, c in more.items():
        total = into.setdefault(key, VariantCounters())
        total.requests += c.requests
        total.errors += c.errors
        total.seconds += c.seconds
        for code, n in c.codes.items():
            total.codes[code] = total.codes.get(code, 0) + n
        for outcome, n in c.shadow.items():
            total.shadow[outcome] = total.shadow.get(outcome, 0) + n
        buckets = dict(total.buckets)
        for le, n in c.buckets:
            buckets[le] = buckets.get(le, 0) + n
        total.buckets = sorted(buckets.items(), key=lambda kv: float(kv[0]))
        if inflight:
            total.inflight += c.inflight


class GatewayPool:
    """The sum of several gateways' figures, growing only (see the module's docstring)."""

    def __init__(self, remote: str | None = None, *, timeout_s: float = 2.0) -> None:
        discover(remote)  # a malformed list fails here, when the system starts
        self.remote = remote
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._last: dict[str, Readings] = {}  # per gateway URL: its last reading
        self._carried: dict[str, Readings] = {}  # per gateway URL: counted before a reset
        self._departed: Readings = {}  # gateways no longer listed: all they counted

    def urls(self, local: str | None) -> list[str]:
        return list(dict.fromkeys([*([local] if local else []), *discover(self.remote)]))

    def read(self, local: str | None, timeout_s: float | None = None) -> Readings:
        """Every gateway's counters, summed: GatewayError when none answers."""
        urls = self.urls(local)
        if not urls:
            raise GatewayError("no gateway is attached to this control plane")
        timeout = min(timeout_s or self.timeout_s, self.timeout_s)
        answers: dict[str, Readings] = {}
        failures: list[str] = []
        for url in urls:
            try:
                response = httpx.get(url, timeout=timeout)
                response.raise_for_status()
                answers[url] = parse(response.text)
            except httpx.HTTPError as exc:
                failures.append(f"{url}: {exc}")
        if not answers:
            raise GatewayError(f"the gateway's metrics could not be read: {failures[0]}")
        for failure in failures:
            log.debug("gateway not read (its last figures count): %s", failure)
        return self.combine(answers, listed=urls)

    def combine(self, answers: Mapping[str, Readings], *, listed: Iterable[str]) -> Readings:
        """Fold these readings (per gateway URL) into the running sums; the totals."""
        with self._lock:
            for url, now in answers.items():
                last = self._last.get(url, {})
                reset = {k: c for k, c in last.items() if k not in now or _went_down(c, now[k])}
                if reset:  # restarted (or the series went away): keep what it had counted
                    add(self._carried.setdefault(url, {}), reset, inflight=False)
                self._last[url] = dict(now)
            listed = set(listed)
            for url in [u for u in self._last if u not in listed]:  # scaled in, or moved
                add(self._departed, self._last.pop(url), inflight=False)
                add(self._departed, self._carried.pop(url, {}), inflight=False)
            total: Readings = {}
            add(total, self._departed, inflight=False)
            for url, readings in self._last.items():
                add(total, self._carried.get(url, {}), inflight=False)
                add(total, readings, inflight=url in answers)
            return total


def _went_down(before: VariantCounters, now: VariantCounters) -> bool:
    return now.requests < before.requests or now.seconds < before.seconds


_MAKING = threading.Lock()  # one pool per platform, made once


def pool_of(platform: Platform) -> GatewayPool:
    """The platform's pool (made on first use from LASTMILE_GATEWAY_METRICS_URLS)."""
    with _MAKING:
        if platform.gateway_pool is None:
            platform.gateway_pool = GatewayPool(platform.settings.gateway_metrics_urls)
        return platform.gateway_pool


def attached(platform: Platform) -> bool:
    """Whether any gateway's figures can be asked for."""
    return bool(platform.gateway_metrics_url or platform.settings.gateway_metrics_urls)


def read(platform: Platform, timeout_s: float = 5.0) -> Readings:
    """(route, variant) -> counters of every gateway, summed."""
    return pool_of(platform).read(platform.gateway_metrics_url, timeout_s)


def wait_drained(platform: Platform, *, route: str, variant: str, timeout_s: float) -> bool:
    """True once no gateway has a request in flight to (route, variant); False at timeout
    or when no gateway is attached (nothing to wait for)."""
    if not attached(platform):
        return False
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            counters = read(platform).get((route, variant))
        except GatewayError:
            return False
        if counters is None or counters.inflight <= 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
