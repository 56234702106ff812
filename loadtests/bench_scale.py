"""Scale figures: routing tables for many pipelines, many gateways, many models per Triton.

    python loadtests/bench_scale.py [--quick] [--rounds 5] [--port-range 20000-29999] [--json]

Measures on this machine what a design note on hundreds of Triton pods and thousands of models
needs, each figure as the median and [min-max] of interleaved rounds:

1. routing table of --routes pipelines (``manager.plan.routes.routing_table``, 4 Triton
   endpoints per variant; 2 % canary, 2 % sticky A/B and 2 % shadow routes with two versions,
   the rest one version): time to build it, to serialise it and to parse + validate it (what
   a gateway does with a pushed body), and its JSON size. Then --gateways real gateway
   processes (``python -m rollout.gateway``, as ``manager.system.GatewayProcess`` starts them:
   admin token, routes file, the 4 endpoints as allowed upstreams, no gRPC listener, INFO
   log) and the time to PUT a new generation of the table to the first N of them at once (a
   thread pool, as a manager would push), per N; N = 1 is one gateway's install time, also
   measured with the gRPC listener on. Pull path (``rollout.routes_pull``): one more gateway
   polls a local HTTP server that answers the table as the manager's
   ``/api/v1/gateway/routes`` does (bearer token, ETag, 304); the time from changing the
   served table to the gateway serving it, split into waiting for the next poll and
   fetch + install, over 4 x --rounds changes each landing at a random point of the poll
   period (the generation is read from the gateway's /metrics gauge every 10 ms: GET /routes
   would re-serialise the whole table on every check).
2. store: the same number of served pipelines in a SQLite store; the time of
   ``serving.current_table`` (what every pull by every gateway costs the manager) and the SQL
   statements it runs.
3. Triton: 4 embedded tritonservers, each over a repository of --models config-only model
   folders (listed, never loaded); the repository index (``POST /v2/repository/index``, what
   reconcile reads) of one server, of the 4 in turn as ``FleetClient`` reads them, and of the
   4 at once. Then on one server: loading and unloading --loads tiny Python-backend models and
   --onnx-loads ONNX-via-Python-backend models (the CPU profile's own model.py), one at a
   time over gRPC as the manager does, per model. Reconcile times for many models are
   extrapolated from these, and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._bench_ports import DEFAULT_RANGE, PortPicker  # noqa: E402
from loadtests._models import (  # noqa: E402
    cpu_seconds,
    launch_gateway,
    stop_gateway,
    wait_children,
    write_scale_model,
)
from manager.names import triton_ensemble_name  # noqa: E402
from manager.plan.routes import Endpoint, ServedPipeline, routing_table  # noqa: E402
from rollout.routing import RoutingTable  # noqa: E402

SERVERS = 4
PULL_ROUNDS = 4  # pull measurements per round of the others
WORKSPACES = 10
Samples = dict[str, list[float]]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": [round(v, 6) for v in values],
    }


def served_pipelines(n: int) -> list[ServedPipeline]:
    """`n` pipelines over 10 workspaces; every 50th a canary, then a sticky A/B, then a shadow."""
    out = []
    for i in range(n):
        ws, name = f"team-{i % WORKSPACES}", f"pipe-{i:04d}"
        kind = {0: "canary", 1: "ab", 2: "shadow"}.get(i % 50)
        versions = (1, 2) if kind else (1,)
        out.append(
            ServedPipeline(
                workspace=ws,
                pipeline=name,
                stable=1,
                ensembles={v: triton_ensemble_name(ws, name, v) for v in versions},
                strategy=kind,
                weights={1: 90.0, 2: 10.0} if kind else {},
                capture=0.01 if i % 10 == 0 else 0.0,
            )
        )
    return out


# -- 1. gateways ------------------------------------------------------------------------------
class GatewayProc:
    """One ``python -m rollout.gateway`` subprocess with its own folder, token and ports."""

    def __init__(
        self,
        work: Path,
        ports: PortPicker,
        allowed: list[str],
        *,
        grpc: bool = False,
        pull_url: str | None = None,
        poll_s: float = 2.0,
        token: str | None = None,
    ) -> None:
        work.mkdir(parents=True)
        self.http_port, grpc_port, self.metrics_port, self.admin_port = ports.take(4)
        self.token = token or f"bench-{random.getrandbits(64):016x}"
        token_file = work / "token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        args = [
            "--http-port", str(self.http_port), "--grpc-port", str(grpc_port if grpc else 0),
            "--metrics-port", str(self.metrics_port), "--admin-port", str(self.admin_port),
            "--admin-token-file", str(token_file),
        ]  # fmt: skip
        if pull_url is None:
            args += ["--routes-file", str(work / "routes.json")]
        else:  # as on a cluster: the manager's token for both, no routes file
            args += ["--routes-url", pull_url, "--routes-token-file", str(token_file),
                     "--routes-poll-s", f"{poll_s:g}"]  # fmt: skip
        for upstream in allowed:
            args += ["--allowed-upstream", upstream]
        self.log = work / "gateway.log"
        self.proc = launch_gateway(args, self.log)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=60)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def put(self, body: bytes) -> None:
        status, answer = self.request("PUT", "/routes", body)
        if status != 200:
            raise RuntimeError(f"PUT /routes answered {status}: {answer[:300]!r}")

    def wait_up(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()[-2000:]}")
            try:
                if self.request("GET", "/shadow")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not up after {timeout_s:.0f} s")

    def generation(self) -> int:
        """The generation in force, from the /metrics gauge (-1: no table)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            if line.startswith("lastmile_gateway_routing_generation "):
                return int(float(line.split()[1]))
        raise RuntimeError("no lastmile_gateway_routing_generation in /metrics")


