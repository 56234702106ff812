"""The gateway's own share of a slow shadow's cost: the held copies' answers, all at once.

    python loadtests/bench_shadow_burst.py [--protocols http,grpc] [--rounds 6] [--seconds 4]
                                           [--rate 300] [--clients 8] [--burst 64]
                                           [--batch 256] [--hold 1.0] [--gateway-cpus 0]
                                           [--client-cpus 1] [--fake-cpus CPUS]
                                           [--loop-probe] [--gateway-arg=--flag=value]
                                           [--json]

`bench_shadow.py` measures a whole system, where the Triton servers' CPU shares the machine
with the gateway; on a small machine their contention hides what the gateway itself adds. Here
the gateway (`python -m rollout.gateway`, pinned to `--gateway-cpus`) is the only real
component. It relays to two loopback stand-ins for Triton (HTTP and gRPC), in a child process
on `--fake-cpus` (default: the clients') at a lower priority than the clients (fakes, since
Triton is not what is measured): the primary answers each request at once; the candidate
holds every copy, like Triton's dynamic batcher waiting for a batch that never fills, and
answers all it holds at once when `--batch` copies are waiting or `--hold` seconds have passed
since the first. The shadow's bound (`--burst`, the route's `max_queue`) is the most copies in
flight, so each release is a burst of that many answers arriving together.

Open load, per protocol: `--rate` requests/s over `--clients` keep-alive HTTP connections or
gRPC channels (grpc.aio) on a fixed schedule, latency counted from the scheduled time. Windows
of `--seconds` with no shadow and with every request mirrored to the slow candidate alternate,
their order swapped every round. Printed per window: requests, failures, p50/p99/max, the
gateway's CPU per request (from /proc) and the copies the candidate answered; per round the
primary's p99 with the shadow / without, and per protocol their median and spread.

`--loop-probe` runs the gateway with a probe that times every turn of its event loop in the
loop thread's CPU time (the longest turn, and how many took over 0.5/1/2/5 ms) and the cyclic
collector's pauses: the gateway's own stalls, free of what the machine's other processes do
to the clients' timings (the gateway's CPU per request is then void: the probe keeps the loop
spinning). On a small machine the stand-ins' kernel work shares a CPU with the clients or the
gateway (loopback handles each send's receiving side on the sender's CPU); give them CPUs of
their own where there are enough (`--fake-cpus`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import httptools  # noqa: E402

from loadtests._bench_ports import DEFAULT_RANGE, PortPicker  # noqa: E402
from loadtests._models import (  # noqa: E402
    cpu_seconds,
    gateway_command,
    gateway_env,
    http_call,
    run_fast,
    stop_gateway,
    wait_gateway_ready,
)
from manager.triton.cpus import parse_cpu_list  # noqa: E402
from rollout.routing import SHADOW_MAX_QUEUE  # noqa: E402

PHASES = ("none", "slow")
PROTOCOLS = ("http", "grpc")
GRPC_SERVICE = "inference.GRPCInferenceService"
PRIMARY, CANDIDATE = "m_primary", "m_candidate"
REQUEST_JSON = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'


def _reply(model: str) -> bytes:
    body = json.dumps(
        {
            "model_name": model,
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        },
        separators=(",", ":"),
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


READY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


# ---- the stand-ins for Triton (child process) ---------------------------------------------


class _Holder:
    """The candidate's batcher: holds answers until `batch` wait or `hold` s have passed,
    then gives them all (`answer()` of each, HTTP and gRPC alike)."""

    def __init__(self, batch: int, hold: float) -> None:
        self.batch, self.hold = batch, hold
        self.waiting: list[Callable[[], None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.answered = 0

    def add(self, answer: Callable[[], None]) -> None:
        self.waiting.append(answer)
        if len(self.waiting) >= self.batch:
            self.release()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.hold, self.release)

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiting, self.waiting = self.waiting, []
        for answer in waiting:
            answer()
        self.answered += len(waiting)


class _FakeTriton(asyncio.Protocol):
    def __init__(self, model: str, holder: _Holder | None) -> None:
        self.reply = _reply(model)
        self.holder = holder
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        if not self.url.endswith(b"/infer"):
            self.transport.write(READY)
        elif self.holder is None:
            self.transport.write(self.reply)
        else:
            transport, reply = self.transport, self.reply
            self.holder.add(lambda: None if transport.is_closing() else transport.write(reply))


def _grpc_reply(model: str) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    response = pb.ModelInferResponse(model_name=model, model_version="1")
    output = response.outputs.add(name="y", datatype="FP32", shape=[1, 4])
    output.contents.fp32_contents.extend([1, 2, 3, 4])
    return bytes(response.SerializeToString())


class _GrpcLeg:
    """One ModelInfer on the stand-in's HTTP/2 connection: answered (headers, message,
    trailers) once the request is in, at once or when `holder` lets it. Raw frames, as cheap
    as the HTTP stand-in's writes: a grpc.aio server would spend milliseconds of the machine's
    CPU on each burst, and that is not the gateway's cost."""

    def __init__(self, message: bytes, holder: _Holder | None) -> None:
        self.message, self.holder = message, holder

    def on_headers(self, stream: Any, headers: Any, end_stream: bool) -> None:
        if end_stream:
            self._complete(stream)

    def on_data(self, stream: Any, data: bytes, end_stream: bool) -> None:
        stream.credit(len(data))
        if end_stream:
            self._complete(stream)

    def on_reset(self, stream: Any, code: int) -> None:
        pass

    def on_lost(self, stream: Any, unprocessed: bool) -> None:
        pass

    def _complete(self, stream: Any) -> None:
        if self.holder is None:
            self._answer(stream)
        else:
            self.holder.add(lambda: self._answer(stream))

    def _answer(self, stream: Any) -> None:
        stream.send_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
        stream.send_data(self.message)
        stream.send_headers([(b"grpc-status", b"0")], True)


