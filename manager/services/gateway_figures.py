"""Live figures per route and variant, read from the gateway's Prometheus endpoint.

The gateway counts requests, errors and latencies per (route, variant) as cumulative
Prometheus series (rollout.gateway_metrics). A rollout window is the difference between two
readings (rollout.windows.window_delta copes with a gateway restart, whose counters start
again from zero); this module only reads and reshapes them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rollout import windows

REQUESTS = "lastmile_gateway_requests"
DURATION = "lastmile_gateway_request_duration_seconds"
INFLIGHT = "lastmile_gateway_inflight"
SHADOW = "lastmile_gateway_shadow_requests"


@dataclass
class VariantCounters:
    """Cumulative counters of one (route, variant): JSON-ready for a rollout's window."""

    requests: int = 0
    errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    # cumulative histogram buckets: [upper bound as text ("+Inf" last), count]
    buckets: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0
    inflight: int = 0
    shadow: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "codes": dict(self.codes),
            "buckets": [list(b) for b in self.buckets],
            "seconds": self.seconds,
            "shadow": dict(self.shadow),
        }

    def counters(self) -> windows.VariantCounters:
        """What rollout.windows needs of them."""
        return windows.VariantCounters(
            self.requests,
            self.errors,
            tuple((_bound(le), float(count)) for le, count in self.buckets),
        )


def from_json(raw: dict[str, Any] | None) -> windows.VariantCounters | None:
    """Counters stored as ``VariantCounters.to_dict()`` (a rollout's window start); None for
    none."""
    if not raw:
        return None
    buckets = tuple((_bound(str(le)), float(count)) for le, count in raw.get("buckets", []))
    return windows.VariantCounters(int(raw["requests"]), int(raw["errors"]), buckets)


def _bound(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


# Answers that do not count against a variant: the client itself got the request wrong
# before a model saw it (404 unknown, 413 too large, 415, 499 gone).
CLIENT_CODES = ("404", "413", "415", "499")


def is_error(code: str) -> bool:
    """What counts against a variant: anything but a 2xx answer, except CLIENT_CODES (the
    Prometheus reader's PromQL says the same: ``code!~"2..|404|..."``)."""
    return not code.startswith("2") and code not in CLIENT_CODES


def parse(text: str) -> dict[tuple[str, str], VariantCounters]:
    """(route, variant) -> counters, from the gateway's exposition text."""
    out: dict[tuple[str, str], VariantCounters] = defaultdict(VariantCounters)
    buckets: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("route", ""), labels.get("variant", ""))
            if not key[1]:
                continue  # refused before a variant was chosen
            if sample.name == REQUESTS + "_total":
                code = labels.get("code", "")
                counters = out[key]
                value = int(sample.value)
                counters.requests += value
                counters.codes[code] = counters.codes.get(code, 0) + value
                if is_error(code):
                    counters.errors += value
            elif sample.name == DURATION + "_bucket":
                buckets[key][labels["le"]] = int(sample.value)
            elif sample.name == DURATION + "_sum":
                out[key].seconds = float(sample.value)
            elif sample.name == INFLIGHT:
                out[key].inflight = int(sample.value)
            elif sample.name == SHADOW + "_total":
                outcome = labels.get("outcome", "")
                out[key].shadow[outcome] = out[key].shadow.get(outcome, 0) + int(sample.value)
    for key, by_bound in buckets.items():
        out[key].buckets = sorted(by_bound.items(), key=lambda kv: float(kv[0]))
    return dict(out)