class TableServer:
    """The manager's GET /api/v1/gateway/routes in miniature: bearer token, ETag, 304."""

    path = "/api/v1/gateway/routes"

    def __init__(self, port: int, token: str) -> None:
        self.body, self.etag = b"", '""'
        self.changed_at = 0.0
        self.fetched_at: float | None = None  # first 200 answer after the last change
        self.answers = {200: 0, 304: 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body, etag = outer.body, outer.etag
                if self.headers.get("If-None-Match") == etag:
                    outer.answers[304] += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                outer.answers[200] += 1
                if outer.fetched_at is None:
                    outer.fetched_at = time.perf_counter()
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, table: RoutingTable) -> None:
        body, etag = table.to_json(), f'"{table.generation}"'
        self.fetched_at, self.changed_at = None, time.perf_counter()
        self.body, self.etag = body, etag

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bench_tables(
    a: argparse.Namespace, served: list[ServedPipeline], endpoints: list[Endpoint]
) -> tuple[dict[str, Any], RoutingTable]:
    samples: Samples = {"build": [], "to_json": [], "from_json": []}
    table = routing_table(1, served, endpoints)
    for _ in range(a.rounds):
        seconds, table = timed(lambda: routing_table(1, served, endpoints))
        samples["build"].append(seconds)
        seconds, body = timed(table.to_json)
        samples["to_json"].append(seconds)
        samples["from_json"].append(timed(partial(RoutingTable.from_json, body))[0])
    body = table.to_json()
    info = {
        "routes": len(table.routes),
        "json_bytes": len(body),
        "targets": len(table.targets()),
        **{k: spread(v) for k, v in samples.items()},
    }
    return info, table


def bench_gateways(
    a: argparse.Namespace, work: Path, ports: PortPicker, table: RoutingTable, allowed: list[str]
) -> dict[str, Any]:
    routes = list(table.routes.values())
    token = f"pull-{random.getrandbits(64):016x}"
    pull_port = ports.take(1)[0]
    server = TableServer(pull_port, token)
    generation = time.time_ns() // 1_000_000
    server.serve(RoutingTable.build(generation, routes))
    started: list[GatewayProc] = []
    try:
        for i in range(max(a.gateways)):
            started.append(GatewayProc(work / f"gw{i}", ports, allowed))
        started.append(GatewayProc(work / "gw-grpc", ports, allowed, grpc=True))
        url = f"http://127.0.0.1:{pull_port}{TableServer.path}"
        started.append(
            GatewayProc(
                work / "gw-pull", ports, allowed, pull_url=url, poll_s=a.poll_s, token=token
            )
        )
        for gw in started:
            gw.wait_up()
        *push, grpc, puller = started
        result = measure_push(a, push, grpc, routes, generation + 1)
        result["pull"] = measure_pull(a, puller, server, routes, generation)
        return result
    finally:
        for gw in started:
            stop_gateway(gw.proc, 20)
        server.close()


def _gateway_cpu(gateways: list[GatewayProc]) -> float:
    return sum(cpu_seconds(gw.proc.pid) for gw in gateways)


