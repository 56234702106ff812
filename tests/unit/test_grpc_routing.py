"""How the gRPC side routes with a v2 table: the `grpc` address of a target, workspaces,
explicit versions, strategies (weighted, sticky by metadata or by request parameter), replicas
in turn, and shadow mirrors that never touch the client's answer.

The fakes and the in-process front end come from test_grpc_gateway.py. Nothing sleeps to wait
for an event: tests wait on the recorded stats calls or on the fakes' arrival events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import uvloop
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from rollout.grpc_routing import GrpcRouting, GrpcUpstream
from rollout.routing import Mirror, Route, RoutingTable, Shadow, Sticky, Target
from rollout.shadow_diff import DiffCollector
from rollout.strategies import RequestContext, strategy_for
from tests.unit.grpc_harness import (
    FakeGrpcTriton,
    fakes,
    frontend,
    raw_infer,
    raw_request,
    table,
    variant,
    x_input,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4)


# -- the table's grpc address ---------------------------------------------------------------
def one(**target: Any) -> RoutingTable:
    raw = {"url": "http://127.0.0.1:8100", "model": "ws.d.v1", **target}
    route = {
        "workspace": "default",
        "pipeline": "d",
        "variants": [{"name": "d/1", "version": 1, "weight": 1, "targets": [raw]}],
    }
    return RoutingTable.from_json({"generation": 1, "routes": {"default/d": route}})


def test_grpc_address_defaults_to_tritons_layout_http_port_plus_one() -> None:
    (target,) = one().targets()
    assert (target.grpc, target.grpc_host, target.grpc_port) == ("", "127.0.0.1", 8101)
    assert "grpc" not in target.to_dict()  # tables without it read back exactly as pushed
    (v6,) = one(url="http://[::1]:9000").targets()
    assert (v6.grpc_host, v6.grpc_port) == ("::1", 9001)


@pytest.mark.parametrize(
    ("grpc", "host", "port"),
    [
        ("127.0.0.1:9001", "127.0.0.1", 9001),
        ("triton-b.svc.local:8001", "triton-b.svc.local", 8001),
        ("[::1]:8001", "::1", 8001),
        ("[fe80::1]:1", "fe80::1", 1),
    ],
)
def test_explicit_grpc_address(grpc: str, host: str, port: int) -> None:
    routing = one(grpc=grpc)
    (target,) = routing.targets()
    assert (target.grpc_host, target.grpc_port) == (host, port)
    assert routing.grpc_upstreams() == {(host, port)}
    assert routing.upstreams() == {("127.0.0.1", 8100)}  # HTTP pools and health checks unchanged


def test_grpc_field_round_trips() -> None:
    routing = one(grpc="[::1]:8001", version="2")
    again = RoutingTable.from_json(routing.to_json())
    assert again == routing
    assert again.to_dict() == routing.to_dict()
    route = json.loads(routing.to_json())["routes"]["default/d"]
    assert route["variants"][0]["targets"][0]["grpc"] == "[::1]:8001"


def test_targets_differing_only_in_grpc_are_different() -> None:
    a = Target(url="http://h:1", model="m")
    assert a == Target(url="http://h:1", model="m", grpc="")
    assert a != Target(url="http://h:1", model="m", grpc="h:5")


@pytest.mark.parametrize(
    "grpc",
    [
        "127.0.0.1",  # no port
        "http://127.0.0.1:8001",  # no scheme
        "127.0.0.1:8001/x",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "::1:8001",  # IPv6 needs brackets
        "[127.0.0.1]:8001",  # brackets are for IPv6 only
        "[::1]",
        "user@h:1",
        "bad host:1",
        " h:1",
        "h:1 ",
        "-h:1",
        "h:+1",
        "h:1\n",
    ],
)
def test_invalid_grpc_address_is_rejected_with_route_and_field(grpc: str) -> None:
    with pytest.raises(ValueError) as info:
        one(grpc=grpc)
    message = str(info.value)
    assert message.startswith("route 'default/d': variants[0].targets[0]")
    assert "grpc must be host:port" in message


def test_grpc_must_be_a_string() -> None:
    with pytest.raises(ValueError, match=r"targets\[0\].*grpc must be a string"):
        one(grpc=8001)


def test_url_on_the_last_port_needs_an_explicit_grpc_address() -> None:
    with pytest.raises(ValueError, match=r"targets\[0\].*grpc must be set"):
        one(url="http://h:65535")
    (target,) = one(url="http://h:65535", grpc="h:8001").targets()
    assert target.grpc_port == 8001


# -- the compiled table ---------------------------------------------------------------------
def test_compiled_suffixes_parse_as_the_stamped_messages() -> None:
    async def main() -> None:
        nowhere = FakeGrpcTriton()  # never started: only its address is used
        nowhere.port = 9
        route = Route(
            "teamb",
            "fraud",
            (
                variant("fraud", 2, 95, nowhere, model="teamb.fraud.v2"),
                variant("fraud", 10, 5, nowhere, model="teamb.fraud.v10", pin="4"),
            ),
        )
        channels: list[GrpcUpstream] = []

        def upstream_for(host: str, port: int) -> GrpcUpstream:
            channels.append(GrpcUpstream(host, port))
            return channels[-1]

        routing = GrpcRouting(table(route), upstream_for)
        assert routing.lookup("default", b"fraud") is None
        compiled = routing.lookup("teamb", b"fraud")
        assert compiled is not None and compiled.key == "teamb/fraud"
        assert set(compiled.by_version) == {b"2", b"10"}
        v10 = compiled.by_version[b"10"]
        (target,) = v10.targets.items
        request = pb.ModelInferRequest.FromString(
            raw_request("fraud", "10") + target.request_suffix
        )
        assert (request.model_name, request.model_version) == ("teamb.fraud.v10", "4")
        triton = pb.ModelInferResponse(model_name="teamb.fraud.v10", model_version="4")
        triton.parameters["lastmile_variant"].string_param = "spoofed"
        response = pb.ModelInferResponse.FromString(
            triton.SerializeToString() + v10.response_suffix
        )
        assert (response.model_name, response.model_version) == ("fraud", "10")
        assert dict(response.parameters)["lastmile_variant"].string_param == "fraud/10"
        assert v10.initial_metadata == (("lastmile-variant", "fraud/10"),)
        meta = pb.ModelMetadataResponse.FromString(compiled.metadata_suffix)
        assert (meta.name, list(meta.versions)) == ("fraud", ["2", "10"])
        for channel in channels:
            await channel.channel.close()

    uvloop.run(main())


# -- workspaces, versions, strategies -------------------------------------------------------
def test_workspace_metadata_selects_the_route_default_is_default() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(factor=1), FakeGrpcTriton(factor=2)) as (a, b):
            routing = table(
                Route("default", "d", (variant("d", 1, 100, a),)),
                Route("teamb", "d", (variant("d", 7, 100, b, model="teamb.d.v7"),)),
            )
            async with frontend(routing) as (_gw, stats, client):
                mine = await client.infer("d", [x_input(X)])
                theirs = await client.infer(
                    "d", [x_input(X)], headers={"lastmile-workspace": "teamb"}
                )
                np.testing.assert_array_equal(mine.as_numpy("y"), X)
                np.testing.assert_array_equal(theirs.as_numpy("y"), 2 * X)
                assert theirs.get_response().model_name == "d"  # the public name, either way
                assert theirs.get_response().model_version == "7"
                assert b.requests[-1].model_name == "teamb.d.v7"
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("d", [x_input(X)], headers={"lastmile-workspace": "nope"})
                assert info.value.status() == "StatusCode.NOT_FOUND"
                assert info.value.message() == "unknown model 'd'"
                meta = await client.get_model_metadata("d", headers={"lastmile-workspace": "teamb"})
                assert list(meta.versions) == ["7"]
                assert await client.is_model_ready(
                    "d", "7", headers={"lastmile-workspace": "teamb"}
                )
                assert not await client.is_model_ready("d", "7")
                assert stats.of("observe") == [
                    ("default/d", "d/1", "grpc", 200),
                    ("teamb/d", "d/7", "grpc", 200),
                ]
                assert stats.of("count") == [("_unknown", "", "grpc", 404)]

    uvloop.run(main())


def test_explicit_version_selects_even_a_weight_zero_variant() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton(factor=3)) as (a, b):
            route = Route("default", "d", (variant("d", 1, 100, a), variant("d", 2, 0, b)))
            async with frontend(table(route)) as (_gw, stats, client):
                for _ in range(20):
                    result = await client.infer("d", [x_input(X)])
                    assert result.get_response().model_version == "1"
                assert b.requests == []  # weight 0: never drawn
                result = await client.infer("d", [x_input(X)], model_version="2")
                np.testing.assert_array_equal(result.as_numpy("y"), 3 * X)
                response = result.get_response()
                assert (response.model_name, response.model_version) == ("d", "2")
                assert response.parameters["lastmile_variant"].string_param == "d/2"
                assert (b.requests[-1].model_name, b.requests[-1].model_version) == (
                    "default.d.v2",
                    "",
                )
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("d", [x_input(X)], model_version="7")
                assert info.value.status() == "StatusCode.NOT_FOUND"
                assert info.value.message() == "model 'd' has no version 7 being served"
                assert stats.of("count") == [("default/d", "", "grpc", 404)]
                assert stats.of("observe")[-1] == ("default/d", "d/2", "grpc", 200)

    uvloop.run(main())


def test_weighted_route_spreads_by_weight_and_replicas_take_turns() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton(), FakeGrpcTriton()) as (a, b, c):
            route = Route("default", "d", (variant("d", 1, 50, a, b), variant("d", 2, 50, c)))
            async with frontend(table(route)) as (_gw, stats, client):
                for _ in range(60):
                    await client.infer("d", [x_input(X)])
                by_variant = Counter(call[1] for call in stats.of("observe"))
                assert by_variant["d/1"] > 5 and by_variant["d/2"] > 5
                assert abs(len(a.requests) - len(b.requests)) <= 1  # round robin
                assert len(a.requests) + len(b.requests) == by_variant["d/1"]

    uvloop.run(main())


def sticky_route(a: FakeGrpcTriton, b: FakeGrpcTriton) -> Route:
    return Route(
        "default",
        "d",
        (variant("d", 1, 50, a), variant("d", 2, 50, b)),
        strategy="sticky",
        sticky=Sticky(header="lastmile-key", parameter="user"),
    )


def test_sticky_by_metadata_header_follows_the_strategy() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b):
            route = sticky_route(a, b)
            strategy = strategy_for(route)
            async with frontend(table(route)) as (_gw, _stats, client):
                seen = set()
                for user in range(30):
                    key = f"user-{user}"
                    want = strategy.pick(RequestContext(key.encode())).primary.version
                    for _ in range(2):
                        result = await client.infer(
                            "d", [x_input(X)], headers={"lastmile-key": key}
                        )
                        assert result.get_response().model_version == str(want)
                    seen.add(want)
                assert seen == {1, 2}

    uvloop.run(main())


@pytest.mark.parametrize(
    ("value", "text"),
    [("user-17", b"user-17"), (42, b"42"), (-5, b"-5"), (True, b"true")],
)
def test_sticky_by_request_parameter_and_the_header_wins(value: Any, text: bytes) -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b):
            route = sticky_route(a, b)
            strategy = strategy_for(route)
            async with frontend(table(route)) as (_gw, _stats, client):
                want = strategy.pick(RequestContext(text)).primary.version
                for _ in range(3):
                    result = await client.infer("d", [x_input(X)], parameters={"user": value})
                    assert result.get_response().model_version == str(want)
                # a header key overrides the parameter: find one that lands elsewhere
                other = next(
                    k
                    for k in (f"k{i}" for i in range(100))
                    if strategy.pick(RequestContext(k.encode())).primary.version != want
                )
                result = await client.infer(
                    "d", [x_input(X)], parameters={"user": value}, headers={"lastmile-key": other}
                )
                assert result.get_response().model_version != str(want)
                assert all("user" in r.parameters for r in a.requests + b.requests)  # forwarded

    uvloop.run(main())


def test_sticky_with_a_malformed_parameter_map_is_invalid_argument() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b),
            frontend(table(sticky_route(a, b))) as (gw, stats, _client),
        ):
            request = raw_request() + b"\x22\x04\x0a\x09ab"  # field 4 entry, key runs over
            _, error = await raw_infer(gw.port, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert stats.of("count") == [("default/d", "", "grpc", 400)]
            assert a.requests == b.requests == []

    uvloop.run(main())


# -- shadow ---------------------------------------------------------------------------------
def shadow_route(
    primary: FakeGrpcTriton, mirror: FakeGrpcTriton, *, timeout_s: float = 5.0, max_queue: int = 8
) -> RoutingTable:
    route = Route(
        "default",
        "d",
        (variant("d", 1, 100, primary), variant("d", 2, 0, mirror)),
        strategy="shadow",
        shadow=Shadow(
            mirrors=(Mirror("d/2", 1.0),),
            timeout_s=timeout_s,
            max_queue=max_queue,
            tolerance=1e-6,
        ),
    )
    return table(route)


def shadow_outcomes(stats: Any) -> list[tuple[Any, ...]]:
    return stats.of("shadow")


@contextlib.asynccontextmanager
async def shadowed(
    primary: FakeGrpcTriton,
    mirror: FakeGrpcTriton,
    diffs: Any = None,
    shadow_inflight: dict[str, int] | None = None,
    **limits: Any,
) -> AsyncIterator[tuple[FakeGrpcTriton, FakeGrpcTriton, Any, Any, Any]]:
    """(primary fake, mirror fake, front end, stats, client) for a shadow route d/1 -> d/2."""
    async with (
        fakes(primary, mirror) as (a, b),
        frontend(shadow_route(a, b, **limits), diffs=diffs, shadow_inflight=shadow_inflight) as (
            gw,
            stats,
            client,
        ),
    ):
        yield a, b, gw, stats, client


def test_shadow_copies_reach_the_mirror_and_pairs_reach_the_diff_report() -> None:
    async def main() -> None:
        diffs = DiffCollector()
        diffs.start()
        try:
            mirror = FakeGrpcTriton(factor=1.5)
            async with shadowed(FakeGrpcTriton(), mirror, diffs) as (_a, b, _gw, stats, client):
                for _ in range(4):
                    result = await client.infer("d", [x_input(X)], headers={"x-request-id": "r"})
                    np.testing.assert_array_equal(result.as_numpy("y"), X)  # the primary's
                    assert result.get_response().model_version == "1"
                await stats.until(lambda: len(shadow_outcomes(stats)) == 4)
                assert shadow_outcomes(stats) == [("default/d", "d/2", "ok")] * 4
                assert [r.model_name for r in b.requests] == ["default.d.v2"] * 4
                assert b.metadata[-1].get("x-request-id") == "r"
                # an explicit version is not live traffic: not mirrored
                await client.infer("d", [x_input(X)], model_version="1")
                assert len(b.requests) == 4
            assert await asyncio.to_thread(diffs.drain, 10)
            report = diffs.reports()["default/d"]["d/2"]
            assert report["pairs"] == 4
            y = report["outputs"]["y"]
            assert y["compared"] == 4 and y["agreement"] == 0.0
            assert y["max_abs_diff"] == pytest.approx(0.5 * X.max())
        finally:
            diffs.stop()

    uvloop.run(main())


def test_a_mirror_equal_to_the_primary_agrees_fully() -> None:
    async def main() -> None:
        diffs = DiffCollector()
        diffs.start()
        try:
            async with shadowed(FakeGrpcTriton(), FakeGrpcTriton(), diffs) as (*_, stats, client):
                for _ in range(3):
                    await client.infer("d", [x_input(X)])
                await stats.until(lambda: len(shadow_outcomes(stats)) == 3)
            assert await asyncio.to_thread(diffs.drain, 10)
            y = diffs.reports()["default/d"]["d/2"]["outputs"]["y"]
            assert (y["compared"], y["agreement"], y["max_abs_diff"]) == (3, 1.0, 0.0)
        finally:
            diffs.stop()

    uvloop.run(main())


def test_an_erroring_mirror_never_reaches_the_client() -> None:
    async def main() -> None:
        diffs = DiffCollector()
        failing = FakeGrpcTriton(fail=("INTERNAL", "candidate exploded"))
        async with shadowed(FakeGrpcTriton(), failing, diffs) as (*_, stats, client):
            for _ in range(3):
                result = await client.infer("d", [x_input(X)])
                np.testing.assert_array_equal(result.as_numpy("y"), X)
            await stats.until(lambda: len(shadow_outcomes(stats)) == 3)
            assert shadow_outcomes(stats) == [("default/d", "d/2", "error")] * 3
            assert stats.of("observe") == [("default/d", "d/1", "grpc", 200)] * 3
        assert diffs.reports() == {}  # nothing to compare

    uvloop.run(main())


def test_a_slow_mirror_neither_delays_the_client_nor_outlives_its_timeout() -> None:
    async def main() -> None:
        gate = asyncio.Event()  # the mirror answers only when set: never, here
        slow = FakeGrpcTriton(gate=gate)
        async with shadowed(FakeGrpcTriton(), slow, timeout_s=0.3) as (_a, b, _gw, stats, client):
            result = await client.infer("d", [x_input(X)], client_timeout=5)
            np.testing.assert_array_equal(result.as_numpy("y"), X)
            assert shadow_outcomes(stats) == []  # answered while the mirror still hangs
            await b.arrived.wait()  # it does get its copy
            await stats.until(lambda: bool(shadow_outcomes(stats)))
            assert shadow_outcomes(stats) == [("default/d", "d/2", "timeout")]

    uvloop.run(main())


def test_a_full_mirror_queue_drops_copies_and_counts_them() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        slow = FakeGrpcTriton(gate=gate)
        async with shadowed(FakeGrpcTriton(), slow, max_queue=2) as (_a, _b, gw, stats, client):
            for _ in range(5):
                result = await client.infer("d", [x_input(X)], client_timeout=5)
                np.testing.assert_array_equal(result.as_numpy("y"), X)
            assert shadow_outcomes(stats) == [("default/d", "d/2", "dropped")] * 3
            assert gw.shadow.inflight["default/d"] == 2
            gate.set()
            await stats.until(lambda: len(shadow_outcomes(stats)) == 5)
            assert shadow_outcomes(stats)[3:] == [("default/d", "d/2", "ok")] * 2
            assert "default/d" not in gw.shadow.inflight

    uvloop.run(main())


def test_the_mirror_bound_is_shared_with_the_http_side() -> None:
    async def main() -> None:
        http_inflight = {"default/d": 2}  # HTTP copies of this route already in flight
        gate = asyncio.Event()
        slow = FakeGrpcTriton(gate=gate)
        async with shadowed(FakeGrpcTriton(), slow, max_queue=3, shadow_inflight=http_inflight) as (
            *_,
            stats,
            client,
        ):
            for _ in range(2):
                await client.infer("d", [x_input(X)])
            assert shadow_outcomes(stats) == [("default/d", "d/2", "dropped")]  # 2 + 1 = 3
            assert http_inflight == {"default/d": 3}
            gate.set()
            await stats.until(lambda: len(shadow_outcomes(stats)) == 2)
            assert shadow_outcomes(stats)[1] == ("default/d", "d/2", "ok")
            assert http_inflight == {"default/d": 2}  # the gRPC copy gave its slot back

    uvloop.run(main())


def test_a_failed_primary_is_not_compared_and_its_mirror_still_counts() -> None:
    async def main() -> None:
        diffs = DiffCollector()
        diffs.start()
        try:
            down = FakeGrpcTriton(fail=("UNAVAILABLE", "down"))
            async with shadowed(down, FakeGrpcTriton(), diffs) as (*_, stats, client):
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("d", [x_input(X)])
                assert info.value.status() == "StatusCode.UNAVAILABLE"
                await stats.until(lambda: bool(shadow_outcomes(stats)))
                assert shadow_outcomes(stats) == [("default/d", "d/2", "ok")]
            assert await asyncio.to_thread(diffs.drain, 10)
            assert diffs.reports() == {}
        finally:
            diffs.stop()

    uvloop.run(main())
