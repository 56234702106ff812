"""The gateway's event-loop lag (lastmile_gateway_event_loop_lag_seconds): a timer due every
10 ms, and how late the loop ran it. Work that holds the loop (a burst of answers, a CPU
shortage) is what every request arriving meanwhile waits for; here the loop is held on
purpose for 80 ms, so the timer due meanwhile runs at least 70 ms late."""

from __future__ import annotations

import asyncio
import time

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_gateway_harness import http, running_gateway

LAG = "lastmile_gateway_event_loop_lag_seconds"


async def _late(port: int, over_s: float) -> tuple[int, int]:
    """(observations, those later than ``over_s``) from the gateway's /metrics."""
    text = (await http(port, "GET", "/metrics")).body.decode()
    buckets = {
        float(s.labels["le"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == LAG
        for s in family.samples
        if s.name == f"{LAG}_bucket"
    }
    total = int(buckets[float("inf")])
    return total, total - int(buckets[over_s])


def test_a_held_event_loop_shows_in_the_lag_histogram() -> None:
    async def main() -> None:
        async with running_gateway() as gw:
            port = gw.ports["metrics"]
            async with asyncio.timeout(10):  # the probe has run, unhindered
                while (await _late(port, 0.025))[0] < 5:
                    await asyncio.sleep(0.01)
            total, before = await _late(port, 0.025)
            time.sleep(0.08)  # holds the gateway's loop, as a burst of work would
            async with asyncio.timeout(10):  # the next probe reports it
                while (await _late(port, 0.025))[1] == before:
                    await asyncio.sleep(0.01)
            after, late = await _late(port, 0.025)
            assert late > before and after > total
            # ... as one late observation over 50 ms, not as a shift of the others
            assert (await _late(port, 0.05))[1] >= 1

    uvloop.run(main())
