"""Gateway hardening, in process: admin token, routing-table admission, compressed bodies,
shared-memory refusal, Triton error mapping and the client/server error metrics.

The gateway runs for real on loopback; where Triton is not the subject (what the gateway does
with a body or an error text) a fake upstream stands in for it.
tests/e2e/test_gateway_hardening_triton.py checks the same against the real tritonserver.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from rollout.admission import TableRefused, check_generation
from rollout.body_guard import INLINE_INFLATE_BYTES, SHM_REFUSED, check_infer_body
from rollout.gateway import Gateway, parse_args
from rollout.gateway_config import DAY_MS
from rollout.grpc_gateway import SERVICE
from rollout.grpc_wire import infer_parameter_keys, mentions
from rollout.upstream_errors import grpc_failure, http_failure, sanitize
from tests.conftest import free_ports
from tests.unit.test_gateway_harness import (
    FakeTriton,
    Message,
    RawClient,
    Reply,
    build_request,
    http,
    infer_body,
    routes,
    running_gateway,
    triton_like,
    wait_ready,
)
from tests.unit.test_grpc_gateway import FakeGrpcTriton, x_input
from tests.unit.test_grpc_gateway import routes as grpc_routes

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INFER = "/v2/models/diamond/infer"
Scenario = Callable[[Gateway, FakeTriton], Awaitable[None]]


def run(scenario: Scenario, handler: Any = triton_like, **config: Any) -> None:
    """A fake Triton and a gateway routing 'diamond' to it (model default.diamond.v1)."""

    async def main() -> None:
        fake = await FakeTriton(handler).start()
        try:
            async with running_gateway(**config) as gw:
                table = routes(1, diamond=[{"url": fake.url, "model": "default.diamond.v1"}])
                headers = AUTH if config.get("admin_token") else None
                resp = await http(gw.ports["admin"], "PUT", "/routes", table, headers)
                assert resp.status == 200, resp.body
                await scenario(gw, fake)
        finally:
            await fake.stop()

    uvloop.run(main())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- 1. admin authentication -----------------------------------------------------------------
def test_admin_api_requires_the_bearer_token_when_one_is_configured() -> None:
    async def main() -> None:
        async with running_gateway(admin_token=TOKEN) as gw:
            admin = gw.ports["admin"]
            table = routes(1, d=[{"url": "http://127.0.0.1:9", "model": "m"}])
            for headers in (
                None,
                {"Authorization": "Bearer wrong"},
                {"Authorization": TOKEN},
                {"Authorization": f"Basic {TOKEN}"},
            ):
                for method, body in (("GET", b""), ("PUT", table)):
                    resp = await http(admin, method, "/routes", body, headers)
                    assert resp.status == 401, (method, headers)
                    assert "Authorization: Bearer" in resp.json()["error"]
                    assert resp.headers["www-authenticate"].startswith("Bearer")
            assert (await http(admin, "GET", "/nope")).status == 401  # no probing either
            assert gw.table is None
            assert (await http(admin, "PUT", "/routes", table, AUTH)).status == 200
            got = await http(admin, "GET", "/routes", headers={"authorization": f"bearer {TOKEN}"})
            assert got.status == 200 and got.json()["generation"] == 1

    uvloop.run(main())


def test_without_a_token_the_admin_api_is_open_and_the_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with running_gateway() as gw:
            assert (await http(gw.ports["admin"], "GET", "/routes")).status == 200

    uvloop.run(main())
    assert "the admin API is unauthenticated" in caplog.text


def test_cli_reads_the_token_file_and_the_new_limits(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    config = parse_args(
        [
            "--admin-token-file",
            str(token_file),
            "--allowed-upstream",
            "127.0.0.1:8000",
            "--allowed-upstream",
            "LocalHost:8001",
            "--allowed-upstream",
            "[::1]:8001",
            "--generation-window-ms",
            "5000",
            "--max-body-bytes",
            "1000",
        ]
    )
    assert config.admin_token == TOKEN
    assert TOKEN not in repr(config)
    assert config.allowed_upstreams == {("127.0.0.1", 8000), ("localhost", 8001), ("::1", 8001)}
    assert config.generation_window_ms == 5000
    assert config.max_inflated_bytes == 2000  # default: twice the body limit
    defaults = parse_args([])
    assert defaults.admin_token is None and defaults.allowed_upstreams is None
    assert defaults.generation_window_ms == DAY_MS
    assert parse_args(["--max-inflated-bytes", "77"]).max_inflated_bytes == 77


@pytest.mark.parametrize("content", ["", "  \n", "two words"])
def test_cli_refuses_an_unusable_token_file(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    for path in (token_file, tmp_path / "missing"):
        with pytest.raises(SystemExit) as info:
            parse_args(["--admin-token-file", str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "--admin-token-file: " in err and str(path) in err


def test_cli_refuses_a_malformed_allowed_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("127.0.0.1", "http://h:1", "h:0", "[nope]:1"):
        with pytest.raises(SystemExit):
            parse_args(["--allowed-upstream", bad])
        assert "must be HOST:PORT" in capsys.readouterr().err
    for bad in ("t-{3..1}.h:8000", "t-{0..999}.h:8000", "t-{0..1}.h-{0..1}:8000"):
        with pytest.raises(SystemExit):
            parse_args(["--allowed-upstream", bad])
        assert "range" in capsys.readouterr().err


def test_an_allowed_upstream_range_allows_each_pod_of_it() -> None:
    config = parse_args(["--allowed-upstream", "triton-{0..2}.triton-headless:8001"])
    assert config.allowed_upstreams == {(f"triton-{i}.triton-headless", 8001) for i in range(3)}


# -- 2. routing-table admission ---------------------------------------------------------------
def test_only_allowed_upstreams_may_be_routed_to() -> None:
    async def main() -> None:
        allowed = frozenset({("127.0.0.1", 8000), ("127.0.0.1", 8001), ("localhost", 9001)})
        async with running_gateway(allowed_upstreams=allowed) as gw:
            admin = gw.ports["admin"]
            ok = routes(1, d=[{"url": "http://127.0.0.1:8000", "model": "m"}])  # gRPC: 8001
            assert (await http(admin, "PUT", "/routes", ok)).status == 200
            elsewhere = routes(2, d=[{"url": "http://10.0.0.7:8000", "model": "m"}])
            resp = await http(admin, "PUT", "/routes", elsewhere)
            assert resp.status == 422
            assert resp.json()["error"].startswith(
                "route 'default/d': variant 'd/1' targets[0].url points at 10.0.0.7"
            )
            grpc_elsewhere = routes(
                3, d=[{"url": "http://127.0.0.1:8000", "model": "m", "grpc": "127.0.0.1:7777"}]
            )
            resp = await http(admin, "PUT", "/routes", grpc_elsewhere)
            assert (
                resp.status == 422
                and "targets[0].grpc points at 127.0.0.1:7777" in resp.body.decode()
            )
            upper = routes(
                4, d=[{"url": "http://LOCALHOST:9000", "model": "m", "grpc": "LocalHost:9001"}]
            )
            assert (await http(admin, "PUT", "/routes", upper)).status == 422  # 9000 not allowed
            assert gw.table is not None and gw.table.generation == 1

    uvloop.run(main())


def test_generation_window_refuses_tables_too_far_ahead() -> None:
    check_generation(5, current=None, now_ms=1000, window_ms=10)
    check_generation(1010, current=None, now_ms=1000, window_ms=10)
    check_generation(5010, current=5000, now_ms=1000, window_ms=10)  # current beyond the clock
    check_generation(5000, current=5000, now_ms=1000, window_ms=10)  # same generation: a re-push
    with pytest.raises(TableRefused, match="too far ahead") as ahead:
        check_generation(1011, current=None, now_ms=1000, window_ms=10)
    assert ahead.value.status == 422
    with pytest.raises(TableRefused, match="stale routing table") as stale:
        check_generation(4999, current=5000, now_ms=1000, window_ms=10)
    assert stale.value.status == 409

    async def main() -> None:
        async with running_gateway(generation_window_ms=60_000) as gw:
            admin = gw.ports["admin"]
            target = [{"url": "http://127.0.0.1:9", "model": "m"}]
            for absurd in (2**62, now_ms() + 3_600_000):
                resp = await http(admin, "PUT", "/routes", routes(absurd, d=target))
                assert resp.status == 422 and "too far ahead" in resp.json()["error"]
            assert (await http(admin, "PUT", "/routes", routes(now_ms(), d=target))).status == 200
            stale = await http(admin, "PUT", "/routes", routes(1, d=target))
            assert stale.status == 409

    uvloop.run(main())


@pytest.mark.parametrize(
    "saved",
    [
        json.dumps({"generation": 2**62, "routes": {}}),
        routes(1, d=[{"url": "http://10.1.2.3:8000", "model": "m"}]).decode(),
        '{"generation": 1, "routes": ',
    ],
    ids=["absurd-generation", "upstream-not-allowed", "invalid-json"],
)
def test_a_routes_file_that_fails_the_checks_is_ignored_not_fatal(
    tmp_path: Path, saved: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(saved)
    allowed = frozenset({("127.0.0.1", 8000), ("127.0.0.1", 8001)})

    async def main() -> None:
        async with running_gateway(routes_file=path, allowed_upstreams=allowed) as gw:
            assert gw.table is None
            generation = now_ms()
            table = routes(generation, d=[{"url": "http://127.0.0.1:8000", "model": "m"}])
            assert (await http(gw.ports["admin"], "PUT", "/routes", table)).status == 200
        assert json.loads(path.read_text())["generation"] == generation  # the bad file is gone
        async with running_gateway(routes_file=path, allowed_upstreams=allowed) as gw:
            assert gw.table is not None and gw.table.generation == generation

    uvloop.run(main())
    assert f"ignoring routes file {path}" in caplog.text
    assert "starting with no routing table" in caplog.text


# -- 3. compressed request bodies ---------------------------------------------------------------
def big_body(values: int) -> bytes:
    return infer_body([float(i % 97) for i in range(values)])


@pytest.mark.parametrize("coding", ["gzip", "deflate", "x-gzip", "GZip"])
def test_gzip_and_deflate_bodies_are_inflated_and_forwarded_plain(coding: str) -> None:
    small, large = infer_body(), big_body(400_000)
    assert len(large) > 2 * INLINE_INFLATE_BYTES  # inflated partly in a worker thread
    compress = gzip.compress if "gzip" in coding.lower() else zlib.compress

    async def scenario(gw: Gateway, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        for body in (small, large, small):
            headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
            resp = await client.request("POST", INFER, compress(body), headers)
            assert resp.status == 200 and resp.json()["model_name"] == "diamond"
            seen = fake.infers[-1]
            assert seen.body == body
            assert seen.headers["content-length"] == str(len(body))
            assert "content-encoding" not in seen.headers
        await client.close()

    run(scenario)


def test_a_gzip_bomb_is_stopped_at_the_inflated_limit_and_never_reaches_triton() -> None:
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=1)
    assert len(bomb) < 512 * 1024

    async def scenario(gw: Gateway, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", INFER, bomb, {"Content-Encoding": "gzip"})
        assert resp.status == 413
        assert resp.json()["error"] == (
            "the request body inflates to more than 4194304 bytes (the gateway's "
            "--max-inflated-bytes)"
        )
        assert not any(r.path.endswith("/infer") for r in fake.requests)
        # the connection stays usable, and a body right at the limit passes
        body = infer_body()
        exact = body + b" " * (4 * 1024 * 1024 - len(body))
        resp = await client.request(
            "POST", INFER, gzip.compress(exact), {"Content-Encoding": "gzip"}
        )
        assert resp.status == 200 and fake.infers[-1].body == exact
        await client.close()

    run(scenario, max_inflated_bytes=4 * 1024 * 1024)


def test_corrupt_compressed_bodies_are_400_and_unknown_codings_415() -> None:
    body = infer_body()

    async def scenario(gw: Gateway, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        cases = [
            ("gzip", b"this is not gzip", 400, "not valid gzip data"),
            ("gzip", gzip.compress(body)[:-12], 400, "truncated gzip stream"),
            ("gzip", gzip.compress(body) + b"junk", 400, "data after the end"),
            ("deflate", b"\x78\x9c garbage", 400, "not valid deflate data"),
            ("br", body, 415, "unsupported Content-Encoding 'br'"),
            ("gzip, br", gzip.compress(body), 415, "unsupported Content-Encoding"),
        ]
        for coding, payload, status, message in cases:
            resp = await client.request("POST", INFER, payload, {"Content-Encoding": coding})
            assert resp.status == status, (coding, resp.body)
            assert message in resp.json()["error"]
        assert not any(r.path.endswith("/infer") for r in fake.requests)
        resp = await client.request("POST", INFER, body, {"Content-Encoding": "identity"})
        assert resp.status == 200 and fake.infers[-1].body == body
        await client.close()

    run(scenario)


# -- 4. shared memory -------------------------------------------------------------------------
def shm_body(where: str) -> bytes:
    request: dict[str, Any] = json.loads(infer_body())
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    if where == "request":
        request["parameters"] = {"shared_memory_offset": 0}
    elif where == "input":
        request["inputs"][0] = {**request["inputs"][0], "parameters": params}
        del request["inputs"][0]["data"]
    else:
        request["outputs"] = [{"name": "y", "parameters": params}]
    return json.dumps(request).encode()


def test_shared_memory_parameters_are_refused_but_the_text_in_tensor_data_passes() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        for where in ("request", "input", "output"):
            resp = await client.request("POST", INFER, shm_body(where))
            assert resp.status == 400 and resp.json()["error"] == SHM_REFUSED, where
        compressed = gzip.compress(shm_body("input"))
        resp = await client.request("POST", INFER, compressed, {"Content-Encoding": "gzip"})
        assert resp.status == 400 and resp.json()["error"] == SHM_REFUSED
        split = shm_body("request")  # chunked, the only marker cut across two chunks
        assert split.count(b"shared_memory") == 1
        cut = split.index(b"shared_memory") + 5
        client.send(build_request("POST", INFER, headers={"Transfer-Encoding": "chunked"}))
        client.send(
            b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (cut, split[:cut], len(split) - cut, split[cut:])
        )
        assert (await client.response()).status == 400
        assert not any(r.path.endswith("/infer") for r in fake.requests)

        text = json.dumps(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": ["shared_memory_region"],
                    }
                ]
            }
        ).encode()
        assert (await client.request("POST", INFER, text)).status == 200
        assert fake.infers[-1].body == text
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 24},
                    }
                ]
            }
        ).encode()
        binary = header + b"\x14\x00\x00\x00shared_memory_region"
        resp = await client.request(
            "POST", INFER, binary, {"Inference-Header-Content-Length": str(len(header))}
        )
        assert resp.status == 200 and fake.infers[-1].body == binary
        await client.close()

    run(scenario)


def test_check_infer_body_cases() -> None:
    assert check_infer_body([b"{}"], 2, None) is None
    assert check_infer_body([b"  \n {}"], 6, None) is None
    assert check_infer_body([], 0, None) is None  # Triton answers an empty body itself
    assert check_infer_body([b"\x00\x01raw"], 5, 0) is None  # raw binary request: no JSON
    assert check_infer_body([b"\x00\x01raw"], 5, -3) is None  # Triton says the range is wrong
    for junk in (b"hello", b"[1, 2]", b"\x1f\x8b\x08"):
        assert "not a JSON object" in (check_infer_body([junk], len(junk), None) or "")
    broken = b'{"parameters": {"shared_memory_region": '
    assert "not valid JSON" in (check_infer_body([broken], len(broken), None) or "")
    # the marker only after the JSON header (in binary tensor data) is not even decoded
    header = b'{"inputs": []}'
    assert check_infer_body([header + b"shared_memory"], len(header) + 13, len(header)) is None


def test_non_json_bodies_are_answered_400_without_bothering_triton() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        resp = await client.request("POST", INFER, b"hello world")
        assert resp.status == 400 and "not a JSON object" in resp.json()["error"]
        assert not any(r.path.endswith("/infer") for r in fake.requests)
        raw = b"\x00" * 16
        resp = await client.request("POST", INFER, raw, {"Inference-Header-Content-Length": "0"})
        assert resp.status == 200 and fake.infers[-1].body == raw  # Triton's raw binary form
        await client.close()

    run(scenario)


# -- 5. error mapping -------------------------------------------------------------------------
ORT_FAILURE = (
    "in ensemble 'default.diamond.v1', Fail: [ONNXRuntimeError] : 1 : FAIL : Non-zero status "
    "code returned while running Mul node. Name:'' Status Message: /onnxruntime_src/onnxruntime"
    "/core/providers/cpu/math/element_wise_ops.h:563 void onnxruntime::BroadcastIterator::Init("
    "ptrdiff_t, ptrdiff_t) axis == 1 || axis == largest was false. Attempting to broadcast an "
    "axis by a dimension other than 1. 3 by 4\n"
)
PY_FAILURE = (
    "Failed to process the request(s) for model 'default.diamond.v1_0_0', message: "
    "RuntimeError: boom in the model\n\nAt:\n  /srv/repo/default.diamond.v1/1/model.py(4): "
    "execute\n"
)


def test_sanitize_strips_internals_and_keeps_the_human_part() -> None:
    assert sanitize(ORT_FAILURE) == (
        "in ensemble 'default.diamond.v1', Fail: [ONNXRuntimeError] : 1 : FAIL : Non-zero status"
        " code returned while running Mul node. Name:'' Status Message: axis == 1 || axis == "
        "largest was false. Attempting to broadcast an axis by a dimension other than 1. 3 by 4"
    )
    assert sanitize(PY_FAILURE) == (
        "Failed to process the request(s) for model 'default.diamond.v1_0_0', message: "
        "RuntimeError: boom in the model"
    )
    arena = (
        "Status Message: bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal("
        "size_t, bool, onnxruntime::Stream*, bool) Failed to allocate memory of size 4294967296"
    )
    assert sanitize(arena) == "Status Message: Failed to allocate memory of size 4294967296"
    traceback = (
        'Traceback (most recent call last):\n  File "/srv/m/model.py", line 12, in execute\n'
        "    y = f(x)\nValueError: bad x"
    )
    assert sanitize(traceback) == "ValueError: bad x"
    assert sanitize('error in File "/opt/x/y.py", line 3, in f: oops') == "error in : oops"
    assert sanitize("loading /opt/tritonserver/backends/python/libtriton_python.so failed") == (
        "loading failed"
    )
    assert sanitize("[request id: <id_unknown>] unexpected shape") == "unexpected shape"
    assert sanitize("[request id: r9] unexpected shape") == "[request id: r9] unexpected shape"
    for kept in ("ratio 3/4 of a/b/c", "see https://docs.example.com/a/b", "Expected [-1,4]"):
        assert sanitize(kept) == kept
    assert len(sanitize("x" * 5000)) == 1000


def test_http_failure_maps_client_mistakes_to_400_and_hides_server_internals() -> None:
    def failure(status: int, message: str | bytes) -> tuple[int, str]:
        body = message if isinstance(message, bytes) else json.dumps({"error": message}).encode()
        return http_failure(status, body, internal="default.diamond.v1", public="diamond")

    assert failure(500, "failed to parse the request JSON buffer: Invalid value. at 12") == (
        400,
        "the request body is not valid JSON (Invalid value. at 12)",
    )
    assert failure(500, "Unable to parse 'inputs': attempt to access JSON non-array as array") == (
        400,
        "invalid inference request: cannot read 'inputs': attempt to access JSON non-array "
        "as array",
    )
    status, message = failure(
        400,
        "[request id: <id_unknown>] inference request batch-size "
        "must be <= 8 for 'default.diamond.v1'",
    )
    assert status == 400 and message.startswith(
        "inference request batch-size must be <= 8 for 'diamond' (that is the pipeline's"
    )
    assert failure(
        404, "Request for unknown model: 'default.diamond.v1' version 7 is not found"
    ) == (404, "Request for unknown model: 'diamond' version 7 is not found")
    # the routed model itself unknown to Triton: it is being (re)loaded, the client may retry
    assert failure(404, "Request for unknown model: 'default.diamond.v1' is not found") == (
        503,
        "'diamond' is not available right now (its model is being loaded); retry shortly",
    )
    assert failure(405, "Method Not Allowed")[0] == 400
    assert failure(500, PY_FAILURE) == (
        500,
        "Failed to process the request(s) for model "
        "'diamond', message: RuntimeError: boom in the model",
    )
    status, message = failure(500, ORT_FAILURE)
    assert status == 500 and ".h:563" not in message and "/onnxruntime_src" not in message
    assert message.startswith("in ensemble 'diamond', Fail: [ONNXRuntimeError]")
    assert failure(501, "Unsupported compression type")[0] == 500
    assert failure(503, "Server not ready")[0] == 503
    assert failure(502, b"<html>bad gateway</html>") == (
        502,
        "inference failed for 'diamond' (upstream status 502)",
    )


def test_grpc_failure_maps_codes_and_sanitizes() -> None:
    def failure(code: str, details: str) -> tuple[str, str]:
        return grpc_failure(code, details, internal="default.diamond.v1", public="diamond")

    assert (
        failure("INTERNAL", "failed to parse the request JSON buffer: x")[0] == "INVALID_ARGUMENT"
    )
    assert failure(
        "INVALID_ARGUMENT",
        "[request id: <id_unknown>] unexpected shape for input 'x' for model 'default.diamond.v1'",
    ) == ("INVALID_ARGUMENT", "unexpected shape for input 'x' for model 'diamond'")
    code, message = failure("INTERNAL", PY_FAILURE)
    assert code == "INTERNAL" and message.endswith(
        "'diamond', message: RuntimeError: boom in the model"
    )
    assert failure("UNKNOWN", "x.cc:12 broke")[0] == "INTERNAL"
    assert failure("NOT_FOUND", "")[1] == "request for 'diamond' failed (upstream status NOT_FOUND)"


def test_triton_errors_are_mapped_and_counted_as_client_or_server_errors() -> None:
    answers = {
        "bad-json": (500, "failed to parse the request JSON buffer: Invalid value. at 0"),
        "shape": (
            400,
            "[request id: <id_unknown>] unexpected shape for input 'x' for model "
            "'default.diamond.v1'",
        ),
        "model": (500, ORT_FAILURE),
    }

    async def handler(req: Message) -> Reply | None:
        case = req.headers.get("x-request-id", "")
        if req.path.endswith("/infer") and case in answers:
            status, message = answers[case]
            return (
                status,
                {"Content-Type": "application/json"},
                json.dumps({"error": message}).encode(),
            )
        return await triton_like(req)

    async def scenario(gw: Gateway, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        got = {}
        for case in ("bad-json", "shape", "model", "ok"):
            resp = await client.request("POST", INFER, infer_body(), {"X-Request-Id": case})
            got[case] = (resp.status, resp.json().get("error", ""))
        assert got["bad-json"] == (400, "the request body is not valid JSON (Invalid value. at 0)")
        assert got["shape"] == (400, "unexpected shape for input 'x' for model 'diamond'")
        assert got["model"][0] == 500 and "element_wise_ops.h" not in got["model"][1]
        assert got["ok"] == (200, "")
        assert (await client.request("POST", INFER, b"nope")).status == 400  # refused here
        assert (await client.request("POST", "/v2/models/other/infer", b"{}")).status == 404
        await client.close()
        text = (await http(gw.ports["metrics"], "GET", "/metrics")).body.decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        requests = "lastmile_gateway_requests_total"
        errors = "lastmile_gateway_errors_total"
        series = (("route", "default/diamond"), ("variant", "diamond/1"))
        http_ = ("protocol", "http")
        assert samples[(requests, (("code", "400"), http_, *series))] == 2
        assert samples[(requests, (("code", "500"), http_, *series))] == 1
        assert samples[(requests, (("code", "200"), http_, *series))] == 1
        assert samples[(errors, (("class", "client"), *series))] == 2
        assert samples[(errors, (("class", "server"), *series))] == 1
        refused = (("class", "client"), ("route", "default/diamond"), ("variant", ""))
        assert samples[(errors, refused)] == 1  # the non-JSON body, refused by the gateway
        unknown = (("class", "client"), ("route", "_unknown"), ("variant", ""))
        assert samples[(errors, unknown)] == 1
        # refusals stay out of the latency histogram: only the 4 forwarded requests are in it
        assert samples[("lastmile_gateway_request_duration_seconds_count", series)] == 4
        assert ("lastmile_gateway_request_duration_seconds_count", refused[1:]) not in samples

    run(scenario, handler=handler)


# -- gRPC ---------------------------------------------------------------------------------------
class ScriptedGrpcTriton(FakeGrpcTriton):
    """Fails ModelInfer with the (code, details) named by the request's id, else echoes."""

    async def infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        if request.id.startswith("fail:"):
            _, code, details = request.id.split(":", 2)
            self.requests.append(request)
            await context.abort(grpc.StatusCode[code], details)
        return await super().infer(request, context)