def push_all(pool: ThreadPoolExecutor, gateways: list[GatewayProc], body: bytes) -> None:
    for future in [pool.submit(gw.put, body) for gw in gateways]:
        future.result()


def measure_push(
    a: argparse.Namespace,
    push: list[GatewayProc],
    grpc: GatewayProc,
    routes: list[Any],
    generation: int,
) -> dict[str, Any]:
    """PUT a new generation to the first N gateways at once, per N, in interleaved rounds."""
    cells = {f"{n} gateway{'s' if n > 1 else ''}": push[:n] for n in a.gateways}
    cells["1 gateway, gRPC on"] = [grpc]
    pool = ThreadPoolExecutor(max_workers=len(push))
    body = RoutingTable.build(generation, routes).to_json()
    for gw in [*push, grpc]:  # warm-up: first table, connection pools, the allocator
        gw.put(body)
    samples: Samples = {label: [] for label in cells}
    cpu: Samples = {label: [] for label in cells}
    labels = list(cells)
    last: dict[GatewayProc, int] = {}
    try:
        for round_no in range(a.rounds):
            shift = round_no % len(labels)
            for label in labels[shift:] + labels[:shift]:
                generation += 1
                body = RoutingTable.build(generation, routes).to_json()  # once, as a manager
                gateways = cells[label]
                before = _gateway_cpu(gateways)
                seconds, _ = timed(partial(push_all, pool, gateways, body))
                samples[label].append(seconds)
                last.update(dict.fromkeys(gateways, generation))
                cpu[label].append((_gateway_cpu(gateways) - before) / len(gateways))
    finally:
        pool.shutdown()
    for gw, pushed in last.items():
        if gw.generation() != pushed:
            raise RuntimeError(f"a gateway does not serve generation {pushed} pushed to it")
    return {
        "push": {label: spread(values) for label, values in samples.items()},
        "cpu_per_install": {label: spread(values) for label, values in cpu.items()},
    }


def measure_pull(
    a: argparse.Namespace,
    puller: GatewayProc,
    server: TableServer,
    routes: list[Any],
    generation: int,
) -> dict[str, Any]:
    """From changing the served table to the pulling gateway serving it."""
    deadline = time.monotonic() + 60
    while puller.generation() != generation:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the pulling gateway never installed its first table: "
                f"{puller.log.read_text()[-1500:]}"
            )
        time.sleep(0.05)
    samples: Samples = {"change to serving": [], "waiting for the poll": [], "fetch + install": []}
    answers_before = dict(server.answers)
    began = time.perf_counter()
    for _ in range(PULL_ROUNDS * a.rounds):  # the poll's phase is noisy: more rounds
        time.sleep(random.uniform(0, a.poll_s))  # a change lands anywhere in the poll period
        generation += 1
        server.serve(RoutingTable.build(generation, routes))
        deadline = time.monotonic() + 30
        while puller.generation() != generation:
            if time.monotonic() > deadline:
                raise RuntimeError(f"generation {generation} not pulled within 30 s")
            time.sleep(0.01)
        serving = time.perf_counter()
        fetched = server.fetched_at if server.fetched_at is not None else serving
        samples["change to serving"].append(serving - server.changed_at)
        samples["waiting for the poll"].append(max(0.0, fetched - server.changed_at))
        samples["fetch + install"].append(serving - fetched)
    elapsed = time.perf_counter() - began
    status, body = puller.request("GET", "/routes")
    shown = json.loads(body)
    if status != 200 or shown["generation"] != generation or len(shown["routes"]) != len(routes):
        raise RuntimeError("the pulled table differs from the one served")
    polls = {k: server.answers[k] - answers_before[k] for k in server.answers}
    return {
        "poll_s": a.poll_s,
        **{label: spread(values) for label, values in samples.items()},
        "answers": polls,
        "polls_per_s": sum(polls.values()) / elapsed,
    }


