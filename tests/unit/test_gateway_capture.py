"""Data capture in the gateway (rollout.capture): a route's sampled calls reach the spool as
raw bytes, HTTP and gRPC, and decode back to what the client sent and what it got; bounds drop
and count; segments survive a reader that meets a damaged tail.

The gateway and its spool run for real; the Triton behind them is the harness's fake (the
subject here is what the gateway captures, not what a model computes).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import uvloop

from rollout.capture import GRPC, HTTP, CaptureSpool, Record, closed_segments, read_segment
from rollout.routing import Route, RoutingTable
from rollout.tensors import decode_grpc, decode_http
from tests.unit.grpc_harness import FakeGrpcTriton, fakes, frontend, variant, x_input
from tests.unit.test_gateway_harness import (
    FakeTriton,
    RawClient,
    http,
    infer_body,
    put_routes,
    route,
    running_gateway,
    table,
    triton_like,
)
from tests.unit.test_gateway_harness import variant as http_variant

ROUTE = "default/fraud"


async def records(spool: CaptureSpool, expected: int, timeout: float = 10.0) -> list[Record]:
    """Every record written so far, once `expected` of them are in closed segments."""
    deadline = time.monotonic() + timeout
    while True:
        spool.flush()
        got = [r for path in closed_segments(spool.directory) for r in read_segment(path)]
        if len(got) >= expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.02)


def capture_table(fake: FakeTriton, capture: float) -> bytes:
    targets = [{"url": fake.url, "model": "default.fraud.v1"}]
    return table(1, route("fraud", [http_variant("fraud", 1, targets)], capture=capture))


def test_http_calls_are_sampled_at_the_route_rate_and_decode_back(tmp_path: Path) -> None:
    async def main() -> None:
        fake = await FakeTriton(triton_like).start()
        try:
            async with running_gateway(capture_dir=str(tmp_path)) as gw:
                assert (await put_routes(gw, capture_table(fake, 0.5))).status == 200
                client = await RawClient.connect(gw.ports["http"])
                sent = [[float(i), i + 0.5, -i, 1e6 * i] for i in range(10)]
                for values in sent:
                    resp = await client.request(
                        "POST", "/v2/models/fraud/infer", infer_body(values), {}
                    )
                    assert resp.status == 200
                # binary tensors: JSON header + raw FP32 bytes, both ways
                raw = np.arange(8, dtype=np.float32)
                header = json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "x",
                                "shape": [2, 4],
                                "datatype": "FP32",
                                "parameters": {"binary_data_size": raw.nbytes},
                            }
                        ]
                    }
                ).encode()
                for _ in range(2):
                    resp = await client.request(
                        "POST",
                        "/v2/models/fraud/infer",
                        header + raw.tobytes(),
                        {"Inference-Header-Content-Length": str(len(header))},
                    )
                    assert resp.status == 200
                await client.close()
                assert gw.capture is not None
                got = await records(gw.capture, 6)
                metrics = await http(gw.ports["metrics"], "GET", "/metrics")
        finally:
            await fake.stop()
        assert len(got) == 6  # every second call of 12
        assert {(r.protocol, r.route, r.variant) for r in got} == {(HTTP, ROUTE, "fraud/1")}
        json_records, binary_records = got[:5], got[5:]
        for record, values in zip(json_records, sent[1::2], strict=True):
            assert record.request_hlen == -1
            inputs = decode_http(record.request, None, side="inputs")
            np.testing.assert_array_equal(inputs["x"], np.array([values], dtype=np.float32))
            outputs = decode_http(record.response, None)
            np.testing.assert_array_equal(outputs["y"], np.array([values], dtype=np.float32))
        (record,) = binary_records
        assert record.request_hlen == len(header) and record.response_hlen > 0
        inputs = decode_http(record.request, record.request_hlen, side="inputs")
        np.testing.assert_array_equal(inputs["x"], raw.reshape(2, 4))
        outputs = decode_http(record.response, record.response_hlen)
        np.testing.assert_array_equal(outputs["y"], raw.reshape(2, 4))
        text = metrics.body.decode()
        assert f'lastmile_gateway_capture_total{{outcome="captured",route="{ROUTE}"}} 6.0' in text

    uvloop.run(main())


def test_no_rate_or_failed_calls_capture_nothing(tmp_path: Path) -> None:
    async def failing(req):  # type: ignore[no-untyped-def]
        if req.path.endswith("/infer") and b"99" in req.body:
            return 500, {"Content-Type": "application/json"}, b'{"error":"model broke"}'
        return await triton_like(req)

    async def main() -> None:
        fake = await FakeTriton(failing).start()
        try:
            async with running_gateway(capture_dir=str(tmp_path)) as gw:
                client = await RawClient.connect(gw.ports["http"])
                assert (await put_routes(gw, capture_table(fake, 0.0))).status == 200
                for _ in range(3):
                    resp = await client.request("POST", "/v2/models/fraud/infer", infer_body(), {})
                    assert resp.status == 200
                assert (await put_routes(gw, capture_table(fake, 1.0))).status == 200
                bad = infer_body([99.0])
                assert (await client.request("POST", "/v2/models/fraud/infer", bad, {})).status
                good = await client.request("POST", "/v2/models/fraud/infer", infer_body(), {})
                assert good.status == 200
                await client.close()
                assert gw.capture is not None
                got = await records(gw.capture, 1)
        finally:
            await fake.stop()
        assert len(got) == 1  # the successful call after the rate went to 1.0, nothing else
        np.testing.assert_array_equal(
            decode_http(got[0].request, None, side="inputs")["x"], [[1.0, 2.0, 3.0, 4.0]]
        )

    uvloop.run(main())


def test_grpc_calls_are_captured_on_the_relay_fast_path(tmp_path: Path) -> None:
    async def main() -> None:
        spool = CaptureSpool(tmp_path)
        spool.start()
        try:
            async with fakes(FakeGrpcTriton(factor=2.0)) as (fake,):
                routing = RoutingTable.build(
                    1, [Route("default", "d", (variant("d", 3, 100, fake),), capture=1.0)]
                )
                async with frontend(routing) as (gw, _stats, client):
                    gw.capture = spool
                    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
                    for i in range(3):
                        await client.infer("d", [x_input(x + i)])
                    assert gw.relay is not None and gw.relay.counts["fast"] == 3
            got = await records(spool, 3)
        finally:
            spool.stop()
        assert [(r.protocol, r.route, r.variant) for r in got] == [(GRPC, "default/d", "d/3")] * 3
        for i, record in enumerate(got):
            inputs = decode_grpc(record.request, side="inputs")
            np.testing.assert_array_equal(inputs["x"], x + i)
            outputs = decode_grpc(record.response)
            np.testing.assert_array_equal(outputs["y"], 2 * (x + i))

    uvloop.run(main())


def test_the_memory_bound_drops_and_counts(tmp_path: Path) -> None:
    spool = CaptureSpool(tmp_path, max_pending_bytes=100)  # not started: nothing is written
    assert spool.offer("ws/p", "p/1", HTTP, [b"a" * 60], -1, [b"b" * 30], -1)
    assert not spool.offer("ws/p", "p/1", HTTP, [b"a" * 60], -1, [b"b" * 30], -1)
    assert (spool.captured, spool.dropped) == ({"ws/p": 1}, {"ws/p": 1})


def test_the_disk_bound_drops_once_segments_pile_up(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000001-1-000001.seg").write_bytes(b"x" * 2048)
    spool = CaptureSpool(tmp_path, max_disk_bytes=1024)
    spool.start()
    try:
        assert not spool.offer("ws/p", "p/1", HTTP, [b"req"], -1, [b"resp"], -1)
        assert spool.dropped == {"ws/p": 1}
    finally:
        spool.stop()


def test_a_killed_gateways_part_file_is_closed_and_a_damaged_tail_ends_the_segment(
    tmp_path: Path,
) -> None:
    spool = CaptureSpool(tmp_path)
    spool.start()
    for i in range(3):
        spool.offer("ws/p", "p/1", GRPC, [b"request %d" % i], -1, [b"response"], -1)
    spool.stop()
    (segment,) = closed_segments(tmp_path)
    data = segment.read_bytes()
    part = tmp_path / "99999999999999999999-2-000001.seg.part"
    part.write_bytes(data[:-3])  # as a killed writer leaves it: the last record cut short
    segment.unlink()
    restarted = CaptureSpool(tmp_path)
    restarted.start()  # a new gateway closes what the old one left
    restarted.stop()
    (closed,) = closed_segments(tmp_path)
    assert closed.name == "99999999999999999999-2-000001.seg"
    assert [r.request for r in read_segment(closed)] == [b"request 0", b"request 1"]


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), True, "0.5"])
def test_a_capture_rate_outside_0_1_is_refused(bad: object) -> None:
    fake = FakeGrpcTriton()  # not started: only its address is used
    fake.port = 9
    with pytest.raises(ValueError, match=r"capture must be in \[0, 1\]"):
        Route("default", "d", (variant("d", 1, 100, fake),), capture=bad)  # type: ignore[arg-type]
    raw = {
        "generation": 1,
        "routes": {
            "default/d": {
                "workspace": "default",
                "pipeline": "d",
                "variants": [variant("d", 1, 100, fake).to_dict()],
                "capture": 0.25,
            }
        },
    }
    assert RoutingTable.from_json(json.dumps(raw)).routes["default/d"].capture == 0.25


def test_json_calls_decoded_together_equal_one_by_one() -> None:
    """The summariser's batch path (rollout.tensors.decode_json_batch) gives what decoding
    each call gives, and declines anything irregular so each call is decoded on its own."""
    from rollout.tensors import decode_json_batch

    rows = [[[i, i + 0.5, -i, 2.0 * i]] for i in range(5)]
    bodies = [
        json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": r},
                               {"name": "k", "shape": [1], "datatype": "INT64", "data": [i]}]})
        .encode()
        for i, r in enumerate(rows)
    ]  # fmt: skip
    batch = decode_json_batch(bodies, "inputs")
    assert batch is not None and set(batch) == {"x", "k"}
    for i, each in enumerate(bodies):
        one = decode_http(each, None, side="inputs")
        np.testing.assert_array_equal(batch["x"][i], one["x"])
        np.testing.assert_array_equal(batch["k"][i], one["k"])
        assert batch["x"].dtype == one["x"].dtype and batch["k"].dtype == one["k"].dtype
    flat = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "data": [9, 9, 9, 9]},
                                  {"name": "k", "shape": [1], "datatype": "INT64",
                                   "data": [7]}]}).encode()  # fmt: skip
    flats = decode_json_batch([flat, flat], "inputs")  # flat data fills the shape too
    assert flats is not None and flats["x"][-1].tolist() == [[9.0, 9.0, 9.0, 9.0]]
    assert decode_json_batch([*bodies, flat], "inputs") is None  # flat and nested: one by one

    def body(**tensor: object) -> bytes:
        return json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "data": [1, 2, 3, 4], **tensor}]}).encode()  # fmt: skip

    for odd in (
        body(shape=[1, 3]),  # another shape
        body(datatype="FP64"),  # another datatype
        body(datatype="BYTES", data=["a", "b", "c", "d"]),
        body(data=[1, 2, 3]),  # does not fill its shape
        body(parameters={"binary_data_size": 16}),
        b"not json",
        json.dumps({"outputs": []}).encode(),  # no inputs
    ):
        assert decode_json_batch([body(), odd], "inputs") is None, odd
    assert decode_json_batch([], "inputs") is None


def test_alike_json_calls_take_the_fast_path_and_decode_exactly_as_one_by_one() -> None:
    """Bodies that differ only in their flat data arrays (one client's traffic): their numbers
    are read per tensor in one C call, and give exactly what json.loads and decode_http give
    per body, dtype and rounding included; anything less alike is left to the general path."""
    from rollout.tensors import _decode_alike, decode_json_batch

    rng = np.random.default_rng(5)
    tensors = [
        ("x", "FP32", [1, 4], lambda: [float(v) for v in rng.normal(size=4)]),
        ("big", "INT64", [2], lambda: [int(v) for v in rng.integers(2**62, 2**63 - 1, 2)]),
        ("u", "UINT8", [3], lambda: [int(v) for v in rng.integers(0, 255, 3)]),
        ("h", "FP16", [1], lambda: [float(rng.normal())]),
        ("b", "BF16", [1], lambda: [float(rng.normal())]),
        ("d", "FP64", [2], lambda: [1e-300 * float(rng.normal()), 12345.678901234567]),
        ("empty", "FP32", [0], list),
    ]

    def answer() -> bytes:  # as Triton writes an ensemble's answer
        outputs = [{"name": n, "datatype": d, "shape": s, "data": f()} for n, d, s, f in tensors]
        doc = {
            "model_name": "fraud",
            "model_version": "2",
            "parameters": {"sequence_id": 0, "sequence_end": False},
            "outputs": outputs,
        }
        return json.dumps(doc).encode()  # fmt: skip

    bodies = [answer() for _ in range(50)]
    fast = _decode_alike(bodies, "outputs")
    assert fast is not None and set(fast) == {t[0] for t in tensors}
    assert decode_json_batch(bodies, "outputs").keys() == fast.keys()  # type: ignore[union-attr]
    for i, body in enumerate(bodies):
        one = decode_http(body, None, side="outputs")
        for name in fast:
            assert fast[name].dtype == one[name].dtype, name
            np.testing.assert_array_equal(fast[name][i], one[name], err_msg=name)

    def call(i: int, **extra: object) -> bytes:
        return json.dumps({**extra, "inputs": [{"name": "k", "shape": [1], "datatype": "INT32",
                                                "data": [i]}]}).encode()  # fmt: skip

    for unlike in (
        [call(1, id="a"), call(2, id="b")],  # ids differ: the general path
        [call(1), json.dumps({"inputs": [{"name": "k", "shape": [1], "datatype": "INT32",
                                          "data": [1.5]}]}).encode()],  # a fraction in an INT
        [json.dumps({"inputs": [{"name": "k", "shape": [1], "datatype": "BOOL",
                                 "data": [True]}]}).encode()] * 2,
        [call(1), call(2)[:-3]],  # cut short
    ):  # fmt: skip
        assert _decode_alike(unlike, "inputs") is None, unlike
    together = decode_json_batch([call(1, id="a"), call(2, id="b")], "inputs")
    assert together is not None and together["k"].tolist() == [[1], [2]]


def test_the_summariser_decodes_irregular_batches_call_by_call() -> None:
    """One bad call in a window: the others are still summarised, the bad one is counted."""
    from manager.services.capture import PassResult, collect

    def record(data: list[float], ts: float) -> Record:
        request = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, len(data)], "datatype": "FP32", "data": data}]}
        ).encode()
        answer = json.dumps(
            {"outputs": [{"name": "y", "shape": [1, len(data)], "datatype": "FP32", "data": data}]}
        ).encode()
        return Record(HTTP, ts, "default/p", "p/1", request, -1, answer, -1)  # fmt: skip

    good = [record([1.0, 2.0, 3.0, 4.0], 1.8e9 + i) for i in range(3)]
    bad = Record(HTTP, 1.8e9 + 5, "default/p", "p/1", b"{oops", -1, b"{}", -1)
    result = PassResult()
    groups = collect([*good, bad], 60, result)
    (x_key,) = [k for k in groups if k[3] == "inputs"]
    assert sum(a.shape[0] for a in groups[x_key]) == 3
    assert result.records == 4 and result.undecodable == 2 and result.values == 24


def test_capture_url_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rollout.gateway import parse_args

    url = "http://manager:8080/api/v1/gateway/capture"
    for argv, message in (
        (["--capture-url", url], "--capture-url needs --capture-dir"),
        (["--capture-dir", str(tmp_path), "--capture-url", "manager:8080"], "http:// or https://"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("t" * 24)
    config = parse_args(
        ["--capture-dir", str(tmp_path), "--capture-url", url, "--routes-token-file", str(token)]
    )
    assert (config.capture_url, config.routes_token) == (url, "t" * 24)
