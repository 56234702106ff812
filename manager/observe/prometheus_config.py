"""A Prometheus scrape configuration for this system's Triton servers and gateway.

Every target carries two labels the Prometheus reader (``manager.services.prometheus_source``)
relies on, whatever the job is renamed to:

    lastmile_component  "triton" or "gateway"
    lastmile_server     the name the direct scraper gives the same server (a Triton's HTTP
                        URL, the gateway's metrics URL), so both sources' figures line up

A metrics URL with another scheme or path than ``http``/``/metrics`` sets Prometheus'
``__scheme__`` / ``__metrics_path__`` target labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

from manager.errors import InvalidInput

JOBS = {"triton": "lastmile-triton", "gateway": "lastmile-gateway"}
COMPONENT_LABEL = "lastmile_component"
SERVER_LABEL = "lastmile_server"


@dataclass(frozen=True)
class Target:
    component: str  # triton | gateway
    server: str  # the direct scraper's name for it
    metrics_url: str  # the full URL Prometheus scrapes, e.g. http://127.0.0.1:8102/metrics
    replica: int | None = None


def prometheus_duration(seconds: float) -> str:
    """``5`` -> ``5s``, ``0.5`` -> ``500ms`` (Prometheus' duration syntax has no fractions)."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise InvalidInput(f"a scrape interval of {seconds!r} s is not positive")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _static_config(target: Target) -> dict[str, Any]:
    parsed = urlparse(target.metrics_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise InvalidInput(
            f"cannot scrape {target.component} at {target.metrics_url!r}",
            hint="metrics URLs are http(s)://HOST:PORT[/path]",
        )
    labels = {COMPONENT_LABEL: target.component, SERVER_LABEL: target.server}
    if target.replica is not None:
        labels["lastmile_replica"] = str(target.replica)
    if parsed.scheme != "http":
        labels["__scheme__"] = parsed.scheme
    if (parsed.path or "/metrics") != "/metrics":
        labels["__metrics_path__"] = parsed.path
    return {"targets": [parsed.netloc], "labels": labels}


def render(targets: Sequence[Target], *, scrape_interval_s: float, origin: str) -> str:
    """The configuration as YAML; ``origin`` says in a comment where the targets came from."""
    interval = prometheus_duration(scrape_interval_s)
    jobs = []
    for component, job in JOBS.items():
        mine = [t for t in targets if t.component == component]
        if mine:
            jobs.append({"job_name": job, "static_configs": [_static_config(t) for t in mine]})
    if not jobs:
        raise InvalidInput("no Triton server or gateway to scrape", hint="start: lastmile up")
    document = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs,
    }
    header = (
        "# Prometheus scrape configuration for Lastmile, made by `lastmile prometheus-config`\n"
        f"# from {origin}.\n"
        "# The lastmile_component and lastmile_server labels let Lastmile read the figures\n"
        "# back (LASTMILE_PROMETHEUS_URL); keep them when you merge this into your own file.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)