async def _grpc_fake(model: str, holder: _Holder | None, port: int) -> Any:
    """A gRPC server answering ModelInfer on the gateway's own HTTP/2 framing
    (rollout.h2_conn, used here as a server for a stand-in)."""
    from rollout.h2_conn import H2Conn
    from rollout.h2_stream import Flusher

    loop = asyncio.get_running_loop()
    reply = _grpc_reply(model)
    message = b"\x00" + len(reply).to_bytes(4, "big") + reply
    flusher = Flusher(loop)
    return await loop.create_server(
        lambda: H2Conn(flusher, client=False, on_stream=lambda _s: _GrpcLeg(message, holder)),
        "127.0.0.1",
        port,
    )


async def _serve_fakes(ports: dict[str, int], batch: int, hold: float) -> None:
    loop = asyncio.get_running_loop()
    holder = _Holder(batch, hold)
    await loop.create_server(lambda: _FakeTriton(PRIMARY, None), "127.0.0.1", ports["primary"])
    await loop.create_server(
        lambda: _FakeTriton(CANDIDATE, holder), "127.0.0.1", ports["candidate"]
    )
    servers = [
        await _grpc_fake(PRIMARY, None, ports["primary_grpc"]),
        await _grpc_fake(CANDIDATE, holder, ports["candidate_grpc"]),
    ]
    print("ready", flush=True)
    # stdin closing (the benchmark exiting) ends the stand-ins; a line asks for the count
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        print(holder.answered, flush=True)
    for server in servers:
        server.close()


# ---- the gateway with a probe of its event loop (--loop-probe, child process) ------------

PROBE_THRESHOLDS_MS = (0.5, 1.0, 2.0, 5.0)


