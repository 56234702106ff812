"""The shadow diff collector: decoding KServe v2 answers and aggregating primary/candidate pairs.

Responses are built with tritonclient's own encoders (HTTP binary layout, gRPC protobuf) so the
decoder is checked against the client library, not against itself. The worker thread is synced
with `drain()`, never with sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb

from rollout import shadow_diff, shadow_report
from rollout.shadow_diff import DecodeError, DiffCollector, RawResponse, decode, decode_grpc

NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip

TIMEOUT = 30.0


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    if datatype == "BYTES":
        items = [b"a", b"", b"\x00tail\x00", "é".encode(), b"x" * 300, b"z"][:count]
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype: np.dtype[Any] = np.dtype(NUMERIC[datatype])
    if dtype.kind == "f":
        return (np.arange(count, dtype=np.float64) * 0.5 - 1.25).astype(dtype).reshape(shape)
    top = int(np.iinfo(dtype.type).max)  # the largest value checks full-width decoding
    return np.array([top, 0, 1, 7, top - 1, 2][:count], dtype=dtype).reshape(shape)


def http_body(
    outputs: dict[str, np.ndarray], binary: bool | set[str] = False, **header: Any
) -> RawResponse:
    """A Triton-like HTTP infer response; `binary` names the outputs sent as raw bytes."""
    entries, blobs = [], []
    for name, array in outputs.items():
        datatype = "BYTES" if array.dtype == object else httpclient.np_to_triton_dtype(array.dtype)
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        as_binary = binary is True or (isinstance(binary, set) and name in binary)
        tensor.set_data_from_numpy(array, binary_data=as_binary)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            blob = tensor._get_binary_data()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor._get_tensor()["data"]
        entries.append(entry)
    doc = {"model_name": "fraud", "model_version": "3", **header, "outputs": entries}
    head = json.dumps(doc).encode()
    if not blobs:
        return RawResponse("http", head, None)
    return RawResponse("http", head + b"".join(blobs), len(head))


def grpc_body(outputs: dict[str, np.ndarray], raw: bool = True) -> RawResponse:
    """A ModelInferResponse with raw_output_contents, or typed contents when raw is False."""
    message = pb.ModelInferResponse(model_name="fraud", model_version="3")
    for name, array in outputs.items():
        datatype = "BYTES" if array.dtype == object else httpclient.np_to_triton_dtype(array.dtype)
        tensor = message.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        flat = array.reshape(-1).tolist()
        if raw:
            encoder = httpclient.InferInput(name, list(array.shape), datatype)
            encoder.set_data_from_numpy(array, binary_data=True)
            message.raw_output_contents.append(encoder._get_binary_data())
        elif datatype == "BOOL":
            tensor.contents.bool_contents.extend(flat)
        elif datatype in ("INT8", "INT16", "INT32"):
            tensor.contents.int_contents.extend(flat)
        elif datatype == "INT64":
            tensor.contents.int64_contents.extend(flat)
        elif datatype in ("UINT8", "UINT16", "UINT32"):
            tensor.contents.uint_contents.extend(flat)
        elif datatype == "UINT64":
            tensor.contents.uint64_contents.extend(flat)
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(flat)
        elif datatype == "FP64":
            tensor.contents.fp64_contents.extend(flat)
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(flat)
        else:
            raise AssertionError(f"{datatype} has no typed contents")
    return RawResponse("grpc", message.SerializeToString(), None)


def assert_same(decoded: np.ndarray, expected: np.ndarray) -> None:
    assert decoded.shape == expected.shape
    if expected.dtype == object:
        assert decoded.dtype == object
        assert decoded.tolist() == expected.tolist()
    else:
        assert decoded.dtype == expected.dtype
        np.testing.assert_array_equal(decoded, expected)


# ---------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_decodes_every_datatype(datatype: str, binary: bool) -> None:
    expected = sample(datatype)
    assert_same(decode(http_body({"y": expected}, binary=binary))["y"], expected)


def test_http_json_bytes_are_strings_and_nested_data_is_accepted() -> None:
    head = {
        "model_name": "m",
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["cat", "dög"]},
            {"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [[0.5, 1.5], [2, 3]]},
        ],
    }
    out = decode(RawResponse("http", json.dumps(head).encode(), None))
    assert out["label"].tolist() == [b"cat", "dög".encode()]
    np.testing.assert_array_equal(out["p"], np.array([[0.5, 1.5], [2, 3]], np.float32))


def test_http_mixed_json_and_binary_outputs_split_at_the_header_length() -> None:
    outputs = {
        "a": sample("FP32", (4, 2)),
        "b": sample("INT64", (3,)),
        "c": sample("BYTES", (2, 2)),
        "d": sample("UINT8", (5, 1)),
    }
    raw = http_body(outputs, binary={"a", "c", "d"}, id="req-9", parameters={"k": "v"})
    assert raw.header_length is not None and raw.header_length < len(raw.body)
    decoded = decode(raw)
    assert list(decoded) == ["a", "b", "c", "d"]
    for name, expected in outputs.items():
        assert_same(decoded[name], expected)


def test_http_bf16_binary_is_widened_to_fp32() -> None:
    values = np.array([1.0, -2.5, 0.15625, 3.0e38], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    head = json.dumps(
        {"outputs": [{"name": "h", "datatype": "BF16", "shape": [4],
                      "parameters": {"binary_data_size": len(bf16)}}]}
    ).encode()  # fmt: skip
    out = decode(RawResponse("http", head + bf16, len(head)))["h"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (values.view(np.uint32) & 0xFFFF0000).view(np.float32))


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_grpc_decodes_raw_output_contents(datatype: str) -> None:
    expected = sample(datatype)
    assert_same(decode(grpc_body({"y": expected, "z": sample("FP32")}))["y"], expected)


@pytest.mark.parametrize("datatype", [d for d in [*NUMERIC, "BYTES"] if d != "FP16"])
def test_grpc_decodes_typed_contents(datatype: str) -> None:
    expected = sample(datatype)
    assert_same(decode(grpc_body({"y": expected}, raw=False))["y"], expected)


def binary_output(size: int, tail: bytes, split: bool = True) -> RawResponse:
    head = json.dumps(
        {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1],
                      "parameters": {"binary_data_size": size}}]}
    ).encode()  # fmt: skip
    return RawResponse("http", head + tail, len(head) if split else None)


def json_output(datatype: str, data: Any, shape: Any = (1,)) -> RawResponse:
    body = {"outputs": [{"name": "y", "datatype": datatype, "shape": list(shape), "data": data}]}
    return RawResponse("http", json.dumps(body).encode(), None)


@pytest.mark.parametrize(
    "raw",
    [
        RawResponse("http", b"not json", None),
        RawResponse("http", b'{"outputs": 3}', None),
        RawResponse("http", b'{"outputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}',
                    None),
        RawResponse("http", b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}',
                    None),
        RawResponse("http", b"{}", 10),  # header length past the body
        json_output("FP32", [1, 2], shape=(3,)),  # elements do not fill the shape
        json_output("FP32", [1], shape=(-1,)),
        json_output("NOPE", [1]),
        json_output("INT8", ["x"]),
        json_output("BYTES", [1]),
        binary_output(8, b"\x00" * 4),  # binary_data_size past the body
        binary_output(3, b"\x00" * 3),  # not a whole FP32
        binary_output(4, b"\x00" * 4, split=False),  # binary bytes but no header length
        RawResponse("grpc", b"\xff\xff\xff", None),
        RawResponse("smtp", b"", None),
    ],
)  # fmt: skip
def test_malformed_responses_raise_decode_error(raw: RawResponse) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


def test_truncated_binary_bytes_element_is_a_decode_error() -> None:
    head = json.dumps(
        {"outputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 6}}]}
    ).encode()  # fmt: skip
    with pytest.raises(DecodeError, match="overruns"):
        decode(RawResponse("http", head + b"\x09\x00\x00\x00ab", len(head)))


def test_grpc_raw_contents_count_must_match_outputs() -> None:
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="a", datatype="FP32", shape=[1])
    message.outputs.add(name="b", datatype="FP32", shape=[1])
    message.raw_output_contents.append(b"\x00\x00\x80?")
    with pytest.raises(DecodeError):
        decode_grpc(message.SerializeToString())


# ---------------------------------------------------------------------------------- collector


@pytest.fixture
def collector() -> Iterator[DiffCollector]:
    c = DiffCollector(max_pending=256)
    c.start()
    yield c
    c.stop()


def run_pairs(
    c: DiffCollector,
    primary: RawResponse,
    candidate: RawResponse,
    tolerance: float = 1e-5,
    n: int = 1,
    route: str = "default/fraud",
    mirror: str = "fraud/3",
) -> dict[str, Any]:
    for _ in range(n):
        assert c.submit(route, mirror, primary, candidate, 0.010, 0.020, tolerance)
    assert c.drain(TIMEOUT)
    report = c.reports()[route][mirror]
    json.dumps(report, allow_nan=False)  # plain JSON, no NaN or Infinity
    return report


def probs() -> np.ndarray:
    return np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)


def test_identical_responses_agree_fully(collector: DiffCollector) -> None:
    outputs = {"p": probs(), "label": sample("BYTES", (2,)), "n": sample("INT64", (2, 3))}
    for make in (lambda: http_body(outputs, binary={"p"}), lambda: grpc_body(outputs)):
        collector.reset()
        report = run_pairs(collector, make(), make(), n=3)
        assert report["pairs"] == 3 and report["decode_errors"] == 0 and report["dropped"] == 0
        p = report["outputs"]["p"]
        assert p["compared"] == 3 and p["agreement"] == 1.0
        assert p["max_abs_diff"] == 0.0 and p["mean_abs_diff"] == 0.0
        assert p["class_agreement"] == 1.0
        assert report["outputs"]["label"]["agreement"] == 1.0
        assert report["outputs"]["label"]["max_abs_diff"] is None  # BYTES are no number
        assert report["outputs"]["label"]["class_agreement"] is None
        assert report["outputs"]["n"]["agreement"] == 1.0
        assert report["outputs"]["n"]["class_agreement"] is None  # integers have no argmax


def test_a_json_primary_and_a_binary_candidate_compare_equal(collector: DiffCollector) -> None:
    outputs = {"p": probs(), "label": sample("BYTES", (2,))}
    report = run_pairs(collector, http_body(outputs), http_body(outputs, binary=True))
    assert report["outputs"]["p"]["agreement"] == 1.0
    assert report["outputs"]["label"]["agreement"] == 1.0


@pytest.mark.parametrize(("tolerance", "agreement"), [(1e-5, 0.0), (1.0, 1.0)])
def test_perturbed_output_reports_its_difference(
    collector: DiffCollector, tolerance: float, agreement: float
) -> None:
    primary = http_body({"p": probs()}, binary=True)
    candidate = http_body({"p": probs() + np.float32(0.25)}, binary=True)
    report = run_pairs(collector, primary, candidate, tolerance=tolerance, n=2)
    p = report["outputs"]["p"]
    assert p["compared"] == 2 and p["agreement"] == agreement
    assert p["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    assert p["mean_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    assert p["class_agreement"] == 1.0  # a shift keeps every argmax
    assert report["tolerance"] == tolerance


def test_tolerance_is_relative_to_the_primary(collector: DiffCollector) -> None:
    big = np.array([1000.0, 2000.0], dtype=np.float64)
    report = run_pairs(
        collector, grpc_body({"y": big}), grpc_body({"y": big + 0.5}), tolerance=1e-3
    )  # 0.5 <= 1e-3 + 1e-3 * 1000
    assert report["outputs"]["y"]["agreement"] == 1.0


def test_integer_outputs_must_be_exactly_equal(collector: DiffCollector) -> None:
    a = sample("INT64", (2, 3))
    b = a.copy()
    b[0, 2] += 1
    report = run_pairs(collector, grpc_body({"y": a}), grpc_body({"y": b}), tolerance=10.0)
    assert report["outputs"]["y"]["agreement"] == 0.0
    assert report["outputs"]["y"]["max_abs_diff"] == 1.0


def test_swapped_argmax_lowers_class_agreement(collector: DiffCollector) -> None:
    candidate = probs()
    candidate[1] = [0.3, 0.6, 0.1]  # row 1 now predicts class 1 instead of 0
    report = run_pairs(collector, grpc_body({"p": probs()}), grpc_body({"p": candidate}))
    p = report["outputs"]["p"]
    assert p["agreement"] == 0.0
    assert p["class_agreement"] == 0.5  # one row of two
    assert p["max_abs_diff"] == pytest.approx(0.3)


def test_shape_mismatch_and_missing_outputs_are_counted_apart(collector: DiffCollector) -> None:
    primary = http_body({"p": probs(), "extra": sample("FP32", (1,))}, binary=True)
    candidate = http_body({"p": probs().reshape(3, 2), "unrelated": sample("INT8", (1,))})
    report = run_pairs(collector, primary, candidate, n=2)
    p, extra = report["outputs"]["p"], report["outputs"]["extra"]
    assert p["mismatched_shape"] == 2 and p["compared"] == 0 and p["agreement"] is None
    assert p["max_abs_diff"] is None and p["mean_abs_diff"] is None
    assert extra["missing"] == 2 and extra["compared"] == 0
    assert "unrelated" not in report["outputs"]  # the primary's outputs are the reference


def test_nan_agrees_only_with_nan(collector: DiffCollector) -> None:
    a = np.array([np.nan, 1.0, np.inf], dtype=np.float32)
    same = run_pairs(collector, grpc_body({"y": a}), grpc_body({"y": a.copy()}))
    assert same["outputs"]["y"]["agreement"] == 1.0
    b = np.array([0.0, 1.0, np.inf], dtype=np.float32)
    report = run_pairs(collector, grpc_body({"y": a}), grpc_body({"y": b}), route="r2")
    assert report["outputs"]["y"]["agreement"] == 0.0
    assert report["outputs"]["y"]["max_abs_diff"] == 0.0  # the NaN gap is no figure


def test_decode_errors_are_counted_and_latency_still_kept(collector: DiffCollector) -> None:
    good = http_body({"p": probs()})
    bad = RawResponse("http", b"<html>oops</html>", None)
    report = run_pairs(collector, good, bad)
    assert report["pairs"] == 1 and report["decode_errors"] == 1 and report["outputs"] == {}
    assert report["latency"]["candidate_mean_ms"] == pytest.approx(20.0)


def test_latency_means_p99_and_ratio(collector: DiffCollector) -> None:
    raw = http_body({"p": probs()})
    for i in range(100):
        assert collector.submit("r", "m", raw, raw, 0.001 * (i + 1), 0.002 * (i + 1), 1e-5)
    assert collector.drain(TIMEOUT)
    latency = collector.reports()["r"]["m"]["latency"]
    assert latency["primary_mean_ms"] == pytest.approx(50.5)
    assert latency["candidate_mean_ms"] == pytest.approx(101.0)
    assert latency["ratio_mean"] == pytest.approx(2.0)
    assert latency["primary_p99_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert latency["candidate_p99_ms"] == pytest.approx(2 * latency["primary_p99_ms"])


def test_latency_window_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadow_report, "LATENCY_WINDOW", 5)
    c = DiffCollector(max_pending=64)
    c.start()
    try:
        raw = grpc_body({"y": sample("FP32")})
        for i in range(20):
            assert c.submit("r", "m", raw, raw, float(i), float(i), 1e-5)
        assert c.drain(TIMEOUT)
        latency = c.reports()["r"]["m"]["latency"]
        assert latency["primary_mean_ms"] == pytest.approx(9.5 * 1000)  # mean over all pairs
        assert latency["primary_p99_ms"] <= 19_000 and latency["primary_p99_ms"] >= 18_900
    finally:
        c.stop()


def test_full_queue_drops_and_counts() -> None:
    c = DiffCollector(max_pending=2)  # not started: nothing leaves the queue
    raw = http_body({"p": probs()})
    assert c.submit("r", "m", raw, raw, 0.01, 0.01, 1e-5)
    assert c.submit("r", "m", raw, raw, 0.01, 0.01, 1e-5)
    assert not c.submit("r", "m", raw, raw, 0.01, 0.01, 1e-5)
    assert not c.submit("r", "other", raw, raw, 0.01, 0.01, 1e-5)
    assert not c.drain(0.01)  # no worker yet
    waiting = c.reports()["r"]["m"]
    assert waiting["dropped"] == 1 and waiting["sampled"] == 0
    assert waiting["pairs"] == 3  # every pair's latencies count, compared or not
    c.start()
    try:
        assert c.drain(TIMEOUT)
        reports = c.reports()["r"]
        assert reports["m"]["sampled"] == 2 and reports["m"]["dropped"] == 1
        assert reports["other"]["sampled"] == 0 and reports["other"]["dropped"] == 1
    finally:
        c.stop()


def test_reset_one_route_or_all(collector: DiffCollector) -> None:
    raw = grpc_body({"y": sample("FP32")})
    run_pairs(collector, raw, raw, route="a")
    run_pairs(collector, raw, raw, route="b")
    collector.reset("a")
    assert set(collector.reports()) == {"b"}
    run_pairs(collector, raw, raw, route="a")
    assert collector.reports()["a"]["fraud/3"]["pairs"] == 1
    collector.reset()
    assert collector.reports() == {}


def test_pairs_queued_before_a_reset_are_not_counted_after_it() -> None:
    c = DiffCollector(max_pending=4)
    raw = grpc_body({"y": sample("FP32")})
    c.submit("a", "m", raw, raw, 0.01, 0.01, 1e-5)
    c.submit("b", "m", raw, raw, 0.01, 0.01, 1e-5)
    c.reset("a")
    c.start()
    try:
        assert c.drain(TIMEOUT)
        assert set(c.reports()) == {"b"}
    finally:
        c.stop()


def test_worker_survives_an_unexpected_failure(
    collector: DiffCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = grpc_body({"y": sample("FP32")})
    real = shadow_diff.compare
    calls = iter([RuntimeError("boom")])

    def flaky(*args: Any) -> Any:
        failure = next(calls, None)
        if failure is not None:
            raise failure
        return real(*args)

    monkeypatch.setattr(shadow_diff, "compare", flaky)
    collector.submit("r", "m", raw, raw, 0.01, 0.01, 1e-5)
    report = run_pairs(collector, raw, raw, route="r", mirror="m")
    assert report["pairs"] == 2  # both latencies
    assert report["sampled"] == 1 and report["outputs"]["y"]["agreement"] == 1.0


def test_comparisons_are_sampled_within_the_rate_latencies_are_not() -> None:
    c = DiffCollector(max_rate=5)  # the bucket starts full: 5 at once, then 5 a second
    raw = http_body({"p": probs()})
    queued = [c.submit("r", "m", raw, raw, 0.01 * (i + 1), 0.02, 1e-5) for i in range(50)]
    assert queued.count(True) == 5 and queued[:5] == [True] * 5
    c.start()
    try:
        assert c.drain(TIMEOUT)
        report = c.reports()["r"]["m"]
        assert (report["pairs"], report["sampled"], report["not_sampled"]) == (50, 5, 45)
        assert report["outputs"]["p"]["compared"] == 5
        # the latencies are every pair's: mean of 10, 20, ... 500 ms
        assert report["latency"]["primary_mean_ms"] == pytest.approx(255.0)
    finally:
        c.stop()
    with pytest.raises(ValueError, match="max_rate"):
        DiffCollector(max_rate=0)


def test_start_is_idempotent_and_stop_joins_the_worker() -> None:
    c = DiffCollector()
    c.start()
    thread = c._thread
    c.start()
    assert c._thread is thread and thread is not None and thread.daemon
    c.stop()
    assert not thread.is_alive()
    c.start()  # restartable after a stop
    raw = grpc_body({"y": sample("FP32")})
    run_pairs(c, raw, raw, route="r", mirror="m")
    c.stop()


def test_the_cli_report_shows_a_collectors_figures_rounded(collector: DiffCollector) -> None:
    from rich.console import Console

    from manager.cli.rollouts import report_human

    raw = http_body({"p": probs()})
    for i in range(3):
        assert collector.submit("r", "m", raw, raw, 0.001 / 3 * (i + 1), 0.002 / 3 * (i + 1), 1e-5)
    assert collector.drain(TIMEOUT)
    diff = collector.reports()["r"]["m"]
    variant = {"variant": "fraud/1", "weight": 100.0, "requests": 3, "errors": 0,
               "error_rate": 0.0, "p50_ms": 0.6, "p95_ms": 0.9, "p99_ms": 1.0}  # fmt: skip
    info = {"rollout": 7, "strategy": "shadow", "state": "running", "variants": [variant],
            "shadow": {"fraud/2": diff}}  # fmt: skip
    console = Console(width=200, record=True)
    console.print(report_human("fraud", info))
    text = " ".join(console.export_text().split())  # a title wraps at its table's width
    # means of 1/3, 2/3, 1 ms and of twice that: 0.667 and 1.333, not 0.6666666666666666
    assert "3 pairs, 3 compared; mean latency candidate 1.333 ms, primary 0.667 ms" in text
    assert "100.00%" in text and "fraud/1" in text
