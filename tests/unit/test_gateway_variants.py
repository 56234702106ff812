"""Variants through the gateway, in process: workspaces, explicit versions, the variant stamp on
every response, sticky keys, weighted splits, readiness and the per-variant figures."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from rollout.gateway import Gateway
from rollout.routing import RoutingTable
from rollout.stamp import VariantStamp, stamp_infer, triton_prefix
from rollout.strategies import RequestContext, StickyStrategy
from tests.conftest import free_ports
from tests.unit.test_gateway_harness import (
    FakeTriton,
    Message,
    RawClient,
    Reply,
    http,
    infer_body,
    infer_reply,
    put_routes,
    route,
    running_gateway,
    samples,
    table,
    triton_like,
    variant,
    wait_ready,
)

Scenario = Callable[[Gateway, FakeTriton, RawClient], Awaitable[None]]


def on(fake: FakeTriton | str, model: str) -> list[dict[str, Any]]:
    url = fake if isinstance(fake, str) else fake.url
    return [{"url": url, "model": model}]


def run(
    build: Callable[[FakeTriton], bytes], scenario: Scenario, handler: Any = triton_like
) -> None:
    """A fake Triton, a gateway with the table `build(fake)` and a client connection."""

    async def main() -> None:
        fake = await FakeTriton(handler).start()
        try:
            async with running_gateway() as gw:
                resp = await put_routes(gw, build(fake))
                assert resp.status == 200, resp.body
                client = await RawClient.connect(gw.ports["http"])
                try:
                    await scenario(gw, fake, client)
                finally:
                    await client.close()
        finally:
            await fake.stop()

    uvloop.run(main())


# -- addressing ---------------------------------------------------------------------------------
def two_workspaces(fake: FakeTriton) -> bytes:
    return table(
        1,
        route("fraud", [variant("fraud", 1, on(fake, "default.fraud.v1"))]),
        route("fraud", [variant("fraud", 4, on(fake, "teamb.fraud.v4"))], "teamb"),
        route("scorer", [variant("scorer", 1, on(fake, "teamb.scorer.v1"))], "teamb"),
    )


def test_the_workspace_comes_from_the_header_or_the_path_prefix_else_default() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        body = infer_body()
        infer = "/v2/models/fraud/infer"
        default, teamb = ("default.fraud.v1", "fraud/1"), ("teamb.fraud.v4", "fraud/4")
        cases = [
            (infer, {}, *default),
            (infer, {"lastmile-workspace": "default"}, *default),
            (infer, {"lastmile-workspace": "teamb"}, *teamb),
            ("/w/teamb" + infer, {}, *teamb),
            ("/w/default" + infer, {}, *default),
            ("/w/teamb" + infer, {"Lastmile-Workspace": "teamb"}, *teamb),
            ("/w/teamb/v2/models/scorer/versions/1/infer?x=1", {}, "teamb.scorer.v1", "scorer/1"),
        ]
        for path, headers, model, name in cases:
            resp = await client.request("POST", path, body, headers)
            assert resp.status == 200, (path, headers, resp.body)
            assert fake.infers[-1].path == f"/v2/models/{model}/infer"
            assert resp.headers["lastmile-variant"] == name
            public, _, version = name.partition("/")
            assert (resp.json()["model_name"], resp.json()["model_version"]) == (public, version)
        meta = await client.request("GET", "/w/teamb/v2/models/fraud")
        assert meta.status == 200
        assert (meta.json()["name"], meta.json()["versions"]) == ("fraud", ["4"])
        assert fake.calls[-1].path == "/v2/models/teamb.fraud.v4"

    run(two_workspaces, scenario)


def test_unknown_routes_and_workspaces_are_404_without_naming_other_pipelines() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        body = infer_body()
        for path, headers, shown in [
            ("/v2/models/scorer/infer", {}, "scorer"),  # only teamb has it
            ("/w/other/v2/models/fraud/infer", {}, "fraud"),
            ("/v2/models/fraud/infer", {"lastmile-workspace": "other"}, "fraud"),
        ]:
            resp = await client.request("POST", path, body, headers)
            assert resp.status == 404, path
            assert resp.json() == {"error": f"unknown model {shown!r}"}
            assert "lastmile-variant" not in resp.headers
        resp = await client.request(
            "POST", "/w/teamb/v2/models/fraud/infer", body, {"lastmile-workspace": "default"}
        )
        assert resp.status == 400 and "'teamb'" in resp.json()["error"]
        for path in ("/w/teamb", "/w/teamb/", "/w/teamb/v2/repository/index", "/w", "/w//v2"):
            assert (await client.request("GET", path)).status == 404, path
        assert fake.infers == []
        assert gw.stats.requests[("_unknown", "", "http", 404)] == 3
        # an empty header is no header
        resp = await client.request(
            "POST", "/v2/models/fraud/infer", body, {"lastmile-workspace": ""}
        )
        assert resp.headers["lastmile-variant"] == "fraud/1"
        resp = await client.request(
            "POST", "/w/teamb/v2/models/fraud/infer", body, {"lastmile-workspace": ""}
        )
        assert resp.headers["lastmile-variant"] == "fraud/4"

    run(two_workspaces, scenario)


def test_health_and_server_metadata_answer_under_a_workspace_prefix() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        await wait_ready(gw)
        for prefix in ("", "/w/teamb", "/w/anything"):
            assert (await client.request("GET", f"{prefix}/v2/health/live")).status == 200
            assert (await client.request("GET", f"{prefix}/v2/health/ready")).status == 200
            meta = await client.request("GET", f"{prefix}/v2")
            assert meta.status == 200 and meta.json()["name"] == "lastmile-gateway"

    run(two_workspaces, scenario)


# -- explicit versions --------------------------------------------------------------------------
def stable_and_candidate(fake: FakeTriton) -> bytes:
    return table(
        3,
        route(
            "fraud",
            [
                variant("fraud", 1, on(fake, "default.fraud.v1"), weight=100),
                variant("fraud", 2, on(fake, "default.fraud.v2"), weight=0),
            ],
        ),
    )


def test_an_explicit_version_selects_its_variant_even_at_weight_zero() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        body = infer_body()
        for _ in range(20):
            resp = await client.request("POST", "/v2/models/fraud/infer", body)
            assert resp.headers["lastmile-variant"] == "fraud/1"
        resp = await client.request("POST", "/v2/models/fraud/versions/2/infer", body)
        assert resp.status == 200 and resp.headers["lastmile-variant"] == "fraud/2"
        assert resp.json()["model_version"] == "2"
        assert fake.infers[-1].path == "/v2/models/default.fraud.v2/infer"
        assert {r.path for r in fake.infers[:-1]} == {"/v2/models/default.fraud.v1/infer"}

        meta = await client.request("GET", "/v2/models/fraud/versions/2")
        assert meta.status == 200 and meta.headers["lastmile-variant"] == "fraud/2"
        assert (meta.json()["name"], meta.json()["versions"]) == ("fraud", ["1", "2"])
        assert fake.calls[-1].path == "/v2/models/default.fraud.v2"
        ready = await client.request("GET", "/v2/models/fraud/versions/2/ready")
        assert ready.status == 200 and fake.calls[-1].path == "/v2/models/default.fraud.v2/ready"

        for method, path in (
            ("POST", "/v2/models/fraud/versions/9/infer"),
            ("GET", "/v2/models/fraud/versions/9/ready"),
            ("GET", "/v2/models/fraud/versions/9"),
        ):
            resp = await client.request(method, path, body if method == "POST" else b"")
            assert resp.status == 404
            assert resp.json() == {"error": "model 'fraud' has no version 9 being served"}
        assert gw.stats.requests[("default/fraud", "", "http", 404)] == 1  # infer only
        assert fake.calls[-1].path == "/v2/models/default.fraud.v2/ready"  # nothing forwarded

    run(stable_and_candidate, scenario)


# -- the variant stamp --------------------------------------------------------------------------
def one_variant(fake: FakeTriton) -> bytes:
    return table(1, route("fraud", [variant("fraud", 3, on(fake, "default.fraud.v3"))]))


def test_json_responses_are_stamped_with_and_without_an_id_first() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        plain = await client.request("POST", "/v2/models/fraud/infer", infer_body([1.5, 2.5]))
        with_id = json.loads(infer_body([1.5, 2.5]))
        with_id["id"] = "req-7"
        headers = {"X-Request-Id": "trace-1"}
        identified = await client.request(
            "POST", "/v2/models/fraud/infer", json.dumps(with_id).encode(), headers
        )
        assert fake.infers[-1].headers["x-request-id"] == "trace-1"
        for resp in (plain, identified):
            assert resp.status == 200 and resp.headers["lastmile-variant"] == "fraud/3"
            assert int(resp.headers["content-length"]) == len(resp.body)
            answer = resp.json()
            assert (answer["model_name"], answer["model_version"]) == ("fraud", "3")
            assert answer["parameters"] == {"lastmile_variant": "fraud/3"}
            assert answer["outputs"][0]["data"] == [1.5, 2.5]
            assert b"default.fraud" not in resp.body
        assert identified.body.startswith(b'{"id":"req-7","model_name":"fraud","model_version"')
        assert "id" not in plain.json()

    run(one_variant, scenario)


def test_an_ensembles_own_parameters_are_kept_beside_the_variant() -> None:
    async def ensemble(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            params = {"sequence_id": 0, "sequence_start": False, "sequence_end": False}
            return infer_reply(req, "default.fraud.v3", "1", parameters=params)
        return await triton_like(req)

    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        resp = await client.request("POST", "/v2/models/fraud/infer", infer_body())
        assert resp.json()["parameters"] == {
            "sequence_id": 0,
            "sequence_start": False,
            "sequence_end": False,
            "lastmile_variant": "fraud/3",
        }
        assert int(resp.headers["content-length"]) == len(resp.body)

    run(one_variant, scenario, ensemble)


def binary_request(raw: bytes, request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "x", "shape": [1, len(raw) // 4], "datatype": "FP32",
              "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    header: dict[str, Any] = {"inputs": [tensor]}
    if request_id is not None:
        header["id"] = request_id
    text = json.dumps(header).encode()
    return text + raw, {"Inference-Header-Content-Length": str(len(text))}


@pytest.mark.parametrize("size", [16, 1024 * 1024])
def test_binary_responses_get_a_stamped_header_and_adjusted_lengths(size: int) -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        raw = bytes(range(256)) * (size // 256) if size >= 256 else bytes(range(size))
        for request_id in (None, "bin-1"):
            body, headers = binary_request(raw, request_id)
            resp = await client.request("POST", "/v2/models/fraud/infer", body, headers)
            assert resp.status == 200 and resp.headers["lastmile-variant"] == "fraud/3"
            json_len = int(resp.headers["inference-header-content-length"])
            assert int(resp.headers["content-length"]) == len(resp.body) == json_len + len(raw)
            answer = json.loads(resp.body[:json_len])
            assert (answer["model_name"], answer["model_version"]) == ("fraud", "3")
            assert answer["parameters"] == {"lastmile_variant": "fraud/3"}
            assert answer.get("id") == request_id
            assert answer["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}
            assert resp.body[json_len:] == raw

    run(one_variant, scenario)


def test_a_json_response_over_256_kib_is_stamped_whole() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        values = [i / 8 for i in range(40_000)]
        body = infer_body(values)
        resp = await client.request("POST", "/v2/models/fraud/infer", body)
        assert len(resp.body) > 256 * 1024
        assert int(resp.headers["content-length"]) == len(resp.body)
        answer = resp.json()
        assert (answer["model_name"], answer["model_version"]) == ("fraud", "3")
        assert answer["parameters"] == {"lastmile_variant": "fraud/3"}
        assert answer["outputs"][0]["data"] == values

    run(one_variant, scenario)


def test_chunked_responses_are_stamped_and_framed_with_a_length() -> None:
    async def chunked(req: Message) -> Reply | None:
        reply = await triton_like(req)
        if reply is not None and req.path.endswith("/infer"):
            status, headers, body = reply
            reply = status, {**headers, "Transfer-Encoding": "chunked"}, body
        return reply

    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        resp = await client.request("POST", "/v2/models/fraud/infer", infer_body([7.0]))
        assert resp.status == 200 and "transfer-encoding" not in resp.headers
        assert int(resp.headers["content-length"]) == len(resp.body)
        assert resp.json()["parameters"] == {"lastmile_variant": "fraud/3"}
        assert resp.json()["outputs"][0]["data"] == [7.0]
        raw = bytes(range(64))
        body, headers = binary_request(raw, "c-1")
        resp = await client.request("POST", "/v2/models/fraud/infer", body, headers)
        json_len = int(resp.headers["inference-header-content-length"])
        assert int(resp.headers["content-length"]) == len(resp.body) == json_len + len(raw)
        answer = json.loads(resp.body[:json_len])
        assert (answer["id"], answer["model_version"]) == ("c-1", "3")
        assert resp.body[json_len:] == raw

    run(one_variant, scenario, chunked)


def test_a_body_that_is_not_json_passes_unchanged_but_still_names_its_variant() -> None:
    async def odd(req: Message) -> Reply | None:
        if req.path.endswith("/infer"):
            return 200, {"Content-Type": "text/plain"}, b"not json at all"
        return await triton_like(req)

    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        resp = await client.request("POST", "/v2/models/fraud/infer", infer_body())
        assert (resp.status, resp.body) == (200, b"not json at all")
        assert resp.headers["lastmile-variant"] == "fraud/3"

    run(one_variant, scenario, odd)


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate members: {keys}"
    return dict(pairs)


STAMP = VariantStamp("fraud", "fraud/3", 3)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model_name":"default.fraud.v3","model_version":"1","outputs":[]}',
        b'{"id":"a","model_name":"default.fraud.v3","model_version":"1","outputs":[]}',
        b'{"id":"q\\"}","model_name":"x","model_version":"1","parameters":{"p":[1,{"a":"}"}]},'
        b'"outputs":[{"name":"y","parameters":{"binary_data_size":4}}]}',
        b'{"outputs":[{"name":"y","data":[1,2]}],"model_version":"1","model_name":"x"}',
        b'{"model_name":"x","model_version":"1","outputs":[{"name":"y","parameters":{"q":1}}],'
        b'"parameters":{"a":1}}',
        b' {\n "model_version" : "1" , "outputs" : [ ] , "model_name" : "x" } ',
        b'{"outputs":[]}',
        b"{}",
        b'{"model_name":"x","parameters":"odd","outputs":[]}',
    ],
)
def test_stamping_handles_any_member_order_and_never_duplicates(body: bytes) -> None:
    original = json.loads(body)
    for prefix in (b"", triton_prefix("default.fraud.v3")):
        pieces = stamp_infer(body, len(body), STAMP, prefix)
        assert pieces is not None
        stamped = json.loads(b"".join(pieces), object_pairs_hook=unique_members)
        assert (stamped["model_name"], stamped["model_version"]) == ("fraud", "3")
        kept = original.get("parameters")
        expected = dict(kept) if isinstance(kept, dict) else {}
        assert stamped["parameters"] == {**expected, "lastmile_variant": "fraud/3"}
        for key, value in original.items():
            if key not in ("model_name", "model_version", "parameters"):
                assert stamped[key] == value


def test_stamping_only_the_json_header_of_a_binary_body() -> None:
    header = b'{"model_name":"m","model_version":"1","outputs":[]}'
    body = header + b"\x00{binary}"
    pieces = stamp_infer(body, len(header), STAMP)
    assert pieces is not None
    assert json.loads(b"".join(pieces))["model_name"] == "fraud"
    assert b"".join(pieces).endswith(b"]}")  # the tensor bytes are the caller's to append
    for junk in (b"", b"[1,2]", b"not json", b'{"a":', b'{"a" 1}'):
        assert stamp_infer(junk, len(junk), STAMP) is None


# -- picking a variant --------------------------------------------------------------------------
def sticky_table(fake: FakeTriton) -> bytes:
    variants = [variant("fraud", v, on(fake, f"default.fraud.v{v}"), weight=50) for v in (1, 2)]
    sticky = {"header": "lastmile-key", "parameter": "user"}
    return table(2, route("fraud", variants, strategy="sticky", sticky=sticky))


def test_sticky_keys_from_the_header_or_the_json_parameter_land_on_one_variant() -> None:
    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        assert gw.table is not None
        strategy = StickyStrategy(gw.table.routes["default/fraud"])
        seen: Counter[str] = Counter()
        for i in range(40):
            key = f"user-{i}"
            expected = strategy.pick(RequestContext(key.encode())).primary.name
            seen[expected] += 1
            by_parameter = json.loads(infer_body())
            by_parameter["parameters"] = {"user": key}
            binary, headers = binary_request(b"\x00" * 16)
            header_len = int(headers["Inference-Header-Content-Length"])
            header = json.loads(binary[:header_len])
            header["parameters"] = {"user": key, "priority": 1}
            text = json.dumps(header).encode()
            binary_with_key = text + binary[header_len:]
            binary_headers = {"Inference-Header-Content-Length": str(len(text))}
            requests = [
                (infer_body(), {"lastmile-key": key}),
                (infer_body(), {"Lastmile-Key": key}),
                (json.dumps(by_parameter).encode(), {}),
                (binary_with_key, binary_headers),
            ]
            for body, headers_ in requests:
                resp = await client.request("POST", "/v2/models/fraud/infer", body, headers_)
                assert resp.headers["lastmile-variant"] == expected, (key, headers_)
                version = expected.split("/")[1]
                assert fake.infers[-1].path == f"/v2/models/default.fraud.v{version}/infer"
                assert "lastmile-key" not in fake.infers[-1].headers  # not forwarded
        assert set(seen) == {"fraud/1", "fraud/2"}
        # the parameter's text form: 42 and "42" are one key, the header wins over the body
        expected = strategy.pick(RequestContext(b"42")).primary.name
        other = "fraud/2" if expected == "fraud/1" else "fraud/1"
        other_key = next(
            f"k{i}" for i in range(100)
            if strategy.pick(RequestContext(f"k{i}".encode())).primary.name == other
        )  # fmt: skip
        numeric = json.loads(infer_body())
        numeric["parameters"] = {"user": 42}
        resp = await client.request("POST", "/v2/models/fraud/infer", json.dumps(numeric).encode())
        assert resp.headers["lastmile-variant"] == expected
        resp = await client.request(
            "POST",
            "/v2/models/fraud/infer",
            json.dumps(numeric).encode(),
            {"lastmile-key": other_key},
        )
        assert resp.headers["lastmile-variant"] == other

    run(sticky_table, scenario)


def test_a_weighted_split_follows_weights_and_a_zero_weight_variant_gets_none() -> None:
    def split(fake: FakeTriton) -> bytes:
        variants = [
            variant("fraud", v, on(fake, f"default.fraud.v{v}"), weight=w)
            for v, w in ((1, 70), (2, 30), (3, 0))
        ]
        return table(1, route("fraud", variants))

    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        answered: Counter[str] = Counter()
        for _ in range(400):
            resp = await client.request("POST", "/v2/models/fraud/infer", infer_body())
            name = resp.headers["lastmile-variant"]
            answered[name] += 1
            assert fake.infers[-1].path == f"/v2/models/default.fraud.v{name[-1]}/infer"
        assert answered["fraud/3"] == 0
        # binomial standard deviation ~9 requests: allow about 5 of them
        assert abs(answered["fraud/1"] - 280) < 46
        assert answered["fraud/1"] + answered["fraud/2"] == 400
        text = (await http(gw.ports["metrics"], "GET", "/metrics")).body.decode()
        got = samples(text)
        for name in ("fraud/1", "fraud/2"):
            series = (("route", "default/fraud"), ("variant", name))
            ok = (("code", "200"), ("protocol", "http"), *series)
            assert got[("lastmile_gateway_requests_total", ok)] == answered[name]
            assert (
                got[("lastmile_gateway_request_duration_seconds_count", series)] == answered[name]
            )
            assert got[("lastmile_gateway_inflight", series)] == 0
        assert not any(labels and ("variant", "fraud/3") in labels for _, labels in got)

    run(split, scenario)


def test_errors_are_counted_per_variant_with_its_label() -> None:
    async def failing_candidate(req: Message) -> Reply | None:
        if req.path == "/v2/models/default.fraud.v2/infer":
            return 500, {"Content-Type": "application/json"}, b'{"error":"boom"}'
        return await triton_like(req)

    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        resp = await client.request("POST", "/v2/models/fraud/versions/2/infer", infer_body())
        assert resp.status == 500 and resp.headers["lastmile-variant"] == "fraud/2"
        assert resp.json() == {"error": "boom"}
        resp = await client.request("POST", "/v2/models/fraud/infer", infer_body())
        assert resp.status == 200
        got = samples((await http(gw.ports["metrics"], "GET", "/metrics")).body.decode())
        errors = (("class", "server"), ("route", "default/fraud"), ("variant", "fraud/2"))
        assert got[("lastmile_gateway_errors_total", errors)] == 1
        stable = (("class", "server"), ("route", "default/fraud"), ("variant", "fraud/1"))
        assert stable not in {labels for name, labels in got if name.endswith("errors_total")}

    run(stable_and_candidate, scenario, failing_candidate)


# -- readiness ----------------------------------------------------------------------------------
def test_a_dead_minority_or_zero_weight_variant_leaves_the_gateway_ready() -> None:
    async def main() -> None:
        fake = await FakeTriton().start()
        dead = f"http://127.0.0.1:{free_ports(1)[0]}"
        try:
            async with running_gateway() as gw:
                port = gw.ports["http"]
                canary = [
                    variant("fraud", 1, on(fake, "default.fraud.v1"), weight=90),
                    variant("fraud", 2, on(dead, "default.fraud.v2"), weight=10),
                    variant("fraud", 3, on(dead, "default.fraud.v3"), weight=0),
                ]
                other = route("other", [variant("other", 1, on(fake, "m"))], "teamb")
                assert (await put_routes(gw, table(1, route("fraud", canary), other))).status == 200
                await wait_ready(gw)
                assert (await http(port, "GET", "/v2/health/ready")).status == 200
                # only a weight-0 variant alive: that route cannot serve, the gateway is not ready
                only_candidate = [
                    variant("fraud", 1, on(dead, "default.fraud.v1"), weight=100),
                    variant("fraud", 2, on(fake, "default.fraud.v2"), weight=0),
                ]
                resp = await put_routes(gw, table(2, route("fraud", only_candidate), other))
                assert resp.status == 200
                assert not gw.is_ready()
                assert (await http(port, "GET", "/v2/health/ready")).status == 503
                # replicas: one live target of the variant is enough
                replicas = variant("fraud", 1, [*on(dead, "a"), *on(fake, "b")])
                assert (
                    await put_routes(gw, table(3, route("fraud", [replicas]), other))
                ).status == 200
                await wait_ready(gw)
        finally:
            await fake.stop()

    uvloop.run(main())


def test_targets_of_a_variant_are_taken_round_robin() -> None:
    def replicas(fake: FakeTriton) -> bytes:
        targets = [*on(fake, "default.fraud.v1.a"), *on(fake, "default.fraud.v1.b")]
        return table(1, route("fraud", [variant("fraud", 1, targets)]))

    async def scenario(gw: Gateway, fake: FakeTriton, client: RawClient) -> None:
        for _ in range(6):
            resp = await client.request("POST", "/v2/models/fraud/infer", infer_body())
            assert resp.json()["model_name"] == "fraud"
        models = [r.path.split("/")[3] for r in fake.infers]
        assert models == ["default.fraud.v1.a", "default.fraud.v1.b"] * 3

    run(replicas, scenario)


def test_the_harness_tables_are_valid_v2_tables() -> None:
    fake = FakeTriton()
    fake.port = 1
    for build in (two_workspaces, stable_and_candidate, one_variant, sticky_table):
        RoutingTable.from_json(build(fake))
