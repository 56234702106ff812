"""Large bodies through the real gateway, both ways.

Requests and answers of many reads go client → gateway → Triton-like upstream → gateway →
client over loopback, written in pieces on both sides, and must arrive byte-exact, stamped,
framed, and on a connection that stays usable. The failure paths of such bodies (a client
leaving mid-body, double framing, a body past the limit, a large upstream error, 100-continue)
and data capture, which keeps the whole body, are covered too (a large shadow pair: in
tests/unit/test_gateway_shadow.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop

from rollout import proxy
from rollout.capture import closed_segments, read_segment
from rollout.tensors import decode_http
from tests.unit.test_gateway_capture import capture_table, records
from tests.unit.test_gateway_harness import (
    FakeTriton,
    Message,
    RawClient,
    Reply,
    build_request,
    put_routes,
    route,
    running_gateway,
    table,
    triton_like,
    variant,
)

V1 = "diamond/1"
PATH = "/v2/models/diamond/infer"
LARGE = 64 * 1024  # "large": past one read of the gateway and of the fake Triton
VALUES = np.arange(3 * LARGE // 4, dtype=np.float32)  # 192 KiB of FP32


def binary_request(values: np.ndarray = VALUES, **extra: Any) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            **extra,
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, int(values.size)],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": int(values.nbytes)},
                }
            ],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + values.tobytes(), headers


def check_answer(reply: Message, raw: bytes, request_id: str | None = None) -> None:
    assert reply.status == 200, reply.body[:200]
    assert int(reply.headers["content-length"]) == len(reply.body)
    json_len = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.body[:json_len])
    assert (answer["model_name"], answer["model_version"]) == ("diamond", "1")
    assert answer["parameters"] == {"lastmile_variant": V1}
    assert answer.get("id") == request_id
    assert reply.body[json_len:] == raw
    assert reply.headers["lastmile-variant"] == V1


async def diamond(fake: FakeTriton) -> tuple[Any, Any]:
    target = {"url": fake.url, "model": "default.diamond.v1"}
    return route("diamond", [variant("diamond", 1, [target])]), target


def run(scenario: Any, fake: FakeTriton | None = None, **config: Any) -> None:
    async def main() -> None:
        upstream = await (fake or FakeTriton(triton_like)).start()
        try:
            async with running_gateway(**config) as gw:
                pipeline, _ = await diamond(upstream)
                assert (await put_routes(gw, table(1, pipeline))).status == 200
                await scenario(gw, upstream)
        finally:
            await upstream.stop()

    uvloop.run(main())


async def send_in_pieces(client: RawClient, data: bytes, pieces: list[int]) -> None:
    offset = 0
    for size in [*pieces, len(data)]:
        client.send(data[offset : offset + size])
        await client.writer.drain()
        offset += size
        if offset >= len(data):
            return


def test_large_binary_requests_and_answers_are_exact_however_they_are_cut() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        body, headers = binary_request(id="req-1")
        data = build_request("POST", PATH, body, headers)
        head_end = data.index(b"\r\n\r\n") + 4
        raw = VALUES.tobytes()
        # one keep-alive connection: whole, head alone, head + part, head cut, body in bits
        for pieces in ([], [head_end], [head_end + 100], [head_end - 10], [head_end, 1, 7, 4093]):
            await send_in_pieces(client, data, pieces)
            reply = await client.response()
            check_answer(reply, raw, "req-1")
            seen = fake.infers[-1]
            assert seen.body == body
            assert seen.headers["content-length"] == str(len(body))
        assert len(fake.infers) == 5
        await client.close()

    # the upstream writes its answers in pieces as well: inside the head, then odd sizes
    run(scenario, FakeTriton(triton_like, pieces=(30, 200, 5000, 65536)))


def test_a_request_pipelined_behind_a_large_body_is_answered_in_turn() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        client = await RawClient.connect(gw.ports["http"])
        body, headers = binary_request()
        large = build_request("POST", PATH, body, headers)
        small = build_request("GET", "/v2/models/diamond/ready")
        client.send(large + small + large)
        first, second, third = [await client.response() for _ in range(3)]
        check_answer(first, VALUES.tobytes())
        assert second.status == 200 and second.body == b""
        check_answer(third, VALUES.tobytes())
        await client.close()

    run(scenario)


def test_a_large_json_body_is_parsed_where_the_gateway_needs_it() -> None:
    """Large JSON: forwarded whole, and its answer stamped."""

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        data = [float(i) for i in range(LARGE // 4)]
        body = json.dumps(
            {
                "id": "json-1",
                "inputs": [
                    {"name": "x", "shape": [1, len(data)], "datatype": "FP32", "data": data}
                ],
            }
        ).encode()
        assert len(body) > LARGE
        client = await RawClient.connect(gw.ports["http"])
        reply = await client.request("POST", PATH, body, {"Content-Type": "application/json"})
        assert reply.status == 200
        answer = reply.json()
        assert (answer["model_name"], answer["id"]) == ("diamond", "json-1")
        assert answer["outputs"][0]["data"] == data
        assert fake.infers[-1].body == body
        await client.close()

    run(scenario)


def test_a_large_error_from_triton_is_mapped_and_hides_internal_names() -> None:
    async def failing(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            detail = "default.diamond.v1 failed: " + "x" * (2 * LARGE)
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": detail}).encode()
        return await triton_like(req)

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        body, headers = binary_request()
        client = await RawClient.connect(gw.ports["http"])
        reply = await client.request("POST", PATH, body, headers)
        assert reply.status == 400
        assert b"default.diamond.v1" not in reply.body and "error" in reply.json()
        assert int(reply.headers["content-length"]) == len(reply.body)
        # the connection is still in step
        assert (await client.request("GET", "/v2/models/diamond/ready")).status == 200
        await client.close()

    run(scenario, FakeTriton(failing, pieces=(10, 4096)))


def test_a_client_leaving_mid_body_sends_nothing_upstream() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        body, headers = binary_request()
        data = build_request("POST", PATH, body, headers)
        leaving = await RawClient.connect(gw.ports["http"])
        leaving.send(data[: len(data) // 2])
        await leaving.writer.drain()
        await leaving.close()
        client = await RawClient.connect(gw.ports["http"])
        check_answer(await client.request("POST", PATH, body, headers), VALUES.tobytes())
        assert len(fake.infers) == 1  # only the complete request reached the upstream
        await client.close()

    run(scenario)


def test_double_framing_is_refused_and_expect_continue_is_honoured() -> None:
    async def scenario(gw: Any, fake: FakeTriton) -> None:
        body, headers = binary_request()
        both = await RawClient.connect(gw.ports["http"])
        framed = {**headers, "Content-Length": str(len(body)), "Transfer-Encoding": "chunked"}
        both.send(build_request("POST", PATH, headers=framed) + body)
        refused = await both.response()
        assert refused.status == 400 and "error" in refused.json()
        assert await both.closed_by_peer()
        await both.close()

        client = await RawClient.connect(gw.ports["http"])
        expect = {**headers, "Content-Length": str(len(body)), "Expect": "100-continue"}
        client.send(build_request("POST", PATH, headers=expect))
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        client.send(body)
        check_answer(await client.response(), VALUES.tobytes())
        assert len(fake.infers) == 1
        await client.close()

    run(scenario)


def test_a_refused_large_body_still_lets_the_client_read_the_refusal() -> None:
    """413 for a body past the limit, sent whole: the gateway reads and drops the rest before
    it closes, so the client's kernel gets no reset that would destroy the answer."""

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        body, headers = binary_request()
        for _ in range(3):
            client = await RawClient.connect(gw.ports["http"])
            client.send(build_request("POST", PATH, body, headers))
            refused = await client.response()
            assert refused.status == 413 and "body larger than" in refused.json()["error"]
            assert await client.closed_by_peer()
            await client.close()
        assert fake.infers == []

    run(scenario, max_body_bytes=LARGE)