@contextlib.asynccontextmanager
async def grpc_system(**config: Any) -> AsyncIterator[tuple[Gateway, FakeGrpcTriton, Any]]:
    http_fake = await FakeTriton().start()
    grpc_fake = await ScriptedGrpcTriton().start()
    try:
        async with running_gateway(grpc_port=free_ports(1)[0], **config) as gw:
            table = grpc_routes(1, http_fake, grpc_fake)
            assert (await http(gw.ports["admin"], "PUT", "/routes", table)).status == 200
            await wait_ready(gw)
            client = aioclient.InferenceServerClient(f"127.0.0.1:{gw.ports['grpc']}")
            try:
                yield gw, grpc_fake, client
            finally:
                await client.close()
    finally:
        await grpc_fake.stop()
        await http_fake.stop()


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_grpc_shared_memory_is_invalid_argument_but_the_text_in_tensor_data_passes() -> None:
    async def main() -> None:
        async with grpc_system() as (gw, fake, client):
            shm = aioclient.InferInput("x", [2, 4], "FP32")
            shm.set_shared_memory("region", 32)
            out = aioclient.InferRequestedOutput("y")
            out.set_shared_memory("out-region", 32)
            calls = [
                client.infer("d", [shm]),
                client.infer("d", [x_input(X)], outputs=[out]),
                client.infer("d", [x_input(X)], parameters={"shared_memory_offset": 0}),
            ]
            for call in calls:
                with pytest.raises(InferenceServerException) as info:
                    await call
                assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
                assert info.value.message() == SHM_REFUSED
            assert fake.requests == []
            assert gw.stats.requests[("default/d", "", "grpc", 400)] == 3
            # the marker inside tensor bytes, small and large (> 64 KiB: only non-raw fields
            # are scanned) requests, and in a request id, is no reason to refuse
            marker = np.frombuffer(b"shared_memory_region" * 4, dtype=np.float32).reshape(1, 20)
            big = np.tile(marker, (1, 1000))
            for x in (marker, big):
                result = await client.infer("d", [x_input(x)], request_id="shared_memory_x")
                np.testing.assert_array_equal(result.as_numpy("y"), x)
            assert len(fake.requests) == 2

    uvloop.run(main())