# -- 2. store ---------------------------------------------------------------------------------
def bench_store(
    a: argparse.Namespace, work: Path, served: list[ServedPipeline], endpoints: list[Endpoint]
) -> dict[str, Any]:
    """`serving.current_table` over a SQLite store holding the same served pipelines."""
    from sqlalchemy import event
    from sqlmodel import Session

    from manager import store
    from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec
    from manager.services import serving
    from manager.services.context import Platform
    from manager.settings import Settings
    from manager.triton.fleet import TritonFleet
    from manager.triton.runtime import ExternalTriton

    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 4)),),
        batched=True,
    )
    work.mkdir(parents=True)
    engine = store.make_engine(f"sqlite:///{work / 'store.db'}")
    store.init_db(engine)
    step = PipelineStep("scale", "scale", 1, signature, {"x": TensorRef("inputs", "x")})
    with Session(engine) as session:
        workspaces: dict[str, int] = {}
        for s in served:
            if s.workspace not in workspaces:
                ws_id = store.ensure_workspace(session, name=s.workspace).id
                workspaces[s.workspace] = int(ws_id or 0)
            pipe = store.Pipeline(
                workspace_id=workspaces[s.workspace], name=s.pipeline, capture_rate=s.capture
            )
            session.add(pipe)
            session.flush()
            pipe_id = int(pipe.id or 0)
            versions: dict[int, int] = {}
            for version in s.ensembles:
                spec = PipelineSpec(s.pipeline, (step,), {"y": TensorRef("scale", "y")})
                row = store.PipelineVersion(
                    pipeline_id=pipe_id, version=version, spec=spec.to_dict()
                )
                session.add(row)
                session.flush()
                versions[version] = int(row.id or 0)
            session.add(
                store.Deployment(
                    pipeline_id=pipe_id,
                    pipeline_version_id=versions[1],
                    ensemble=s.ensembles[1],
                    triton_models=[f"{s.workspace}.scale"],
                    state="live",
                )
            )
            if s.strategy is not None:
                weights = {"1": 90.0, "2": 10.0}
                session.add(
                    store.Rollout(
                        pipeline_id=pipe_id,
                        active_pipeline_id=pipe_id,
                        strategy=s.strategy,
                        stable_version=1,
                        candidates=[2],
                        state="running",
                        weights=weights,
                    )
                )
        session.commit()
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    triton = TritonFleet([ExternalTriton(e.http_url, grpc_url=e.grpc) for e in endpoints])
    platform = Platform(settings=Settings(home=work / "home"), engine=engine, triton=triton)
    times: list[float] = []
    per_build: list[int] = []
    try:
        table = serving.current_table(platform)  # warm-up (imports, statement cache)
        for _ in range(a.rounds):
            statements[0] = 0
            seconds, table = timed(lambda: serving.current_table(platform))
            times.append(seconds)
            per_build.append(statements[0])
    finally:
        engine.dispose()
    if len(table.routes) != len(served):
        raise RuntimeError(f"the store's table has {len(table.routes)} routes, not {len(served)}")
    return {
        "pipelines": len(served),
        "current_table": spread(times),
        "statements": statistics.median(per_build),
    }


# -- 3. Triton --------------------------------------------------------------------------------
LISTED_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def write_listed_models(repo: Path, count: int) -> None:
    """`count` model folders Triton lists in its index but is never asked to load."""
    from manager.triton.client import config_from_text

    config_from_text(LISTED_CONFIG.format(name="default.idle-0000"))  # a valid ModelConfig
    for i in range(count):
        folder = repo / f"default.idle-{i:04d}"
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(LISTED_CONFIG.format(name=folder.name))


def write_onnx_models(repo: Path, names: list[str], work: Path) -> None:
    """The CPU profile's own model: an ONNX file run by the generated Python-backend model.py."""
    from manager.domain import Signature, TensorSpec
    from manager.repository.config import model_config
    from manager.repository.python_model import python_model_source
    from manager.repository.writer import RepositoryWriter
    from tests.onnx_models import make_affine

    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 4)),),
        batched=True,
    )
    onnx = make_affine(work / "affine.onnx")
    writer = RepositoryWriter(repo)
    extra = {1: {"model.py": python_model_source().encode()}}
    for name in names:
        config = model_config(
            triton_name=name, signature=signature, profile="cpu", max_batch_size=8, versions=[1]
        )
        writer.write_model(name, config, {1: onnx}, extra)