class _LoopProbe:
    """Times every turn of the gateway's event loop: a callback that queues itself again
    runs once a turn, so the loop thread's CPU time between two runs is what that turn cost,
    and how long I/O that became ready during it waited for the loop (CPU time, so that the
    kernel giving the core to another process meanwhile is not counted). The loop never
    sleeps while it runs (the process keeps a core busy), so the gateway's CPU figures mean
    nothing in this mode."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.last = 0.0
        self.gc_started = 0.0
        self.reset()
        gc.callbacks.append(self._gc)

    def reset(self) -> None:
        self.turns = 0
        self.longest = 0.0
        self.over = [0] * len(PROBE_THRESHOLDS_MS)
        self.gc_longest = 0.0
        self.gc_runs = 0

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        """The cyclic collector's pauses, a cause of long turns that is not the gateway's
        own work (any thread's collection holds the loop)."""
        if phase == "start":
            self.gc_started = time.thread_time()
        elif self.gc_started:
            self.gc_runs += 1
            self.gc_longest = max(self.gc_longest, time.thread_time() - self.gc_started)

    def tick(self) -> None:
        now = time.thread_time()
        if self.last:
            gap_ms = (now - self.last) * 1000
            self.turns += 1
            if gap_ms > self.longest:
                self.longest = gap_ms
            for i, threshold in enumerate(PROBE_THRESHOLDS_MS):
                if gap_ms > threshold:
                    self.over[i] += 1
        self.last = now
        self.loop.call_soon(self.tick)

    def take(self) -> dict[str, Any]:
        figures = {
            "turns": self.turns,
            "longest_turn_ms": round(self.longest, 3),
            **{
                f"turns_over_{t:g}ms": n
                for t, n in zip(PROBE_THRESHOLDS_MS, self.over, strict=True)
            },
            "gc_runs": self.gc_runs,
            "gc_longest_ms": round(self.gc_longest * 1000, 3),
        }
        self.reset()
        return figures


def _probed_gateway(argv: list[str]) -> int:
    """`python -m rollout.gateway ARGV`, with a _LoopProbe on its loop; each line on stdin
    prints the probe's figures since the last line (JSON) and starts them again."""
    from rollout.gateway import run_to_exit, serve
    from rollout.gateway_config import parse_args
    from rollout.malloc_tuning import tune_malloc

    tune_malloc()
    config = parse_args(argv)

    async def serving() -> None:
        loop = asyncio.get_running_loop()
        probe = _LoopProbe(loop)
        loop.call_soon(probe.tick)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def answer() -> None:
            while await reader.readline():
                print(json.dumps(probe.take()), flush=True)

        task = loop.create_task(answer())
        try:
            await serve(config, settle_heap=True)
        finally:
            task.cancel()

    return run_to_exit(serving())


# ---- the clients ---------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    """One keep-alive connection; `call` sends the request and waits for the whole answer."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.done: asyncio.Future[bool] | None = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_result(False)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code() == 200)

    async def call(self, request: bytes) -> bool:
        if self.lost:
            return False
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


Caller = Callable[[], Awaitable[bool]]


Closer = Callable[[], Awaitable[None]]


async def _http_callers(port: int, clients: int) -> tuple[list[Caller], Closer]:
    loop = asyncio.get_running_loop()
    request = (
        f"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(REQUEST_JSON)}\r\n\r\n"
    ).encode() + REQUEST_JSON
    conns = [(await loop.create_connection(_Client, "127.0.0.1", port))[1] for _ in range(clients)]

    def caller(conn: _Client) -> Caller:
        return lambda: conn.call(request)

    async def close() -> None:
        for conn in conns:
            conn.transport.close()

    return [caller(conn) for conn in conns], close


async def _grpc_callers(port: int, clients: int) -> tuple[list[Caller], Closer]:
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="fraud")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    payload = request.SerializeToString()
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(clients)
    ]

    def raw(data: bytes) -> bytes:
        return data

    def caller(channel: Any) -> Caller:
        stub = channel.unary_unary(
            f"/{GRPC_SERVICE}/ModelInfer", request_serializer=raw, response_deserializer=raw
        )

        async def call() -> bool:
            try:
                await stub(payload, timeout=10)
            except grpc.aio.AioRpcError:
                return False
            return True

        return call

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return [caller(channel) for channel in channels], close


async def _open_load(
    protocol: str, port: int, clients: int, rate: float, seconds: float
) -> dict[str, Any]:
    """`rate` requests/s for `seconds` over `clients` connections, on a fixed schedule."""
    make = _http_callers if protocol == "http" else _grpc_callers
    callers, close = await make(port, clients)
    latencies: list[float] = []
    failures = 0
    interval = clients / rate
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    start = clock() + 0.05

    async def one(index: int) -> None:
        nonlocal failures
        call = callers[index]
        due = start + index * interval / clients
        end = start + seconds
        done = 0.0
        while due < end:
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # late because the previous answer was: counted from the schedule; late because
            # the client's timer fired late (the loop's timers are in ms): from the send
            sent = due if done > due else clock()
            ok = await call()
            done = clock()
            if ok:
                latencies.append(done - sent)
            else:
                failures += 1
            due += interval

    await asyncio.gather(*(one(i) for i in range(clients)))
    await close()
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n + failures,
        "failures": failures,
        "p50_ms": latencies[n // 2] * 1000 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else None,
        "max_ms": latencies[-1] * 1000 if n else None,
    }


# ---- the run -------------------------------------------------------------------------------

PORTS = ("http", "grpc", "metrics", "admin", "primary", "candidate", "primary_grpc",
         "candidate_grpc")  # fmt: skip


