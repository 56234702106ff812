"""The gateway's gRPC side against fake Triton gRPC servers, with the official aio client.

The gRPC front end runs for real in this event loop (uvloop, as in production), in front of
the fakes of tests/unit/grpc_harness.py. Most tests drive `GrpcFrontend` alone with a recording
stats object (the calls it makes are the metrics contract); the last ones run the whole gateway
(listener, shutdown, admin push). Routing by workspace, version and strategy and shadow
mirroring are in test_grpc_routing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
import uvloop
from tritonclient.utils import InferenceServerException

from rollout.gateway import GatewayConfig
from rollout.public_config import EXTENSIONS
from rollout.routing import Route
from tests.conftest import free_ports
from tests.unit.grpc_harness import (
    FakeGrpcTriton,
    RecordingStats,
    fakes,
    frontend,
    one_route,
    raw_infer,
    raw_request,
    routes,
    table,
    variant,
    x_input,
)
from tests.unit.test_gateway_harness import (
    FakeTriton,
    http,
    put_routes,
    running_gateway,
    wait_ready,
)

# tests/unit/test_gateway_hardening.py imports these from here
__all__ = ["FakeGrpcTriton", "RecordingStats", "routes", "x_input"]


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_infer_is_renamed_for_triton_and_stamped_for_the_client() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                _gw,
                stats,
                client,
            ),
        ):
            result = await client.infer(
                "d", [x_input(X)], request_id="r1", headers={"x-request-id": "abc", "other": "no"}
            )
            np.testing.assert_array_equal(result.as_numpy("y"), X)
            response = result.get_response()
            assert (response.model_name, response.model_version, response.id) == ("d", "3", "r1")
            assert response.parameters["lastmile_variant"].string_param == "d/3"
            assert "sequence_id" in response.parameters  # Triton's own parameters stay
            sent = fake.requests[-1]
            assert (sent.model_name, sent.model_version) == ("default.d.v3", "")
            assert fake.metadata[-1].get("x-request-id") == "abc"
            assert "other" not in fake.metadata[-1]
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 200)]

    uvloop.run(main())


def test_variant_metadata_on_success_and_on_upstream_errors() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                gw,
                stats,
                _client,
            ),
        ):
            port = gw.port
            headers, response = await raw_infer(port, raw_request())
            assert headers["lastmile-variant"] == "d/3"
            assert response.model_name == "d"
            headers, error = await raw_infer(port, raw_request(input_name="z"))
            assert headers["lastmile-variant"] == "d/3"  # the variant's upstream answered
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (
                error.details() == "[request id: raw] unexpected inference input 'z' for model 'd'"
            )
            headers, error = await raw_infer(port, raw_request("nope"))
            assert "lastmile-variant" not in headers  # no variant was chosen
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert stats.of("observe") == [
                ("default/d", "d/3", "grpc", 200),
                ("default/d", "d/3", "grpc", 400),
            ]
            assert stats.of("count") == [("_unknown", "", "grpc", 404)]

    uvloop.run(main())


def test_a_client_version_is_replaced_by_the_targets_own() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b):
            # "3" names the pipeline version; Triton gets "" (its version policy) or the pin
            async with frontend(one_route(a)) as (_gw, _stats, client):
                await client.infer("d", [x_input(X)], model_version="3")
                assert (a.requests[-1].model_name, a.requests[-1].model_version) == (
                    "default.d.v3",
                    "",
                )
            async with frontend(one_route(b, pin="2")) as (_gw, _stats, client):
                for version in ("", "3"):
                    result = await client.infer("d", [x_input(X)], model_version=version)
                    assert b.requests[-1].model_version == "2"
                    assert result.get_response().model_version == "3"

    uvloop.run(main())


def test_messages_larger_than_grpc_default_4_mib_pass() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                _gw,
                _stats,
                client,
            ),
        ):
            big = np.random.default_rng(0).random((1, 1_500_000), dtype=np.float32)  # 6 MB
            result = await client.infer("d", [x_input(big)])
            np.testing.assert_array_equal(result.as_numpy("y"), big)

    uvloop.run(main())


def test_metadata_shows_the_public_name_and_the_routes_versions() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b):
            route = Route("default", "d", (variant("d", 2, 100, a), variant("d", 5, 0, b)))
            async with frontend(table(route)) as (_gw, _stats, client):
                meta = await client.get_model_metadata("d")
                assert (meta.name, list(meta.versions)) == ("d", ["2", "5"])
                assert (meta.platform, meta.inputs[0].name) == ("python", "x")
                assert a.calls[-1] == ("metadata", "default.d.v2", "")
                meta = await client.get_model_metadata("d", "5")  # a version addresses it
                assert (meta.name, list(meta.versions)) == ("d", ["2", "5"])
                assert b.calls[-1] == ("metadata", "default.d.v5", "")
                for name, version, message in (
                    ("d", "7", "model 'd' has no version 7 being served"),
                    ("nope", "", "unknown model 'nope'"),
                ):
                    with pytest.raises(InferenceServerException) as info:
                        await client.get_model_metadata(name, version)
                    assert info.value.status() == "StatusCode.NOT_FOUND"
                    assert info.value.message() == message

    uvloop.run(main())


def test_ready_per_version_and_server_calls() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b):
            route = Route("default", "d", (variant("d", 2, 100, a), variant("d", 5, 0, b)))
            async with frontend(table(route)) as (_gw, _stats, client):
                assert await client.is_model_ready("d")
                assert a.calls[-1] == ("ready", "default.d.v2", "")
                assert await client.is_model_ready("d", "5")
                assert b.calls[-1] == ("ready", "default.d.v5", "")
                assert not await client.is_model_ready("d", "7")
                assert not await client.is_model_ready("nope")  # like Triton: unknown: not ready
                assert await client.is_server_live() and await client.is_server_ready()
                server = await client.get_server_metadata()
                assert server.name == "lastmile-gateway"
                assert list(server.extensions) == list(EXTENSIONS)

    uvloop.run(main())


def test_unknown_model_is_not_found_and_names_no_other_pipeline() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton()) as (fake,):
            routing = table(
                Route("default", "d", (variant("d", 1, 100, fake),)),
                Route("teamb", "secret", (variant("secret", 1, 100, fake),)),
            )
            async with frontend(routing) as (_gw, stats, client):
                for call in (
                    client.infer("nope", [x_input(X)]),
                    client.get_model_metadata("nope"),
                    client.infer("secret", [x_input(X)]),  # another workspace's pipeline
                    client.infer("default.d.v1", [x_input(X)]),  # Triton's own name
                ):
                    with pytest.raises(InferenceServerException) as info:
                        await call
                    assert info.value.status() == "StatusCode.NOT_FOUND"
                    message = info.value.message()
                    assert message.startswith("unknown model '") and message.endswith("'")
                    assert "deployed" not in message and "teamb" not in message
                assert stats.of("count") == [("_unknown", "", "grpc", 404)] * 3
                assert fake.requests == []

    uvloop.run(main())


def test_triton_errors_keep_their_code_and_hide_the_internal_name() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                _gw,
                stats,
                client,
            ),
        ):
            with pytest.raises(InferenceServerException) as info:
                await client.infer("d", [x_input(X, "z")], request_id="r9")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert info.value.message() == (
                "[request id: r9] unexpected inference input 'z' for model 'd'"
            )
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 400)]

    uvloop.run(main())


def test_invalid_version_and_malformed_request_are_invalid_argument() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                gw,
                _stats,
                client,
            ),
        ):
            with pytest.raises(InferenceServerException) as info:
                await client.infer("d", [x_input(X)], model_version="01")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "invalid model version" in info.value.message()
            _, error = await raw_infer(gw.port, b"\x0a\x09trunc")
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request" in (error.details() or "")
            assert fake.requests == []

    uvloop.run(main())


def test_restricted_apis_are_refused_and_never_proxied() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                gw,
                _stats,
                client,
            ),
        ):
            for call in (
                client.get_model_repository_index(),
                client.load_model("default.d.v3"),
                client.unload_model("d"),
                client.get_inference_statistics("d"),
                client.get_system_shared_memory_status(),
                client.unregister_cuda_shared_memory(),
                client.get_trace_settings(),
                client.update_log_settings({"log_verbose_level": 1}),
            ):
                with pytest.raises(InferenceServerException) as info:
                    await call
                assert info.value.status() == "StatusCode.PERMISSION_DENIED"
                assert "not available through the gateway" in info.value.message()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                other = channel.unary_unary("/grpc.reflection.v1.ServerReflection/Info")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await other(b"")
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert fake.requests == []

    uvloop.run(main())


def test_upstream_down_is_unavailable_then_recovers_quickly() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (
                _gw,
                stats,
                client,
            ),
        ):
            await client.infer("d", [x_input(X)])  # the channel is connected
            await fake.server.stop(0)
            for _ in range(3):  # also while the channel backs off between reconnects
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("d", [x_input(X)], client_timeout=10)
                assert info.value.status() == "StatusCode.UNAVAILABLE"
                assert info.value.message() == "no upstream available for 'd'"  # no address
                await asyncio.sleep(0.5)
            assert stats.of("observe")[1:] == [("default/d", "d/3", "grpc", 503)] * 3
            back = await FakeGrpcTriton().start(fake.port)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 3.0
                while True:
                    try:
                        await client.infer("d", [x_input(X)], client_timeout=5)
                        break
                    except InferenceServerException:
                        assert loop.time() < deadline, "no reconnect within 3 s"
                        await asyncio.sleep(0.1)
            finally:
                await back.stop()

    uvloop.run(main())


def test_client_deadline_is_propagated_upstream() -> None:
    async def main() -> None:
        gate = asyncio.Event()  # never set while the client waits: Triton "hangs"
        async with (
            fakes(FakeGrpcTriton(gate=gate)) as (fake,),
            frontend(one_route(fake)) as (
                _gw,
                stats,
                client,
            ),
        ):
            loop = asyncio.get_running_loop()
            start = loop.time()
            call = asyncio.ensure_future(client.infer("d", [x_input(X)], client_timeout=0.3))
            await fake.arrived.wait()
            assert stats.inflight == {("default/d", "d/3"): 1}  # the in-flight gauge
            with pytest.raises(InferenceServerException) as info:
                await call
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            assert loop.time() - start < 1.5
            await stats.until(lambda: bool(stats.of("observe")))
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 504)]
            assert stats.inflight == {("default/d", "d/3"): 0}

    uvloop.run(main())


# -- the whole gateway ----------------------------------------------------------------------
@contextlib.asynccontextmanager
async def gateway_system(delay: float = 0.0) -> AsyncIterator[tuple[Any, FakeGrpcTriton, Any]]:
    """The real gateway (admin push, readiness, listeners) in front of the fakes."""
    http_fake = await FakeTriton().start()
    grpc_fake = await FakeGrpcTriton(delay).start()
    try:
        async with running_gateway(grpc_port=free_ports(1)[0]) as gw:
            assert (await put_routes(gw, routes(1, http_fake, grpc_fake))).status == 200
            await wait_ready(gw)
            client = aioclient.InferenceServerClient(f"127.0.0.1:{gw.ports['grpc']}")
            try:
                yield gw, grpc_fake, client
            finally:
                await client.close()
    finally:
        await grpc_fake.stop()
        await http_fake.stop()


def test_a_table_pushed_to_the_admin_api_routes_grpc() -> None:
    async def main() -> None:
        async with gateway_system() as (gw, fake, client):
            result = await client.infer("d", [x_input(X)])
            assert result.get_response().model_version == "1"
            assert fake.requests[-1].model_name == "ws.d.v1"
            assert await client.is_server_ready()
            assert gw.stats.requests[("default/d", "d/1", "grpc", 200)] == 1
            # how the relay handled them: the infer at the frame level, ServerReady relayed
            text = (await http(gw.ports["metrics"], "GET", "/metrics")).body.decode()
            assert 'lastmile_gateway_grpc_calls_total{path="fast"} 1.0' in text
            assert 'lastmile_gateway_grpc_calls_total{path="relayed"} 1.0' in text

    uvloop.run(main())


def test_shutdown_lets_in_flight_grpc_requests_finish() -> None:
    async def main() -> None:
        http_fake = await FakeTriton().start()
        grpc_fake = await FakeGrpcTriton(delay=0.5).start()
        async with running_gateway(grpc_port=free_ports(1)[0]) as gw:
            await put_routes(gw, routes(1, http_fake, grpc_fake))
            client = aioclient.InferenceServerClient(f"127.0.0.1:{gw.ports['grpc']}")
            pending = asyncio.ensure_future(client.infer("d", [x_input(X)]))
            await grpc_fake.arrived.wait()
            # leaving the block stops the gateway while the request is still upstream
        result = await pending
        np.testing.assert_array_equal(result.as_numpy("y"), X)
        with pytest.raises(InferenceServerException) as info:  # and new ones are refused
            await client.infer("d", [x_input(X)], client_timeout=2)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        await client.close()
        await grpc_fake.stop()
        await http_fake.stop()

    uvloop.run(main())


def test_grpc_listener_can_be_disabled_and_a_taken_port_fails() -> None:
    async def main() -> None:
        async with running_gateway(grpc_port=0) as gw:
            assert "grpc" not in gw.ports and gw.grpc is None
        async with running_gateway(grpc_port=None) as gw:
            assert gw.grpc is None
        async with running_gateway(grpc_port=free_ports(1)[0]) as gw:
            taken = gw.ports["grpc"]
            with pytest.raises(OSError, match="cannot listen for gRPC"):
                async with running_gateway(grpc_port=taken):
                    pass

    uvloop.run(main())


def test_cli_flag() -> None:
    from rollout.gateway import parse_args

    assert parse_args([]).grpc_port == 8001  # the CLI serves gRPC on Triton's port
    assert GatewayConfig().grpc_port is None  # embedding code opts in
    assert parse_args(["--grpc-port", "0"]).grpc_port == 0
    assert parse_args(["--grpc-port", "9001"]).grpc_port == 9001
