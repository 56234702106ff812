"""The gateway's data path, in process, against a Triton-like upstream on loopback."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from rollout.proxy import ClientConnection
from rollout.upstream import UpstreamConnection
from tests.unit.test_gateway_harness import (
    FakeTriton,
    Message,
    RawClient,
    Reply,
    build_request,
    infer_body,
    put_routes,
    route,
    running_gateway,
    table,
    triton_like,
    variant,
)

CHUNKED = {"Transfer-Encoding": "chunked"}
ROUTE, V1 = "default/diamond", "diamond/1"
Scenario = Callable[[Any, FakeTriton], Awaitable[None]]


def run(scenario: Scenario, handler: Any = triton_like, version: str = "", **config: Any) -> None:
    """Start a fake Triton and a gateway routing pipeline 'diamond' (its version 1 served by
    model default.diamond.v1, pinned to Triton version `version` if set), then run it."""

    async def main() -> None:
        fake = await FakeTriton(handler).start()
        try:
            async with running_gateway(**config) as gw:
                target = {"url": fake.url, "model": "default.diamond.v1", "version": version}
                diamond = route("diamond", [variant("diamond", 1, [target])])
                assert (await put_routes(gw, table(1, diamond))).status == 200
                await scenario(gw, fake)
        finally:
            await fake.stop()

    uvloop.run(main())


def test_infer_is_forwarded_to_the_target_model_and_answers_with_the_public_name() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        body = infer_body()
        resp = await client.request("POST", "/v2/models/diamond/infer", body)
        assert resp.status == 200
        answer = resp.json()
        assert (answer["model_name"], answer["model_version"]) == ("diamond", "1")
        assert answer["parameters"] == {"lastmile_variant": V1}
        assert resp.headers["lastmile-variant"] == V1
        assert int(resp.headers["content-length"]) == len(resp.body)
        assert fake.calls[-1].path == "/v2/models/default.diamond.v1/infer"
        assert fake.calls[-1].body == body
        # the pipeline version picks the variant; Triton's versions of the model stay internal
        resp = await client.request("POST", "/v2/models/diamond/versions/1/infer", body)
        assert resp.status == 200 and resp.json()["model_version"] == "1"
        assert fake.calls[-1].path == "/v2/models/default.diamond.v1/infer"
        resp = await client.request("POST", "/v2/models/diamond/versions/3/infer", body)
        assert resp.status == 404
        assert resp.json() == {"error": "model 'diamond' has no version 3 being served"}
        assert "lastmile-variant" not in resp.headers
        assert len([r for r in fake.requests if r.path.endswith("/infer")]) == 2
        await client.close()

    run(scenario)


def test_a_pinned_target_version_is_what_triton_is_asked_for() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        for path in ("/v2/models/diamond/infer", "/v2/models/diamond/versions/1/infer"):
            resp = await client.request("POST", path, infer_body())
            assert resp.status == 200 and resp.json()["model_version"] == "1"
            assert fake.calls[-1].path == "/v2/models/default.diamond.v1/versions/2/infer"
        await client.close()

    run(scenario, version="2")


def test_only_headers_triton_needs_are_forwarded() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "identity",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "Authorization": "Bearer secret",
            "Cookie": "a=b",
            "Accept-Encoding": "gzip",
            "X-Forwarded-For": "10.0.0.1",
        }
        assert await client.request("POST", "/v2/models/diamond/infer", infer_body(), headers)
        seen = fake.calls[-1].headers
        assert seen["content-type"] == "application/json"
        assert seen["content-encoding"] == "identity"
        assert seen["traceparent"] == headers["traceparent"]
        assert seen["host"] == f"127.0.0.1:{fake.port}"
        assert seen["content-length"] == str(len(infer_body()))
        for dropped in ("authorization", "cookie", "accept-encoding", "x-forwarded-for"):
            assert dropped not in seen
        await client.close()

    run(scenario)


def test_binary_tensor_response_keeps_its_lengths_consistent() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        header = json.dumps({"inputs": [{"name": "x", "parameters": {"binary_data_size": 16}}]})
        raw = bytes(range(16))
        resp = await RawClient.connect(gw.ports["http"])
        reply = await resp.request(
            "POST", "/v2/models/diamond/infer", header.encode() + raw,
            {"Inference-Header-Content-Length": str(len(header)),
             "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert fake.calls[-1].headers["inference-header-content-length"] == str(len(header))
        assert fake.calls[-1].body == header.encode() + raw
        json_len = int(reply.headers["inference-header-content-length"])
        answer = json.loads(reply.body[:json_len])
        assert (answer["model_name"], answer["model_version"]) == ("diamond", "1")
        assert answer["parameters"] == {"lastmile_variant": V1}
        assert answer["outputs"][0]["parameters"] == {"binary_data_size": 16}
        assert reply.body[json_len:] == raw
        assert int(reply.headers["content-length"]) == len(reply.body)
        assert reply.headers["lastmile-variant"] == V1
        await resp.close()

    run(scenario)


def test_chunked_request_body_is_reframed_with_content_length() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        body = infer_body()
        chunked = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10])
            for i in range(0, len(body), 10)
        )
        client = await RawClient.connect(gw.ports["http"])
        client.send(build_request("POST", "/v2/models/diamond/infer", headers=CHUNKED))
        client.send(chunked + b"0\r\n\r\n")
        assert (await client.response()).status == 200
        seen = fake.calls[-1]
        assert seen.body == body
        assert seen.headers["content-length"] == str(len(body))
        assert "transfer-encoding" not in seen.headers
        await client.close()

    run(scenario)


def test_pipelined_requests_are_answered_in_order_on_one_upstream_connection() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        variants = [
            variant("diamond", v, [{"url": fake.url, "model": f"default.diamond.v{v}"}], w)
            for v, w in ((1, 100), (2, 0), (3, 0))
        ]
        assert (await put_routes(gw, table(2, route("diamond", variants)))).status == 200
        client = await RawClient.connect(gw.ports["http"])
        client.send(
            build_request("POST", "/v2/models/diamond/versions/1/infer", infer_body())
            + build_request("GET", "/v2/health/live")
            + build_request("POST", "/v2/models/diamond/versions/2/infer", infer_body())
            + build_request("GET", "/v2/models/nope")
            + build_request("POST", "/v2/models/diamond/versions/3/infer", infer_body())
        )
        got = [await client.response() for _ in range(5)]
        assert [r.status for r in got] == [200, 200, 200, 404, 200]
        assert [got[i].json()["model_version"] for i in (0, 2, 4)] == ["1", "2", "3"]
        assert [got[i].headers["lastmile-variant"] for i in (0, 2, 4)] == [
            "diamond/1", "diamond/2", "diamond/3",
        ]  # fmt: skip
        assert [r.path for r in fake.requests if r.path.endswith("/infer")] == [
            f"/v2/models/default.diamond.v{v}/infer" for v in (1, 2, 3)
        ]
        for _ in range(10):
            assert await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert len({r.connection for r in fake.requests if r.path.endswith("/infer")}) == 1
        await client.close()

    run(scenario)


def test_triton_errors_keep_their_status_but_hide_internal_names() -> None:
    async def handler(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            body = {"error": "in ensemble 'default.diamond.v1', unexpected input 'z'"}
            return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
        if req.path.endswith("/ready"):
            return 500, {"Content-Type": "text/html"}, b"<html>default.diamond.v1 crashed</html>"
        return await triton_like(req)

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert resp.status == 400
        assert resp.json() == {"error": "in ensemble 'diamond', unexpected input 'z'"}
        assert resp.headers["lastmile-variant"] == V1  # errors say which variant failed too
        resp = await client.request("GET", "/v2/models/diamond/ready")
        assert resp.status == 500
        assert resp.headers["lastmile-variant"] == V1
        assert resp.headers["content-type"] == "application/json"
        assert "default.diamond" not in resp.json()["error"]
        assert "diamond" in resp.json()["error"]
        await client.close()

    run(scenario, handler=handler)


def test_metadata_and_readiness_use_the_public_name() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        meta = await client.request("GET", "/v2/models/diamond")
        assert meta.status == 200
        assert (meta.json()["name"], meta.json()["versions"]) == ("diamond", ["1"])
        assert meta.headers["lastmile-variant"] == V1
        assert fake.calls[-1].path == "/v2/models/default.diamond.v1"
        ready = await client.request("GET", "/v2/models/diamond/versions/1/ready")
        assert ready.status == 200 and ready.headers["lastmile-variant"] == V1
        assert fake.calls[-1].path == "/v2/models/default.diamond.v1/ready"
        assert (await client.request("GET", "/v2/models/diamond/versions/2/ready")).status == 404
        await client.close()

    run(scenario)


def test_unknown_model_and_triton_admin_endpoints_are_never_proxied() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", "/v2/models/x/infer", infer_body())
        assert resp.status == 404
        assert resp.json() == {"error": "unknown model 'x'"}  # nothing about other pipelines
        forbidden = [
            ("POST", "/v2/repository/index"),
            ("POST", "/v2/repository/models/diamond/load"),
            ("POST", "/v2/repository/models/default.diamond.v1/unload"),
            ("GET", "/v2/systemsharedmemory/status"),
            ("POST", "/v2/cudasharedmemory/region/r/register"),
            ("GET", "/v2/logging"),
            ("GET", "/v2/trace/setting"),
            ("GET", "/v2/models/stats"),
            ("GET", "/v2/models/diamond/stats"),
            ("POST", "/v2/models/diamond/generate"),
            ("GET", "/v2/models/default.diamond.v1"),
            ("GET", "/v2/models/diamond/../../repository/index"),
            ("GET", "/metrics"),
            ("GET", "/"),
        ]
        for method, path in forbidden:
            resp = await client.request(method, path, b"{}" if method == "POST" else b"")
            assert resp.status == 404, (method, path)
            assert "error" in resp.json()
        assert [r for r in fake.requests if r.path != "/v2/health/ready"] == []
        wrong = await client.request("GET", "/v2/models/diamond/infer")
        assert (wrong.status, wrong.headers["allow"]) == (405, "POST")
        wrong = await client.request("POST", "/v2/models/diamond", b"{}")
        assert (wrong.status, wrong.headers["allow"]) == (405, "GET, HEAD")
        assert wrong.json() == {"error": "method not allowed: use GET or HEAD"}
        resp = await client.request("GET", "/v2/models/diamond/versions/01")
        assert resp.status == 400
        await client.close()

    run(scenario)


def test_request_limits_answer_413_and_431_then_close() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        client.send(b"POST /v2/models/diamond/infer HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        resp = await client.response()
        assert resp.status == 413 and not resp.keep_alive
        assert await client.closed_by_peer()
        client = await RawClient.connect(gw.ports["http"])
        client.send(build_request("POST", "/v2/models/diamond/infer", headers=CHUNKED))
        client.send(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        assert (await client.response()).status == 413
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("GET", "/v2/health/live", headers={"X-Big": "y" * 3000})
        assert resp.status == 431
        client = await RawClient.connect(gw.ports["http"])
        client.send(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await client.response()).status == 400
        assert [r for r in fake.requests if r.path != "/v2/health/ready"] == []

    run(scenario, max_body_bytes=1024, max_header_bytes=2048)


def test_expect_100_continue_is_honoured() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports["http"])
        body = infer_body()
        writer.write(
            build_request("POST", "/v2/models/diamond/infer",
                          headers={"Content-Length": str(len(body)), "Expect": "100-continue"})
        )  # fmt: skip
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        client = RawClient(reader, writer)
        assert (await client.response()).status == 200
        await client.close()

    run(scenario)


def test_a_pooled_connection_closed_by_triton_is_retried_once_on_a_fresh_one() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        assert (
            await client.request("POST", "/v2/models/diamond/infer", infer_body())
        ).status == 200
        await fake.drop_connections()  # Triton restarted or timed the idle connection out
        resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert resp.status == 200
        assert len({r.connection for r in fake.requests if r.path.endswith("/infer")}) == 2
        await client.close()

    run(scenario)


def test_upstream_that_hangs_up_mid_request_gives_503_not_a_retry_loop() -> None:
    async def hang_up(req: Message) -> Reply | None:
        return None if req.path.endswith("/infer") else await triton_like(req)

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert resp.status == 503
        assert resp.json() == {
            "error": "the server for 'diamond' closed the connection before answering; the "
            "request was not retried, as a model may have run it"
        }
        assert len([r for r in fake.requests if r.path.endswith("/infer")]) == 1
        await client.close()

    run(scenario, handler=hang_up)


def test_upstream_down_gives_503_and_counts_it() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        port = fake.port
        await fake.stop()
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert resp.status == 503
        assert resp.json() == {"error": "no upstream available for 'diamond'"}
        assert resp.keep_alive  # the client connection survives an upstream failure
        assert resp.headers["lastmile-variant"] == V1
        await fake.start(port)
        assert (
            await client.request("POST", "/v2/models/diamond/infer", infer_body())
        ).status == 200
        assert gw.stats.requests[(ROUTE, V1, "http", 503)] == 1
        assert gw.stats.requests[(ROUTE, V1, "http", 200)] == 1
        assert gw.stats.inflight[(ROUTE, V1)] == 0
        await client.close()

    run(scenario)


def test_slow_upstream_times_out_with_504() -> None:
    async def slow(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            await asyncio.sleep(3)
        return await triton_like(req)

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert resp.status == 504
        assert resp.json() == {"error": "upstream timed out for 'diamond'"}
        assert resp.headers["lastmile-variant"] == V1
        await client.close()

    run(scenario, handler=slow, upstream_timeout=0.6)


def test_idle_clients_are_disconnected() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        assert (await client.request("GET", "/v2/health/live")).status == 200
        assert await client.closed_by_peer(timeout=3)
        slow = await RawClient.connect(gw.ports["http"])
        slow.send(b"POST /v2/models/diamond/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        resp = await slow.response(timeout=4)
        assert resp.status == 408

    run(scenario, idle_timeout=0.6, request_timeout=1.2)


def test_large_responses_stream_through_intact() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        header = b'{"inputs":[]}'
        raw = bytes(range(256)) * (32 * 1024)  # 8 MiB
        client = await RawClient.connect(gw.ports["http"])
        reply = await client.request(
            "POST", "/v2/models/diamond/infer", header + raw,
            {"Inference-Header-Content-Length": str(len(header))},
        )  # fmt: skip
        json_len = int(reply.headers["inference-header-content-length"])
        assert reply.status == 200 and reply.body[json_len:] == raw
        assert json.loads(reply.body[:json_len])["parameters"] == {"lastmile_variant": V1}
        assert int(reply.headers["content-length"]) == len(reply.body)
        await client.close()

    run(scenario)


def test_requests_queue_for_a_capped_upstream_pool_instead_of_failing() -> None:
    async def slowish(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            await asyncio.sleep(0.02)
        return await triton_like(req)

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        async def one_client() -> list[int]:
            client = await RawClient.connect(gw.ports["http"])
            body = infer_body()
            codes = [
                (await client.request("POST", "/v2/models/diamond/infer", body)).status
                for _ in range(5)
            ]
            await client.close()
            return codes

        results = await asyncio.gather(*(one_client() for _ in range(12)))
        assert all(code == 200 for codes in results for code in codes)
        infer_connections = {r.connection for r in fake.requests if r.path.endswith("/infer")}
        assert len(infer_connections) <= 3
        assert len([r for r in fake.requests if r.path.endswith("/infer")]) == 60

    run(scenario, handler=slowish, max_upstream_connections=3)


def test_triton_errors_use_the_public_name_and_a_batch_limit_names_its_setting() -> None:
    from rollout.exchange import public_error

    body = b'{"error":"inference request batch-size must be <= 16 for \'default.p.v1\'"}'
    message = public_error(body, internal="default.p.v1", public="p", status=400)
    assert "'p'" in message and "default.p.v1" not in message
    assert "--max-batch-size" in message
    other = public_error(b'{"error":"boom in default.p.v1"}', internal="default.p.v1",
                         public="p", status=500)  # fmt: skip
    assert other == "boom in p"
    assert "upstream status 502" in public_error(b"<html>", internal="a", public="p", status=502)


def test_closed_connections_are_freed_without_the_cyclic_collector() -> None:
    """A connection's parser holds the connection's callbacks and the connection holds its
    parser; a closed connection lets its parser go, so that neither a client connection nor
    an upstream one that Triton closed waits for the cyclic collector (whose collections grow
    with what is left for them). Nor does the idle sweep, suspended between its passes, keep
    the last connection it looked at."""

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
        assert resp.status == 200
        await client.close()
        gc.collect()
        kinds = (ClientConnection, UpstreamConnection)
        # connections alive already (earlier tests in this process, this one's first client):
        # held here, so that what is counted below is what this scenario made
        earlier = [o for o in gc.get_objects() if type(o) in kinds]
        gc.disable()
        try:
            for i in range(10):
                client = await RawClient.connect(gw.ports["http"])
                for _ in range(3):
                    resp = await client.request("POST", "/v2/models/diamond/infer", infer_body())
                    assert resp.status == 200
                if i == 9:  # the idle sweep looks at this open connection before it closes
                    swept = gw.now
                    await _until(lambda: gw.now != swept)  # noqa: B023
                await client.close()
                await fake.drop_connections()  # Triton closes the gateway's connection too
            await _until(lambda: not gw.clients and not any(p.total for p in gw.pools.values()))
            await asyncio.sleep(0)
            left = [
                type(o).__name__
                for o in gc.get_objects()
                if type(o) in kinds and not any(o is e for e in earlier)
            ]
            assert left == [], f"{len(left)} left for the collector: {sorted(set(left))}"
        finally:
            gc.enable()
        assert len(fake.infers) == 31

    run(scenario)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