def _table(generation: int, ports: dict[str, int], phase: str, burst: int) -> str:
    def variant(version: int, name: str, model: str, weight: float) -> dict[str, Any]:
        target = {"url": f"http://127.0.0.1:{ports[name]}", "model": model,
                  "grpc": f"127.0.0.1:{ports[name + '_grpc']}"}  # fmt: skip
        return {"name": f"fraud/{version}", "version": version, "weight": weight,
                "targets": [target]}  # fmt: skip

    route: dict[str, Any] = {
        "workspace": "default",
        "pipeline": "fraud",
        "variants": [
            variant(1, "primary", PRIMARY, 100),
            variant(2, "candidate", CANDIDATE, 0),
        ],
    }
    if phase == "slow":
        route["strategy"] = "shadow"
        route["shadow"] = {"mirrors": [{"variant": "fraud/2"}], "timeout_s": 5.0,
                           "max_queue": burst}  # fmt: skip
    return json.dumps({"generation": generation, "routes": {"default/fraud": route}})


def _pinned(cpus: frozenset[int] | None) -> Any:
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def _stand_in(cpus: frozenset[int] | None) -> None:
    os.nice(10)  # below the clients and the gateway wherever they share a CPU
    if cpus:
        os.sched_setaffinity(0, cpus)


def _ratio(windows: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    ratios = []
    for round_no in range(rounds):
        by = {w["phase"]: w for w in windows if w["round"] == round_no}
        if by["none"]["p99_ms"] and by["slow"]["p99_ms"]:
            ratios.append(by["slow"]["p99_ms"] / by["none"]["p99_ms"])
    return {
        "median": statistics.median(ratios) if ratios else None,
        "min": min(ratios, default=None),
        "max": max(ratios, default=None),
        "rounds": [round(r, 3) for r in ratios],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    gateway_cpus = parse_cpu_list(args.gateway_cpus) if args.gateway_cpus else None
    client_cpus = parse_cpu_list(args.client_cpus) if args.client_cpus else None
    fake_cpus = parse_cpu_list(args.fake_cpus) if args.fake_cpus else client_cpus
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    ports = dict(zip(PORTS, PortPicker.from_text(args.ports).take(len(PORTS)), strict=True))
    work = Path(tempfile.mkdtemp(prefix="lastmile-burst-"))
    fakes = subprocess.Popen(
        [sys.executable, __file__, "--serve-fakes", json.dumps(ports), str(args.batch),
         str(args.hold)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        preexec_fn=lambda: _stand_in(fake_cpus),
    )  # fmt: skip
    assert fakes.stdin is not None and fakes.stdout is not None
    if fakes.stdout.readline().strip() != "ready":
        raise RuntimeError("the Triton stand-ins did not start")
    log = work / "gateway.log"
    gateway_args = [
        "--http-port", str(ports["http"]),
        "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
        "--admin-port", str(ports["admin"]), "--health-interval", "1",
        "--log-level", "WARNING", *args.gateway_arg,
    ]  # fmt: skip
    if args.loop_probe:
        command = [
            sys.executable,
            __file__,
            "--probe-gateway",
            "--host",
            "127.0.0.1",
            *gateway_args,
        ]
    else:
        command = gateway_command(*gateway_args)  # on 127.0.0.1 too
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            command, cwd=REPO_ROOT, env=gateway_env(), stdout=subprocess.PIPE if args.loop_probe
            else out, stderr=out, stdin=subprocess.PIPE if args.loop_probe else None,
            preexec_fn=_pinned(gateway_cpus),
        )  # fmt: skip

    def probe() -> dict[str, Any]:
        if not args.loop_probe:
            return {}
        assert gateway.stdin is not None and gateway.stdout is not None
        gateway.stdin.write(b"take\n")
        gateway.stdin.flush()
        return dict(json.loads(gateway.stdout.readline()))

    generation = 0

    def use(phase: str) -> None:
        nonlocal generation
        generation += 1
        url = f"http://127.0.0.1:{ports['admin']}/routes"
        status, body = http_call("PUT", url, _table(generation, ports, phase, args.burst))
        if status != 200:
            raise RuntimeError(f"PUT /routes: {status} {body[:300]!r}")

    def answered() -> int:
        assert fakes.stdin is not None and fakes.stdout is not None
        fakes.stdin.write("count\n")
        fakes.stdin.flush()
        return int(fakes.stdout.readline())

    def load(protocol: str, seconds: float) -> dict[str, Any]:
        port = ports[protocol]
        return run_fast(lambda: _open_load(protocol, port, args.clients, args.rate, seconds))

    windows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 20
        while True:  # the admin port opens with the gateway
            try:
                use("none")
                break
            except OSError:
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.1)
        wait_gateway_ready(gateway, ports["http"], log)
        for protocol in args.protocols:
            for phase in PHASES:  # warm up both tables
                use(phase)
                load(protocol, 1.0)
            for round_no in range(args.rounds):
                order = PHASES if round_no % 2 == 0 else PHASES[::-1]
                for phase in order:
                    use(phase)
                    load(protocol, 0.5)
                    copies, cpu, _ = answered(), cpu_seconds(gateway.pid), probe()
                    result = load(protocol, args.seconds)
                    cpu = cpu_seconds(gateway.pid) - cpu
                    result.update(probe())
                    result.update(
                        protocol=protocol, round=round_no, phase=phase,
                        copies_answered=answered() - copies,
                        gateway_cpu_us=cpu / max(result["requests"], 1) * 1e6,
                    )  # fmt: skip
                    windows.append(result)
                    if not args.json:
                        print(_window_line(result), flush=True)
    finally:
        if gateway.stdin is not None:
            gateway.stdin.close()
        stop_gateway(gateway, 10)
        fakes.stdin.close()
        fakes.wait(10)
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "serve_fakes"},
        "windows": windows,
        "p99_ratio": {
            protocol: _ratio([w for w in windows if w["protocol"] == protocol], args.rounds)
            for protocol in args.protocols
        },
    }