def test_a_client_that_never_stops_sending_after_a_refusal_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy, "LINGER_S", 0.1)

    async def scenario(gw: Any, fake: FakeTriton) -> None:
        body, headers = binary_request()
        client = await RawClient.connect(gw.ports["http"])
        head = build_request("POST", PATH, headers={**headers, "Content-Length": "9" * 12})
        client.send(head)
        refused = await client.response()
        assert refused.status == 413
        with pytest.raises(ConnectionError):  # the gateway aborts once the linger is over
            async with asyncio.timeout(10):
                while True:
                    client.send(body)
                    await client.writer.drain()
        await client.close()

    run(scenario, max_body_bytes=LARGE)


def test_large_calls_are_captured_whole(tmp_path: Path) -> None:
    async def main() -> None:
        fake = await FakeTriton(triton_like, pieces=(100, 30000)).start()
        try:
            async with running_gateway(capture_dir=str(tmp_path)) as gw:
                assert (await put_routes(gw, capture_table(fake, 1.0))).status == 200
                body, headers = binary_request()
                client = await RawClient.connect(gw.ports["http"])
                reply = await client.request("POST", "/v2/models/fraud/infer", body, headers)
                assert reply.status == 200
                await client.close()
                assert gw.capture is not None
                (record,) = await records(gw.capture, 1)
                sent = decode_http(record.request, record.request_hlen, side="inputs")
                got = decode_http(record.response, record.response_hlen)
                assert np.array_equal(sent["x"], VALUES.reshape(1, -1))
                assert np.array_equal(got["y"], VALUES.reshape(1, -1))
                assert list(closed_segments(tmp_path))
                assert sum(1 for path in closed_segments(tmp_path) for _ in read_segment(path)) == 1
        finally:
            await fake.stop()

    uvloop.run(main())