def test_grpc_wire_finds_every_parameter_key_like_protobuf_does() -> None:
    request = pb.ModelInferRequest(model_name="d", id="shared_memory")
    request.parameters["priority"].int64_param = 1
    tensor = request.inputs.add(name="s", datatype="BYTES", shape=[1])
    tensor.parameters["binary_data_size"].int64_param = 4
    tensor.contents.bytes_contents.append(b"shared_memory_region")
    request.outputs.add(name="y").parameters["shared_memory_region"].string_param = "r"
    request.raw_input_contents.append(b"shared_memory" * 10_000)
    raw = request.SerializeToString()
    assert infer_parameter_keys(raw) == [b"priority", b"binary_data_size", b"shared_memory_region"]
    assert mentions(raw, b"shared_memory")
    only_raw = pb.ModelInferRequest(model_name="d", raw_input_contents=[b"shared_memory" * 10_000])
    assert not mentions(only_raw.SerializeToString(), b"shared_memory")


def test_grpc_compressed_messages_are_bounded_after_decompression() -> None:
    async def main() -> None:
        async with grpc_system(max_body_bytes=1024 * 1024) as (_gw, fake, client):
            small = np.zeros((1, 1024), dtype=np.float32)
            result = await client.infer("d", [x_input(small)], compression_algorithm="gzip")
            np.testing.assert_array_equal(result.as_numpy("y"), small)
            # 16 MiB of zeros compress to a few KiB: the limit applies to the inflated size
            zeros = np.zeros((1, 4 * 1024 * 1024), dtype=np.float32)
            with pytest.raises(InferenceServerException) as info:
                await client.infer("d", [x_input(zeros)], compression_algorithm="gzip")
            assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert len(fake.requests) == 1

    uvloop.run(main())


