"""The gateway's own CPU per request, in process: its Python between the bytes a client sends
and the bytes it writes, with nothing else on the machine in the way.

    python loadtests/bench_hot_path.py [--calls 20000] [--rounds 7] [--profile] [--json]

The real HTTP path (rollout.proxy, rollout.http_dispatch, rollout.exchange, rollout.upstream)
and the real gRPC relay (rollout.grpc_relay, rollout.h2_conn, rollout.grpc_relay_call) are
driven by feeding them the bytes a client's request and Triton's answer are made of: an HTTP
JSON [1,4] infer, and a unary gRPC ModelInfer with its HTTP/2 frames. Sockets are stand-ins
that keep what is written (the subject is the gateway's code, not the kernel's); every answer
is checked to be the stamped one. What it reports, the thread's CPU time per request (best,
median and worst round), leaves out the system calls and the event loop's own work, which
`bench_gateway.py` measures with them; it is steady enough on a small shared machine to
compare two versions of the code (run them alternately, compare the best rounds), where a
whole-system benchmark is not. `--profile` adds cProfile's top functions per request.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import uvloop  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402

from rollout.gateway import Gateway  # noqa: E402
from rollout.gateway_config import GatewayConfig  # noqa: E402
from rollout.gateway_metrics import GatewayStats  # noqa: E402
from rollout.grpc_gateway import GrpcFrontend  # noqa: E402
from rollout.grpc_relay import GrpcRelay  # noqa: E402
from rollout.h2_conn import H2Conn  # noqa: E402
from rollout.h2_wire import (  # noqa: E402
    DATA,
    END_STREAM,
    PREFACE,
    encode,
    frame,
    headers_frames,
    settings_frame,
    window_update,
)
from rollout.proxy import ClientConnection  # noqa: E402
from rollout.routing import RoutingTable  # noqa: E402
from rollout.upstream import UpstreamConnection  # noqa: E402

MODEL = "default.bench.v1"
TABLE = {
    "generation": 1,
    "routes": {
        "default/bench": {
            "workspace": "default", "pipeline": "bench", "strategy": "weighted",
            "variants": [{"name": "bench/1", "version": 1, "weight": 100, "targets": [
                {"url": "http://127.0.0.1:9", "grpc": "127.0.0.1:10", "model": MODEL}]}],
        }
    },
}  # fmt: skip


class Socket:
    """Stands in for a transport (not the subject): keeps what the gateway writes."""

    def __init__(self) -> None:
        self.written: list[Any] = []

    def write(self, data: Any) -> None:
        self.written.append(data)

    def writelines(self, data: Any) -> None:
        self.written.extend(data)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, *_: Any) -> None:
        return None

    def last(self, n: int = 1) -> bytes:
        return b"".join(bytes(piece) for piece in self.written[-n:])


def http_path() -> Callable[[], None]:
    """One HTTP JSON [1,4] infer from a client's bytes to the answer written back."""
    gw = Gateway(GatewayConfig(grpc_port=0))
    gw.set_table(RoutingTable.from_json(TABLE))
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()
    request = (
        b"POST /v2/models/bench/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    answer = json.dumps(
        {"model_name": MODEL, "model_version": "1", "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]},
        separators=(",", ":"),
    ).encode()  # fmt: skip
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(answer)
        + answer
    )
    pool = gw.pools[("127.0.0.1", 9)]
    upstream, upstream_socket = UpstreamConnection(pool), Socket()
    upstream.connection_made(upstream_socket)
    pool.total = 1
    pool.idle.append(upstream)
    client, client_socket = ClientConnection(gw), Socket()
    client.connection_made(client_socket)

    def one() -> None:
        client.data_received(request)
        upstream.data_received(response)

    one()
    sent, got = upstream_socket.last(), client_socket.last()
    assert sent.startswith(b"POST /v2/models/default.bench.v1/infer "), sent[:200]
    assert b'"model_name":"bench"' in got and b"lastmile-variant: bench/1" in got, got[:400]

    def clearing() -> None:
        one()
        client_socket.written.clear()
        upstream_socket.written.clear()

    return clearing