def children(pid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            count += fields[1] == str(pid)
    return count


def load_unload(triton: Any, client: Any, names: list[str]) -> dict[str, Any]:
    """Load `names` one at a time, then unload them; per-model times and Triton's CPU."""
    rest = children(triton.pid)
    cpu = cpu_seconds(triton.pid)
    loads = [timed(partial(client.load_model, name))[0] for name in names]
    cpu = cpu_seconds(triton.pid) - cpu
    if not all(client.is_model_ready(name) for name in names):
        raise RuntimeError("a loaded model is not ready")
    began = time.perf_counter()
    unloads = [timed(partial(client.unload_model, name))[0] for name in names]
    wait_children(triton.pid, rest, timeout_s=120)  # the stubs have exited
    return {
        "models": len(names),
        "load": spread(loads),
        "unload_call": spread(unloads),
        "cpu_per_load_s": cpu / len(names),
        "unload_all_until_stubs_gone_s": time.perf_counter() - began,
    }


def _close_quietly(clients: list[Any]) -> None:
    for client in clients:
        # a gevent client closed from another thread may complain: the process ends anyway
        with contextlib.suppress(Exception):
            client.close()


def bench_triton(a: argparse.Namespace, work: Path, ports: PortPicker) -> dict[str, Any]:
    from manager.triton.fleet import FleetClient
    from manager.triton.runtime import EmbeddedTriton

    cheap = [f"default.load-{i:02d}" for i in range(a.loads)]
    onnx = [f"default.onnx-{i:02d}" for i in range(a.onnx_loads)]
    t0 = time.perf_counter()
    for i in range(SERVERS):
        write_listed_models(work / f"triton{i}" / "repo", a.models)
    seconds = time.perf_counter() - t0
    for name in cheap:
        write_scale_model(work / "triton0" / "repo", name)
    write_onnx_models(work / "triton0" / "repo", onnx, work)
    tritons = [
        EmbeddedTriton(
            repository=work / f"triton{i}" / "repo",
            work_dir=work / f"triton{i}",
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            log_path=work / f"triton{i}" / "tritonserver.log",
            start_timeout_s=180,
        )
        for i, (http, grpc, metrics) in enumerate(ports.take(3) for _ in range(SERVERS))
    ]
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=SERVERS) as pool:
        for triton in tritons:
            stack.callback(triton.stop)
        started, _ = timed(lambda: list(pool.map(lambda t: t.start(), tritons)))
        clients = [stack.enter_context(t.client(timeout_s=120)) for t in tritons]
        fleet = stack.enter_context(FleetClient([t.client(timeout_s=120) for t in tritons]))
        for i, client in enumerate(clients):
            listed = len(client.repository_index())
            expected = a.models + (len(cheap) + len(onnx) if i == 0 else 0)
            if listed != expected:
                raise RuntimeError(f"server {i} lists {listed} models, expected {expected}")
        # tritonclient.http runs on gevent: a client answers only in the thread that made it
        local = threading.local()
        made: list[Any] = []

        def index_in_thread(i: int) -> int:
            own = local.__dict__.setdefault("clients", {})
            if i not in own:
                own[i] = tritons[i].client(timeout_s=120)
                made.append(own[i])
            return len(own[i].repository_index())

        def at_once() -> None:
            list(pool.map(index_in_thread, range(SERVERS)))

        stack.callback(_close_quietly, made)
        for _ in range(3):  # every pool thread makes its clients before the timing
            at_once()
        cells: dict[str, Callable[[], Any]] = {
            "1 server": clients[0].repository_index,
            f"{SERVERS} servers in turn (FleetClient)": fleet.repository_index,
            f"{SERVERS} servers at once (a client per thread)": at_once,
        }
        samples: Samples = {label: [] for label in cells}
        labels = list(cells)
        for round_no in range(a.rounds):
            shift = round_no % len(labels)
            for label in labels[shift:] + labels[:shift]:
                samples[label].append(timed(cells[label])[0])
        loads = {"python": load_unload(tritons[0], clients[0], cheap)}
        if onnx:
            loads["onnx-python"] = load_unload(tritons[0], clients[0], onnx)
    return {
        "models_per_server": a.models,
        "servers": SERVERS,
        "write_repos_s": seconds,
        "start_all_s": started,
        "index": {k: spread(v) for k, v in samples.items()},
        "loads": loads,
    }


# -- report -----------------------------------------------------------------------------------
def _ms(value: dict[str, Any]) -> str:
    return f"{value['median'] * 1e3:9.1f} ms  [{value['min'] * 1e3:.1f}–{value['max'] * 1e3:.1f}]"


