"""Shadow routes over HTTP, in process: copies reach the mirror variant and the diff report,
and a mirror that errors, is slow or is over its queue never touches the client's answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from rollout.gateway import Gateway
from rollout.gateway_metrics import GatewayStats
from tests.unit.test_gateway_harness import (
    FakeTriton,
    Message,
    RawClient,
    Reply,
    http,
    infer_body,
    put_routes,
    route,
    running_gateway,
    samples,
    table,
    triton_like,
    variant,
)

ROUTE = "default/fraud"
PRIMARY, MIRROR, PERTURBED = "default.fraud.v1", "default.fraud.v2", "default.fraud.v3"


@dataclass
class Candidates:
    """A fake Triton whose mirror models misbehave on demand."""

    mode: str = "echo"  # echo | error | hangup | block
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    primary_status: int = 200

    async def handler(self, req: Message) -> Reply | None:
        if req.path == f"/v2/models/{PRIMARY}/infer" and self.primary_status != 200:
            return self.primary_status, {"Content-Type": "application/json"}, b'{"error":"x"}'
        if req.path == f"/v2/models/{MIRROR}/infer":
            self.arrived.put_nowait(req)
            if self.mode == "error":
                return 500, {"Content-Type": "application/json"}, b'{"error":"candidate broke"}'
            if self.mode == "hangup":
                return None
            if self.mode == "block":
                await self.release.wait()
        reply = await triton_like(req)
        if reply is not None and req.path == f"/v2/models/{PERTURBED}/infer":
            status, headers, body = reply
            answer = json.loads(body)
            for output in answer["outputs"]:
                output["data"] = [v + 0.5 for v in output["data"]]
            reply = status, headers, json.dumps(answer).encode()
        return reply


class ShadowEvents:
    """GatewayStats seen by the mirrors, which also queue each outcome for the test."""

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats
        self.outcomes: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    def shadow(self, route: str, variant: str, outcome: str, seconds: float | None) -> None:
        self.stats.shadow(route, variant, outcome, seconds)
        self.outcomes.put_nowait((route, variant, outcome))

    async def next(self, timeout: float = 5.0) -> tuple[str, str, str]:
        return await asyncio.wait_for(self.outcomes.get(), timeout)


def shadow_table(
    fake: FakeTriton, *mirrors: str, timeout_s: float = 5.0, max_queue: int = 16
) -> bytes:
    variants = [
        variant("fraud", v, [{"url": fake.url, "model": model}], weight=100 if v == 1 else 0)
        for v, model in ((1, PRIMARY), (2, MIRROR), (3, PERTURBED))
    ]
    shadow = {
        "mirrors": [{"variant": m} for m in mirrors],
        "timeout_s": timeout_s,
        "max_queue": max_queue,
        "tolerance": 1e-6,
    }
    return table(1, route("fraud", variants, strategy="shadow", shadow=shadow))


@contextlib.asynccontextmanager
async def system(
    candidates: Candidates, *mirrors: str, **shadow: Any
) -> AsyncIterator[tuple[Gateway, ShadowEvents, RawClient]]:
    fake = await FakeTriton(candidates.handler).start()
    try:
        async with running_gateway() as gw:
            resp = await put_routes(gw, shadow_table(fake, *mirrors, **shadow))
            assert resp.status == 200, resp.body
            events = ShadowEvents(gw.stats)
            gw.mirrors.stats = events  # type: ignore[assignment]
            client = await RawClient.connect(gw.ports["http"])
            try:
                yield gw, events, client
            finally:
                await client.close()
                candidates.release.set()
    finally:
        await fake.stop()


async def infer(client: RawClient, body: bytes | None = None, **headers: str) -> Message:
    resp = await client.request("POST", "/v2/models/fraud/infer", body or infer_body(), headers)
    assert resp.status == 200, resp.body
    assert resp.headers["lastmile-variant"] == "fraud/1"
    answer = resp.json()
    assert (answer["model_version"], answer["parameters"]) == ("1", {"lastmile_variant": "fraud/1"})
    return resp


def test_mirrored_pairs_reach_the_diff_report_and_the_client_sees_only_the_primary() -> None:
    async def main() -> None:
        candidates = Candidates()
        async with system(candidates, "fraud/2", "fraud/3") as (gw, events, client):
            body = infer_body([0.5, 1.5, 2.5, 3.5])
            for i in range(4):
                await infer(client, body, **{"X-Request-Id": f"r{i}"})
            outcomes = [await events.next() for _ in range(8)]
            assert sorted(outcomes) == sorted(
                [(ROUTE, "fraud/2", "ok")] * 4 + [(ROUTE, "fraud/3", "ok")] * 4
            )
            copy = await candidates.arrived.get()
            assert copy.body == body and copy.headers["x-request-id"] == "r0"
            assert await asyncio.to_thread(gw.shadow_diff.drain, 10)
            report = gw.shadow_diff.reports()[ROUTE]
            assert report["fraud/2"]["pairs"] == 4
            assert report["fraud/2"]["outputs"]["y"]["agreement"] == 1.0
            assert report["fraud/3"]["outputs"]["y"]["agreement"] == 0.0
            assert report["fraud/3"]["outputs"]["y"]["max_abs_diff"] == 0.5

            admin = gw.ports["admin"]
            got = await http(admin, "GET", "/shadow")
            assert got.status == 200 and got.json() == {"routes": gw.shadow_diff.reports()}
            reset = await http(admin, "DELETE", "/shadow?route=default%2Ffraud")
            assert reset.status == 200 and reset.json() == {"reset": ROUTE}
            assert (await http(admin, "GET", "/shadow")).json() == {"routes": {}}
            assert (await http(admin, "POST", "/shadow")).status == 405

            text = (await http(gw.ports["metrics"], "GET", "/metrics")).body.decode()
            got_metrics = samples(text)
            mirror = (("route", ROUTE), ("variant", "fraud/2"))
            ok = (("outcome", "ok"), *mirror)
            assert got_metrics[("lastmile_gateway_shadow_requests_total", ok)] == 4
            assert got_metrics[("lastmile_gateway_shadow_duration_seconds_count", mirror)] == 4
            # the copies are not client requests
            primary = (
                ("code", "200"),
                ("protocol", "http"),
                ("route", ROUTE),
                ("variant", "fraud/1"),
            )
            assert got_metrics[("lastmile_gateway_requests_total", primary)] == 4
            requests = [k for k in got_metrics if k[0] == "lastmile_gateway_requests_total"]
            assert requests == [("lastmile_gateway_requests_total", primary)]

    uvloop.run(main())


@pytest.mark.parametrize("count", [4, 48 * 1024])  # 16 B, and 192 KiB over many reads
def test_binary_tensor_pairs_are_compared_too(count: int) -> None:
    async def main() -> None:
        async with system(Candidates(), "fraud/2") as (gw, events, client):
            header = {"inputs": [{"name": "x", "shape": [1, count], "datatype": "FP32",
                                  "parameters": {"binary_data_size": 4 * count}}]}  # fmt: skip
            text = json.dumps(header).encode()
            raw = b"\x00\x00\x80\x3f" * count  # 1.0f each
            resp = await client.request(
                "POST",
                "/v2/models/fraud/infer",
                text + raw,
                {"Inference-Header-Content-Length": str(len(text))},
            )
            assert resp.status == 200 and resp.headers["lastmile-variant"] == "fraud/1"
            assert await events.next() == (ROUTE, "fraud/2", "ok")
            assert await asyncio.to_thread(gw.shadow_diff.drain, 10)
            report = gw.shadow_diff.reports()[ROUTE]["fraud/2"]
            assert report["pairs"] == 1 and report["decode_errors"] == 0
            assert report["outputs"]["y"]["agreement"] == 1.0

    uvloop.run(main())


def test_a_mirror_that_errors_or_hangs_up_never_reaches_the_client() -> None:
    async def main() -> None:
        candidates = Candidates(mode="error")
        async with system(candidates, "fraud/2") as (gw, events, client):
            for mode in ("error", "hangup"):
                candidates.mode = mode
                for _ in range(3):
                    await infer(client)
                    assert await events.next() == (ROUTE, "fraud/2", "error")
            # a failed primary is not compared either
            candidates.mode = "echo"
            candidates.primary_status = 500
            resp = await client.request("POST", "/v2/models/fraud/infer", infer_body())
            assert resp.status == 500 and resp.headers["lastmile-variant"] == "fraud/1"
            assert await events.next() == (ROUTE, "fraud/2", "ok")
            assert await asyncio.to_thread(gw.shadow_diff.drain, 10)
            assert gw.shadow_diff.reports() == {}
            assert gw.stats.shadow_requests[(ROUTE, "fraud/2", "error")] == 6
            assert gw.stats.requests[(ROUTE, "fraud/1", "http", 200)] == 6
            assert not any(key[1] == "fraud/2" for key in gw.stats.requests)

    uvloop.run(main())


def test_a_slow_mirror_times_out_without_delaying_the_client() -> None:
    async def main() -> None:
        candidates = Candidates(mode="block")
        async with system(candidates, "fraud/2", timeout_s=0.3) as (gw, events, client):
            await infer(client)
            # answered while the copy is still held by the candidate
            await asyncio.wait_for(candidates.arrived.get(), 5)
            assert not candidates.release.is_set()
            assert gw.mirrors.inflight == {ROUTE: 1}
            assert await events.next() == (ROUTE, "fraud/2", "timeout")
            assert gw.mirrors.inflight == {}
            timing = gw.stats.shadow_timings[(ROUTE, "fraud/2")]
            assert timing.count == 1  # a timed-out copy is in the mirror latency histogram
            await infer(client)  # a copy in flight while the gateway stops: no hang
            await asyncio.wait_for(candidates.arrived.get(), 5)

    uvloop.run(main())


def test_copies_past_the_routes_queue_are_dropped_and_counted() -> None:
    async def main() -> None:
        candidates = Candidates(mode="block")
        async with system(candidates, "fraud/2", max_queue=2) as (gw, events, client):
            for _ in range(2):
                await infer(client)
                await asyncio.wait_for(candidates.arrived.get(), 5)
            for _ in range(3):
                await infer(client)  # answered at once, its copy dropped
                assert await events.next() == (ROUTE, "fraud/2", "dropped")
            assert gw.mirrors.inflight == {ROUTE: 2}
            candidates.release.set()
            assert [await events.next() for _ in range(2)] == [(ROUTE, "fraud/2", "ok")] * 2
            assert gw.mirrors.inflight == {}
            await infer(client)  # room again
            assert await events.next() == (ROUTE, "fraud/2", "ok")
            assert gw.stats.shadow_requests[(ROUTE, "fraud/2", "dropped")] == 3
            assert gw.stats.shadow_timings[(ROUTE, "fraud/2")].count == 3  # dropped: no latency

    uvloop.run(main())


def test_the_shadow_diff_rate_is_a_gateway_setting(capsys: Any) -> None:
    import pytest

    from rollout.gateway import parse_args
    from rollout.shadow_diff import DEFAULT_MAX_RATE

    assert parse_args([]).shadow_diff_rate == DEFAULT_MAX_RATE
    assert parse_args(["--shadow-diff-rate", "2.5"]).shadow_diff_rate == 2.5
    with pytest.raises(SystemExit):
        parse_args(["--shadow-diff-rate", "0"])
    assert "--shadow-diff-rate must be > 0" in capsys.readouterr().err