def test_grpc_triton_errors_are_mapped_and_sanitized() -> None:
    async def main() -> None:
        async with grpc_system() as (gw, _fake, client):
            cases = [
                (
                    "INTERNAL",
                    "failed to parse the request JSON buffer: x",
                    "INVALID_ARGUMENT",
                    "the request body is not valid JSON (x)",
                ),
                (
                    "INTERNAL",
                    PY_FAILURE.replace("default.diamond.v1", "ws.d.v1"),
                    "INTERNAL",
                    "Failed to process the request(s) for model 'd', message: RuntimeError: boom "
                    "in the model",
                ),
                (
                    "INVALID_ARGUMENT",
                    "[request id: <id_unknown>] bad 'ws.d.v1'",
                    "INVALID_ARGUMENT",
                    "bad 'd'",
                ),
            ]
            for code, details, want_code, want_message in cases:
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("d", [x_input(X)], request_id=f"fail:{code}:{details}")
                assert info.value.status() == f"StatusCode.{want_code}"
                assert info.value.message() == want_message
            assert gw.stats.requests[("default/d", "d/1", "grpc", 400)] == 2
            assert gw.stats.requests[("default/d", "d/1", "grpc", 500)] == 1

    uvloop.run(main())


def test_grpc_raw_channel_sees_the_same_refusal() -> None:
    async def main() -> None:
        async with grpc_system() as (gw, fake, _client):
            request = pb.ModelInferRequest(model_name="d")
            request.parameters["shared_memory_region"].string_param = "r"
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.ports['grpc']}") as channel:
                raw = channel.unary_unary(f"/{SERVICE}/ModelInfer")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(request.SerializeToString())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fake.requests == []

    uvloop.run(main())