def extrapolate(r: dict[str, Any]) -> list[str]:
    """Figures for larger systems computed from the measured ones (labelled as such)."""
    t, store, triton = r["table"], r["store"], r["triton"]
    per_route_kb = t["json_bytes"] / t["routes"] / 1024
    lines = [
        f"routing table of 10,000 pipelines: ~{per_route_kb * 10_000 / 1024:.0f} MB JSON, "
        f"build ~{t['build']['median'] / t['routes'] * 10_000:.1f} s, parse + validate "
        f"~{t['from_json']['median'] / t['routes'] * 10_000:.1f} s (linear in routes)"
    ]
    cpu = statistics.median(v["median"] for v in r["gateways"]["cpu_per_install"].values())
    lines.append(
        f"one change to 100 gateways: the manager sends 100 x {t['json_bytes'] / 1024:.0f} KiB "
        f"= {t['json_bytes'] * 100 / 2**20:.0f} MiB (push or pull alike), each gateway spends "
        f"~{cpu * 1e3:.0f} ms of CPU installing it (on its own CPUs, in parallel)"
    )
    polls = 100 / 2.0
    build = store["current_table"]["median"]
    lines.append(
        f"100 pulling gateways at the default --routes-poll-s 2: {polls:.0f} GET/s on "
        f"the manager, each building the table from the store ({build * 1e3:.0f} ms, "
        f"{store['statements']:.0f} SQL statements for {store['pipelines']} pipelines): "
        f"~{polls * build:.1f} CPU-s/s and ~{polls * store['statements']:,.0f} "
        "statements/s, 304 or not"
    )
    index = triton["index"][f"{SERVERS} servers in turn (FleetClient)"]["median"] / SERVERS
    lines.append(
        f"reconcile's index read, servers in turn: ~{index * 1e3:.0f} ms per server of "
        f"{triton['models_per_server']} models -> ~{index * 100:.1f} s for 100 servers"
    )
    for kind, figures in triton["loads"].items():
        per = figures["load"]["median"]
        lines.append(
            f"loading 1,000 {kind} models on {SERVERS} servers one at a time (FleetClient): "
            f"~{1000 * SERVERS * per / 60:.0f} min; on each server in parallel (own CPUs): "
            f"~{1000 * per / 60:.0f} min ({per:.2f} s/model here, "
            f"{figures['cpu_per_load_s']:.2f} CPU-s/model)"
        )
    return lines