def _message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_path() -> Callable[[], None]:
    """One unary ModelInfer: the client's HEADERS and DATA frames in, the request out to
    Triton, Triton's HEADERS, DATA and trailers in, the stamped answer out."""
    frontend = GrpcFrontend(
        stats=GatewayStats(), is_ready=lambda: True, server_name="bench", server_version="0",
        max_message_bytes=64 << 20, upstream_timeout=30.0,
    )  # fmt: skip
    frontend.set_table(RoutingTable.from_json(TABLE))
    relay = GrpcRelay(frontend, 64 << 20)
    frontend.relay = relay
    request = pb.ModelInferRequest(model_name="bench", id="1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    answer = pb.ModelInferResponse(model_name=MODEL, model_version="1", id="1")
    answer.outputs.add(name="y", datatype="FP32", shape=[1, 4])
    answer.raw_output_contents.append(np.ones(4, np.float32).tobytes())
    request_bytes, answer_bytes = (
        _message(request.SerializeToString()),
        _message(answer.SerializeToString()),
    )
    request_head = encode([
        (b":method", b"POST"), (b":scheme", b"http"),
        (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
        (b":authority", b"127.0.0.1:8001"), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"), (b"grpc-accept-encoding", b"identity,deflate,gzip"),
        (b"user-agent", b"grpc-python/1.66.1 grpc-c/43.0.0 (linux; chttp2)"),
    ])  # fmt: skip
    answer_head = encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
    trailers = encode([(b"grpc-status", b"0")])
    pool = relay.pool_for(frontend._upstream_for("127.0.0.1", 10))
    triton, triton_socket = H2Conn(relay.flusher, client=True, on_closed=pool._closed), Socket()
    pool.conns.append(triton)
    triton.connection_made(triton_socket)
    triton.data_received(settings_frame({}))
    client, client_socket = relay.client(), Socket()
    client.connection_made(client_socket)
    client.data_received(PREFACE + settings_frame({}))
    ids = {"next": 1}

    def one() -> None:
        stream = ids["next"]  # the client's and the gateway's upstream streams go in step
        ids["next"] += 2
        client.data_received(  # the window given back: more than each answer takes
            headers_frames(stream, request_head, False, 16384)
            + frame(DATA, END_STREAM, stream, request_bytes)
            + window_update(0, 1024)
        )
        triton.data_received(
            headers_frames(stream, answer_head, False, 16384)
            + frame(DATA, 0, stream, answer_bytes)
            + headers_frames(stream, trailers, True, 16384)
            + window_update(0, 1024)
        )

    one()
    relay.flusher.flush()
    sent, got = triton_socket.last(2), client_socket.last(4)
    assert MODEL.encode() in sent, sent[-300:]
    assert b"bench/1" in got and relay.counts == {"fast": 1, "relayed": 0}, (got, relay.counts)

    def clearing() -> None:
        one()
        client_socket.written.clear()
        triton_socket.written.clear()

    return clearing


def measure(one: Callable[[], None], calls: int, rounds: int) -> list[float]:
    """µs of this thread's CPU per call, one figure per round (collector as in the gateway:
    what start-up made is frozen out of it)."""
    for _ in range(min(calls, 2000)):  # warm: caches, free lists
        one()
    gc.collect()
    gc.freeze()
    out = []
    for _ in range(rounds):
        began = time.thread_time()
        for _ in range(calls):
            one()
        out.append((time.thread_time() - began) / calls * 1e6)
    return out


def profile(one: Callable[[], None], calls: int, top: int = 15) -> list[dict[str, Any]]:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        one()
    prof.disable()
    rows = []
    stats: Any = pstats.Stats(prof).stats
    for (path, line, name), (_, ncalls, tottime, cumtime, _) in stats.items():
        where = f"{Path(path).name}:{line}({name})" if line else name
        per = 1e6 / calls
        rows.append(
            {"function": where, "calls": ncalls / calls, "self_us": tottime * per,
             "total_us": cumtime * per}
        )  # fmt: skip
    rows.sort(key=lambda r: -r["self_us"])
    return rows[:top]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"calls": args.calls, "rounds": args.rounds, "paths": {}}
    for name, build in (("http-json", http_path), ("grpc", grpc_path)):
        one = build()
        us = measure(one, args.calls, args.rounds)
        entry: dict[str, Any] = {
            "best_us": min(us), "median_us": statistics.median(us), "worst_us": max(us),
            "rounds_us": [round(u, 2) for u in us],
        }  # fmt: skip
        if args.profile:
            entry["profile"] = profile(one, min(args.calls, 20000))
        result["paths"][name] = entry
        if not args.json:
            print(f"  {name} done", file=sys.stderr, flush=True)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"the gateway's CPU per request, in process (no system calls): {result['calls']} "
        f"requests x {result['rounds']} rounds",
        f"{'path':<10} {'best µs':>8} {'median':>8} {'worst':>8}",
    ]
    for name, entry in result["paths"].items():
        lines.append(
            f"{name:<10} {entry['best_us']:8.2f} {entry['median_us']:8.2f} {entry['worst_us']:8.2f}"
        )
    for name, entry in result["paths"].items():
        if "profile" in entry:
            lines.append(f"{name}: cProfile per request (its own overhead included)")
            for row in entry["profile"]:
                lines.append(f"  {row['self_us']:7.2f} self {row['total_us']:7.2f} total "
                             f"{row['calls']:5.2f}x  {row['function']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--calls", type=int, default=20000, help="requests per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--profile", action="store_true", help="also cProfile's top functions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        p.error("--calls and --rounds must be >= 1")
    result = uvloop.run(run(args))
    print(json.dumps(result, indent=2) if args.json else render(result))  # the bench's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