def _window_line(w: dict[str, Any]) -> str:
    line = (
        f"{w['protocol']:>4} round {w['round']} {w['phase']:>4}: {w['requests']} requests,"
        f" {w['failures']} failed, p50 {w['p50_ms']:.3f} ms, p99 {w['p99_ms']:.3f} ms,"
        f" max {w['max_ms']:.2f} ms, copies answered {w['copies_answered']}"
    )
    if "turns" in w:
        return line + (
            f", loop: longest turn {w['longest_turn_ms']:.2f} ms, turns over 1 ms"
            f" {w['turns_over_1ms']}, over 2 ms {w['turns_over_2ms']}; longest collection"
            f" {w['gc_longest_ms']:.2f} ms of {w['gc_runs']}"
        )
    return line + f", gateway {w['gateway_cpu_us']:.0f} us/request"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="http,grpc or one of them")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rate", type=float, default=300.0, help="requests/s, all clients together")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument(
        "--burst", type=int, default=SHADOW_MAX_QUEUE, help="the shadow's copies in flight"
    )
    p.add_argument("--hold", type=float, default=1.0, help="seconds the candidate holds a copy")
    p.add_argument("--batch", type=int, default=256, help="copies that end the candidate's wait")
    p.add_argument("--gateway-cpus", default="0" if (os.cpu_count() or 1) > 1 else None)
    p.add_argument("--client-cpus", default="1-" if (os.cpu_count() or 1) > 1 else None)
    p.add_argument(
        "--gateway-arg", action="append", default=[], help="passed to the gateway (repeat it)"
    )
    p.add_argument("--fake-cpus", help="CPUs of the Triton stand-ins (default: --client-cpus)")
    p.add_argument("--ports", default=DEFAULT_RANGE, help="range to pick free ports from")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--loop-probe",
        action="store_true",
        help="time every turn of the gateway's event loop (its CPU figures are then void)",
    )
    p.add_argument("--serve-fakes", nargs=3, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe-gateway"]:  # the child process of --loop-probe
        return _probed_gateway(argv[1:])
    args = p.parse_args(argv)
    if args.serve_fakes:
        ports, batch, hold = args.serve_fakes
        run_fast(lambda: _serve_fakes(json.loads(ports), int(batch), float(hold)))
        return 0
    args.protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    unknown = sorted(set(args.protocols) - set(PROTOCOLS))
    if unknown or not args.protocols:
        p.error(f"--protocols: choose from {','.join(PROTOCOLS)}, got {unknown or 'nothing'}")
    if args.rounds < 1 or args.seconds <= 0 or args.rate <= 0 or args.clients < 1:
        p.error("--rounds, --seconds, --rate and --clients must be positive")
    if args.burst < 1 or args.batch < 1 or args.hold <= 0:
        p.error("--burst, --batch and --hold must be positive")
    if args.client_cpus == "1-":
        args.client_cpus = f"1-{(os.cpu_count() or 2) - 1}"
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for protocol, r in result["p99_ratio"].items():
            print(
                f"{protocol}: primary p99 with the slow shadow / without: {r['median']:.2f} "
                f"[{r['min']:.2f}-{r['max']:.2f}] over {args.rounds} rounds ({r['rounds']})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