def render(r: dict[str, Any]) -> str:
    t, gw, store, triton = r["table"], r["gateways"], r["store"], r["triton"]
    out = [
        f"scale figures: {r['header']}",
        f"command: {r['command']}",
        "median [min–max] over interleaved rounds",
        "",
        f"1. routing table: {t['routes']} routes, {t['targets']} targets "
        f"({SERVERS} Triton endpoints per variant), {t['json_bytes'] / 1024:.0f} KiB JSON",
        f"  {'build (plan.routes.routing_table)':<44}{_ms(t['build'])}",
        f"  {'serialise (to_json)':<44}{_ms(t['to_json'])}",
        f"  {'parse + validate (from_json)':<44}{_ms(t['from_json'])}",
        "  PUT /routes to N gateways at once (thread pool; admission + routes file + swap):",
    ]
    for label, value in gw["push"].items():
        cpu = gw["cpu_per_install"][label]["median"] * 1e3
        out.append(f"    {label:<42}{_ms(value)}   gateway CPU {cpu:.0f} ms/install")
    pull = gw["pull"]
    out.append(
        f"  pull (--routes-url, --routes-poll-s {pull['poll_s']:g}), change -> serving, "
        f"{len(pull['change to serving']['rounds'])} changes:"
    )
    for label in ("change to serving", "waiting for the poll", "fetch + install"):
        out.append(f"    {label:<42}{_ms(pull[label])}")
    out.append(
        f"    polls answered: {pull['answers'][200]} x 200, {pull['answers'][304]} x 304 "
        f"({pull['polls_per_s']:.1f}/s by one gateway)"
    )
    out += [
        "",
        f"2. store (SQLite, {store['pipelines']} served pipelines, 6 % with a rollout)",
        f"  {'serving.current_table (one pull)':<44}{_ms(store['current_table'])}   "
        f"{store['statements']:.0f} SQL statements",
    ]
    out += [
        "",
        f"3. Triton: {triton['servers']} embedded tritonservers x "
        f"{triton['models_per_server']} listed models (written in "
        f"{triton['write_repos_s']:.1f} s, started in {triton['start_all_s']:.1f} s)",
        "  repository index (POST /v2/repository/index):",
    ]
    for label, value in triton["index"].items():
        out.append(f"    {label:<42}{_ms(value)}")
    for kind, f in triton["loads"].items():
        out += [
            f"  {f['models']} {kind} models on one server, one at a time over gRPC:",
            f"    {'load, per model':<42}{_ms(f['load'])}   Triton CPU "
            f"{f['cpu_per_load_s'] * 1e3:.0f} ms/load",
            f"    {'unload call, per model':<42}{_ms(f['unload_call'])}",
            f"    {'unload all, until the stubs exited':<42}"
            f"{f['unload_all_until_stubs_gone_s'] * 1e3:9.1f} ms",
        ]
    out += ["", "extrapolated from the figures above (not measured):"]
    out += [f"  - {line}" for line in extrapolate(r)]
    out += ["", *r["notes"]]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="200 routes, 1 and 4 gateways, 100 models per server, 5 + 2 loads, 3 rounds",
    )
    p.add_argument("--routes", type=int, help="pipelines in the table and the store (1000)")
    p.add_argument("--gateways", help="gateway counts to push to, e.g. 1,4,8 (default)")
    p.add_argument("--models", type=int, help="listed models per Triton (1000)")
    p.add_argument("--loads", type=int, help="Python-backend models loaded and unloaded (20)")
    p.add_argument("--onnx-loads", type=int, help="ONNX-via-Python models loaded (5)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (5)")
    p.add_argument("--poll-s", type=float, default=0.5, help="--routes-poll-s of the puller")
    p.add_argument("--port-range", default=DEFAULT_RANGE, help="LOW-HIGH, loopback ports")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    quick = a.quick
    a.routes = a.routes or (200 if quick else 1000)
    a.gateways = sorted({int(n) for n in (a.gateways or ("1,4" if quick else "1,4,8")).split(",")})
    a.models = a.models if a.models is not None else (100 if quick else 1000)
    a.loads = a.loads or (5 if quick else 20)
    a.onnx_loads = a.onnx_loads if a.onnx_loads is not None else (2 if quick else 5)
    a.rounds = a.rounds or (3 if quick else 5)
    if a.gateways[0] < 1 or a.rounds < 1 or a.routes < 1 or a.poll_s <= 0:
        p.error("counts must be >= 1 and --poll-s > 0")
    try:
        PortPicker.from_text(a.port_range)
    except ValueError as exc:
        p.error(str(exc))
    return a


@contextmanager
def scratch(keep: bool) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="lastmile-bench-scale-"))
    try:
        yield work
    finally:
        if keep:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    ports = PortPicker.from_text(a.port_range)
    # 4 Triton endpoints nothing listens on: the gateways' health checks fail fast, and these
    # are the only upstreams they allow
    endpoint_ports = ports.take(2 * SERVERS)
    endpoints = [
        Endpoint(http_url=f"http://127.0.0.1:{h}", grpc=f"127.0.0.1:{g}")
        for h, g in zip(endpoint_ports[::2], endpoint_ports[1::2], strict=True)
    ]
    allowed = [f"127.0.0.1:{p}" for p in endpoint_ports]
    served = served_pipelines(a.routes)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()

    def stage(name: str) -> None:
        if not a.json:
            print(f"  {name} ({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)

    with scratch(a.keep) as work:
        stage("routing table")
        table_info, table = bench_tables(a, served, endpoints)
        stage(f"gateways {a.gateways} + gRPC + pull")
        gateways = bench_gateways(a, work / "gateways", ports, table, allowed)
        stage("store")
        store_info = bench_store(a, work / "store", served, endpoints)
        stage("tritons")
        triton_info = bench_triton(a, work / "triton", ports)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "header": f"{os.cpu_count()} CPUs, {a.rounds} rounds, "
        f"{time.perf_counter() - began:.0f} s in all",
        "command": f"python loadtests/bench_scale.py {argv_text}".strip(),
        "table": table_info,
        "gateways": gateways,
        "store": store_info,
        "triton": triton_info,
        "notes": [
            f"1-min load average {load_before:.1f} before the run, "
            f"{os.getloadavg()[0]:.1f} at its end ({os.cpu_count()} CPUs; every process "
            "here, gateways and Tritons included, shares them)"
        ],
    }
    result["extrapolated"] = extrapolate(result)
    print(json.dumps(result, indent=2) if a.json else render(result))  # the bench's output
    return 0  # a report, so `make bench` goes on


if __name__ == "__main__":
    sys.exit(main())
