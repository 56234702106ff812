"""Gateway side doors and lifecycle: admin API, routes file, readiness, metrics, shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import uvloop

from rollout.gateway import Gateway, GatewayConfig, serve
from rollout.public_config import EXTENSIONS
from tests.unit.test_gateway_harness import (
    FakeTriton,
    Message,
    RawClient,
    Reply,
    build_request,
    http,
    infer_body,
    put_routes,
    route,
    routes,
    running_gateway,
    samples,
    table,
    triton_like,
    variant,
    wait_ready,
)


def test_live_is_local_and_ready_needs_a_table_and_ready_upstreams() -> None:
    async def main() -> None:
        fake = await FakeTriton().start()
        async with running_gateway() as gw:
            port = gw.ports["http"]
            assert (await http(port, "GET", "/v2/health/live")).status == 200
            assert (await http(port, "GET", "/v2/health/ready")).status == 503
            meta = (await http(port, "GET", "/v2")).json()
            assert meta["name"] == "lastmile-gateway"
            assert meta["extensions"] == list(EXTENSIONS)
            await put_routes(gw, routes(d=[{"url": fake.url, "model": "m"}]))
            await wait_ready(gw)
            assert (await http(port, "GET", "/v2/health/ready")).status == 200
            await fake.stop()
            async with asyncio.timeout(5):
                while (await http(port, "GET", "/v2/health/ready")).status != 503:
                    await asyncio.sleep(0.1)
            assert (await http(port, "GET", "/v2/health/live")).status == 200

    uvloop.run(main())


def test_put_routes_switches_traffic_and_rejects_bad_or_stale_tables() -> None:
    async def main() -> None:
        blue, green = await FakeTriton().start(), await FakeTriton().start()
        async with running_gateway() as gw:
            admin = gw.ports["admin"]
            empty = await http(admin, "GET", "/routes")
            assert empty.status == 200 and empty.json() == {"generation": None, "routes": {}}
            first = routes(1, d=[{"url": blue.url, "model": "ws.d.v1"}])
            resp = await put_routes(gw, first)
            assert resp.status == 200
            assert resp.json() == {"generation": 1, "routes": ["default/d"]}
            client = await RawClient.connect(gw.ports["http"])
            assert (await client.request("POST", "/v2/models/d/infer", infer_body())).status == 200
            assert blue.requests[-1].path == "/v2/models/ws.d.v1/infer"

            bad = table(2, route("d", [variant("d", 2, [{"url": green.url, "model": "m"}], 0)]))
            resp = await put_routes(gw, bad)
            assert resp.status == 400
            assert resp.json()["error"] == (
                "route 'default/d': at least one variant needs a weight > 0"
            )
            stale = await put_routes(gw, routes(0, d=[{"url": green.url, "model": "ws.d.v2"}]))
            assert stale.status == 409
            assert (await http(admin, "GET", "/routes")).json()["generation"] == 1

            await put_routes(gw, routes(2, d=[{"url": green.url, "model": "ws.d.v2"}]))
            # the same keep-alive client connection now lands on green
            assert (await client.request("POST", "/v2/models/d/infer", infer_body())).status == 200
            assert green.requests[-1].path == "/v2/models/ws.d.v2/infer"
            got = (await http(admin, "GET", "/routes")).json()
            assert got["generation"] == 2
            assert got["routes"]["default/d"]["variants"][0]["targets"][0]["model"] == "ws.d.v2"
            await client.close()
            assert (await http(admin, "GET", "/nope")).status == 404
            assert (await http(admin, "DELETE", "/routes")).status == 405
        await blue.stop()
        await green.stop()

    uvloop.run(main())


def test_routes_file_is_loaded_at_start_and_rewritten_on_each_put(tmp_path: Path) -> None:
    path = tmp_path / "state" / "routes.json"

    async def main() -> None:
        fake = await FakeTriton().start()
        async with running_gateway(routes_file=path) as gw:
            assert gw.table is None
            d = route("d", [variant("d", 1, [{"url": fake.url, "model": "m"}], weight=2)])
            await put_routes(gw, table(5, d))
        saved = json.loads(path.read_text())
        assert saved["generation"] == 5
        assert saved["routes"]["default/d"]["variants"][0]["weight"] == 2.0
        assert [p.name for p in path.parent.iterdir()] == ["routes.json"]  # no temp left over
        async with running_gateway(routes_file=path) as gw:
            assert gw.table is not None and gw.table.generation == 5
            resp = await http(gw.ports["http"], "POST", "/v2/models/d/infer", infer_body())
            assert resp.status == 200
        await fake.stop()

    uvloop.run(main())


def test_an_invalid_routes_file_is_ignored_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.json"
    path.write_text('{"generation": 1, "routes": {"default/BAD": {"variants": []}}}')

    async def main() -> None:
        async with running_gateway(routes_file=path) as gw:
            assert gw.table is None  # started all the same; the control plane pushes a table
            assert (await http(gw.ports["admin"], "GET", "/routes")).json()["generation"] is None

    uvloop.run(main())
    assert f"ignoring routes file {path}: route 'default/BAD'" in caplog.text


def test_metrics_count_requests_by_route_variant_protocol_and_code() -> None:
    async def main() -> None:
        fake = await FakeTriton().start()
        async with running_gateway() as gw:
            target = {"url": fake.url, "model": "ws.d.v1", "version": "1"}
            await put_routes(gw, table(4, route("d", [variant("d", 3, [target])], "ws")))
            await wait_ready(gw)
            client = await RawClient.connect(gw.ports["http"])
            for _ in range(3):
                headers = {"lastmile-workspace": "ws"}
                await client.request("POST", "/v2/models/d/infer", infer_body(), headers)
            await client.request("POST", "/v2/models/unknown/infer", infer_body())
            await client.close()
            text = (await http(gw.ports["metrics"], "GET", "/metrics")).body.decode()
            assert (await http(gw.ports["metrics"], "GET", "/other")).status == 404
        await fake.stop()
        got = samples(text)
        series = (("route", "ws/d"), ("variant", "d/3"))
        ok = (("code", "200"), ("protocol", "http"), *series)
        assert got[("lastmile_gateway_requests_total", ok)] == 3
        unknown = (("code", "404"), ("protocol", "http"), ("route", "_unknown"), ("variant", ""))
        assert got[("lastmile_gateway_requests_total", unknown)] == 1
        assert got[("lastmile_gateway_request_duration_seconds_count", series)] == 3
        inf = (("le", "+Inf"), *series)
        assert got[("lastmile_gateway_request_duration_seconds_bucket", inf)] == 3
        assert got[("lastmile_gateway_inflight", series)] == 0
        assert got[("lastmile_gateway_routing_generation", ())] == 4
        upstream = (("upstream", f"127.0.0.1:{fake.port}"),)
        assert got[("lastmile_gateway_upstream_up", upstream)] == 1

    uvloop.run(main())


def test_shutdown_finishes_in_flight_requests_then_stops_listening() -> None:
    async def slow(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            await asyncio.sleep(0.5)
        return await triton_like(req)

    async def main() -> None:
        fake = await FakeTriton(slow).start()
        stop = asyncio.Event()
        started: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
        config = GatewayConfig(http_port=0, metrics_port=0, admin_port=0)
        task = asyncio.create_task(
            serve(config, stop=stop, started=started, install_signal_handlers=False)
        )
        gw = await started
        port = gw.ports["http"]
        await put_routes(gw, routes(d=[{"url": fake.url, "model": "m"}]))
        idle = await RawClient.connect(port)
        busy = await RawClient.connect(port)
        busy.send(build_request("POST", "/v2/models/d/infer", infer_body()))
        await asyncio.sleep(0.1)
        stop.set()
        resp = await busy.response()
        assert resp.status == 200 and not resp.keep_alive
        assert await idle.closed_by_peer()
        await asyncio.wait_for(task, 5)
        with pytest.raises(OSError):
            await RawClient.connect(port)
        await fake.stop()

    uvloop.run(main())
