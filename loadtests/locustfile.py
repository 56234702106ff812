"""Locust users that send KServe v2 inference requests to any running Lastmile gateway.

    locust -f loadtests/locustfile.py --host http://gateway:8000 --pipeline fraud \\
        --grpc-address gateway:8001 --input-shape 1,4 --headless -u 16 -r 16 -t 60s

`HttpInferUser` posts JSON to ``/v2/models/<pipeline>/infer`` (FastHttpUser, keep-alive);
`GrpcInferUser` sends the same tensors as a ``ModelInferRequest`` over gRPC. Pick one class by
naming it after the options (``locust -f loadtests/locustfile.py GrpcInferUser``). Every option
has an environment variable (``LOCUST_PIPELINE``, ``LOCUST_GRPC_ADDRESS``, …; see
``locust -f loadtests/locustfile.py --help``, group "Lastmile").

Every answer's ``lastmile-variant`` (HTTP header; gRPC response parameter ``lastmile_variant``,
else the initial metadata) is counted per variant and per wall-clock second, failures included,
so that a scenario can report the share per variant and see when traffic moved. With
``--variants-file`` the counts, and at the end the run's totals, are written there as JSON
(atomically, every ``--variants-interval`` seconds); without it they are logged at the end.

The gRPC users build the request with ``tritonclient.grpc``'s protobuf messages and send it
through its generated stub rather than ``InferenceServerClient.infer``: that client drops the
metadata of a failed call, and a failure's variant is what a canary scenario needs.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.monkey
import numpy as np
from locust import FastHttpUser, User, events, task
from locust.env import Environment
from numpy.typing import NDArray

# Under locust, gevent has patched the standard library: grpc must cooperate with it too.
# Imported without the patch (a unit test), grpc is left as it is.

if gevent.monkey.is_module_patched("socket"):
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()

logger = logging.getLogger(__name__)

VARIANT_HEADER = "lastmile-variant"
VARIANT_PARAMETER = "lastmile_variant"
WORKSPACE_HEADER = "lastmile-workspace"
NO_VARIANT = "none"  # an answer that named no variant (refused connection, timeout, ...)
POOL_SIZE = 64  # distinct request bodies per user, built once and sent in turn

_NUMPY_TYPES: dict[str, Any] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class Target:
    """What the users send and where: built from locust's parsed options."""

    host: str = "http://127.0.0.1:8000"
    grpc_address: str = ""  # default: the host's name, port 8001
    pipeline: str = "fraud"
    pipeline_version: str = ""
    workspace: str = ""
    input_name: str = "x"
    input_shape: tuple[int, ...] = (1, 4)
    input_datatype: str = "FP32"
    input_low: float = 0.0
    input_high: float = 1.0
    sticky_header: str = ""
    sticky_keys: int = 0
    timeout_s: float = 30.0
    user_rps: float = 0.0

    def __post_init__(self) -> None:
        if self.input_datatype not in _NUMPY_TYPES:
            raise ValueError(
                f"input datatype {self.input_datatype!r} is not one of {sorted(_NUMPY_TYPES)}"
            )
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            raise ValueError(f"input shape {self.input_shape} must be positive sizes")
        if self.input_high <= self.input_low:
            raise ValueError("--input-high must be above --input-low")

    @classmethod
    def from_options(cls, options: Any, host: str | None = None) -> Target:
        """From locust's ``parsed_options`` (or any object with the same attributes)."""
        shape = tuple(int(d) for d in str(options.input_shape).replace(" ", "").split(",") if d)
        return cls(
            host=(host or cls.host).rstrip("/"),
            grpc_address=options.grpc_address,
            pipeline=options.pipeline,
            pipeline_version=str(options.pipeline_version or ""),
            workspace=options.workspace,
            input_name=options.input_name,
            input_shape=shape,
            input_datatype=str(options.input_datatype).upper(),
            input_low=float(options.input_low),
            input_high=float(options.input_high),
            sticky_header=options.sticky_header,
            sticky_keys=int(options.sticky_keys),
            timeout_s=float(options.request_timeout),
            user_rps=float(options.user_rps),
        )

    @property
    def http_path(self) -> str:
        version = f"/versions/{self.pipeline_version}" if self.pipeline_version else ""
        return f"/v2/models/{self.pipeline}{version}/infer"

    @property
    def grpc_target(self) -> str:
        if self.grpc_address:
            return self.grpc_address
        return f"{urlsplit(self.host).hostname or '127.0.0.1'}:8001"

    def headers(self, key: str | None) -> dict[str, str]:
        """HTTP headers (and gRPC metadata): workspace and sticky key, where configured."""
        headers = {}
        if self.workspace:
            headers[WORKSPACE_HEADER] = self.workspace
        if self.sticky_header and key is not None:
            headers[self.sticky_header.lower()] = key
        return headers

    def sample(self, rng: np.random.Generator) -> NDArray[Any]:
        """One input tensor: uniform in [input_low, input_high)."""
        dtype = _NUMPY_TYPES[self.input_datatype]
        if self.input_datatype == "BOOL":
            return rng.random(self.input_shape) < 0.5
        if np.issubdtype(dtype, np.integer):
            low, high = int(np.floor(self.input_low)), int(np.ceil(self.input_high))
            return rng.integers(low, max(high, low + 1), self.input_shape, dtype=dtype)
        values = rng.uniform(self.input_low, self.input_high, self.input_shape)
        return values.astype(dtype)

    def json_body(self, tensor: NDArray[Any]) -> str:
        """The KServe v2 JSON request carrying `tensor` as the configured input."""
        body = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": list(self.input_shape),
                    "datatype": self.input_datatype,
                    "data": tensor.reshape(-1).tolist(),
                }
            ]
        }
        return json.dumps(body, separators=(",", ":"))

    def grpc_request(self, tensor: NDArray[Any]) -> Any:
        """The ``ModelInferRequest`` carrying `tensor` (raw little-endian contents)."""
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(
            model_name=self.pipeline, model_version=self.pipeline_version
        )
        request.inputs.add(
            name=self.input_name, datatype=self.input_datatype, shape=list(self.input_shape)
        )
        little_endian = tensor.astype(tensor.dtype.newbyteorder("<"), copy=False)
        request.raw_input_contents.append(little_endian.tobytes())
        return request


def sticky_keys(target: Target, user_number: int) -> Iterator[str | None]:
    """The sticky key of each request a user sends: its own (``user-N``) for every request,
    or with ``--sticky-keys K`` the keys ``key-0`` … ``key-(K-1)`` in turn, starting at the
    user's number (so users spread over them)."""
    if not target.sticky_header:
        return itertools.repeat(None)
    if target.sticky_keys <= 0:
        return itertools.repeat(f"user-{user_number}")
    start = user_number % target.sticky_keys
    return (f"key-{(start + i) % target.sticky_keys}" for i in itertools.count())


class VariantTally:
    """Answers per variant: in total and per wall-clock second (ok, failed)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.totals: dict[str, list[int]] = {}
        self.seconds: dict[int, dict[str, list[int]]] = {}

    def reset(self) -> None:
        self.started = time.time()
        self.totals.clear()
        self.seconds.clear()

    def add(self, variant: str | None, ok: bool, now: float | None = None) -> None:
        name = variant or NO_VARIANT
        second = int(time.time() if now is None else now)
        for counts in (
            self.totals.setdefault(name, [0, 0]),
            self.seconds.setdefault(second, {}).setdefault(name, [0, 0]),
        ):
            counts[0 if ok else 1] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "updated": time.time(),
            "totals": {v: {"ok": c[0], "failed": c[1]} for v, c in self.totals.items()},
            "seconds": {
                str(s): {v: {"ok": c[0], "failed": c[1]} for v, c in per.items()}
                for s, per in sorted(self.seconds.items())
            },
        }


TALLY = VariantTally()
_user_numbers = itertools.count()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` to `path` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def run_summary(environment: Environment) -> dict[str, Any]:
    """Totals of the run from locust's own statistics (all request types, and each)."""

    def figures(entry: Any) -> dict[str, Any]:
        return {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "rps": round(entry.total_rps, 2),
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": round(entry.max_response_time, 2) if entry.num_requests else None,
        }

    stats = environment.stats
    return {
        "total": figures(stats.total),
        "by_type": {f"{k[1]} {k[0]}": figures(e) for k, e in sorted(stats.entries.items())},
    }


# ---- locust wiring ------------------------------------------------------------------------


def _listen(hook: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``@hook.add_listener`` with a type (locust's event hooks have none)."""

    def register(handler: Callable[..., None]) -> Callable[..., None]:
        hook.add_listener(handler)
        return handler

    return register


@_listen(events.init_command_line_parser)
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("Lastmile", "what to send to the gateway")

    def option(name: str, default: Any, text: str, **kw: Any) -> None:
        env = "LOCUST_" + name.lstrip("-").replace("-", "_").upper()
        group.add_argument(name, env_var=env, default=default, help=text, **kw)

    option("--pipeline", "fraud", "Pipeline to infer (the gateway's model name).")
    option("--pipeline-version", "", "Ask for this pipeline version (default: as routed).")
    option("--grpc-address", "", "Gateway gRPC host:port (default: the host's name, :8001).")
    option("--workspace", "", "Send lastmile-workspace (default: the gateway's default).")
    option("--input-name", "x", "Input tensor name.")
    option("--input-shape", "1,4", "Input shape, batch included, e.g. 1,4.")
    option("--input-datatype", "FP32", "KServe datatype of the input (FP32, INT64, ...).")
    option("--input-low", 0.0, "Input values are uniform in [low, high).", type=float)
    option("--input-high", 1.0, "Upper bound of the input values (excluded).", type=float)
    option("--sticky-header", "", "Send a sticky key in this header (e.g. lastmile-key).")
    option("--sticky-keys", 0, "0: one key per user; K: each request one of K keys.", type=int)
    option("--request-timeout", 30.0, "Seconds before a request fails.", type=float)
    option("--user-rps", 0.0, "Requests/s per user (0: as fast as answers come).", type=float)
    option("--variants-file", "", "Write the answers per variant here (JSON).")
    option("--variants-interval", 0.5, "Seconds between writes of --variants-file.", type=float)


def _variants_path(environment: Environment) -> Path | None:
    options = environment.parsed_options
    path = getattr(options, "variants_file", "") if options is not None else ""
    return Path(path) if path else None


_writer: list[gevent.Greenlet] = []  # the greenlet writing --variants-file while users run


@_listen(events.test_start)
def _start_writer(environment: Environment, **_: Any) -> None:
    """A new run (the web UI may start several): counts from zero, written while it runs."""
    TALLY.reset()
    path = _variants_path(environment)
    if path is None or environment.parsed_options is None:
        return
    interval = float(environment.parsed_options.variants_interval)

    def write_loop() -> None:
        while True:
            write_json(path, TALLY.snapshot() | {"done": False})
            gevent.sleep(interval)

    _writer.append(gevent.spawn(write_loop))


@_listen(events.test_stop)
def _write_final(environment: Environment, **_: Any) -> None:
    """Once every user stopped: the final counts and locust's totals (``done``: true)."""
    while _writer:
        _writer.pop().kill(block=True)
    final = TALLY.snapshot() | {"done": True, "summary": run_summary(environment)}
    path = _variants_path(environment)
    if path is not None:
        write_json(path, final)
    else:
        logger.info("answers per variant: %s", json.dumps(final["totals"]))


class _Lastmile:
    """What both users share: their target, a pool of request tensors, their sticky keys."""

    environment: Environment
    target: Target

    def _setup_target(self) -> Target:
        options = self.environment.parsed_options
        target = Target.from_options(options, self.environment.host) if options else Target()
        number = next(_user_numbers)
        rng = np.random.default_rng(number)
        self._tensors = [target.sample(rng) for _ in range(POOL_SIZE)]
        self._keys = sticky_keys(target, number)
        return target

    def wait_time(self) -> float:
        return self._pace(self.target)

    def _pace(self, target: Target) -> float:
        if target.user_rps <= 0:
            return 0.0
        # constant pacing: each task starts 1/rps after the previous one started
        period = 1.0 / target.user_rps
        now = time.monotonic()
        last = getattr(self, "_last_start", now)
        self._last_start = max(now, last + period)
        return max(0.0, self._last_start - now)

    def _fire(
        self, kind: str, name: str, start: float, length: int, error: Exception | None
    ) -> None:
        hook: Any = self.environment.events.request
        hook.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=error,
            context={},
        )


class HttpInferUser(_Lastmile, FastHttpUser):
    """POSTs a KServe v2 JSON request per task over a keep-alive connection."""

    host = Target.host

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        if options is not None:  # --request-timeout for HTTP too (the session takes it here)
            self.network_timeout = self.connection_timeout = float(options.request_timeout)
        super().__init__(environment)

    def on_start(self) -> None:
        self.target = self._setup_target()
        self._bodies = itertools.cycle([self.target.json_body(t) for t in self._tensors])

    @task
    def infer(self) -> None:
        headers = {"content-type": "application/json", **self.target.headers(next(self._keys))}
        with self.client.post(
            self.target.http_path,
            data=next(self._bodies),
            headers=headers,
            name=f"infer {self.target.pipeline}",
            catch_response=True,
        ) as resp:
            variant = resp.headers.get(VARIANT_HEADER) if resp.headers else None
            ok = resp.status_code == 200
            TALLY.add(variant, ok)
            if not ok:
                text = (resp.text or "")[:200] if resp.content else str(resp.error)
                resp.failure(f"HTTP {resp.status_code}: {text}")


class GrpcInferUser(_Lastmile, User):
    """Sends a ``ModelInferRequest`` per task over one gRPC channel per user."""

    host = Target.host

    def on_start(self) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.target = self._setup_target()
        self._requests = itertools.cycle([self.target.grpc_request(t) for t in self._tensors])
        limit = 2**31 - 1
        self._channel = grpc.insecure_channel(
            self.target.grpc_target,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def infer(self) -> None:
        import grpc

        metadata = tuple(self.target.headers(next(self._keys)).items())
        request = next(self._requests)
        start = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            response, call = self._stub.ModelInfer.with_call(
                request, metadata=metadata, timeout=self.target.timeout_s
            )
            length = response.ByteSize()
            variant = grpc_variant(response, call)
        except grpc.RpcError as exc:
            error = GrpcError(exc)
            variant = grpc_variant(None, exc)
        TALLY.add(variant, error is None)
        self._fire("grpc", f"infer {self.target.pipeline}", start, length, error)


class GrpcError(Exception):
    """A failed gRPC call as one line (status code and details) for locust's error report."""

    def __init__(self, exc: Any) -> None:
        code = getattr(exc, "code", lambda: None)()
        details = getattr(exc, "details", lambda: None)()
        super().__init__(f"{getattr(code, 'name', code)}: {details}")


def grpc_variant(response: Any, call: Any) -> str | None:
    """The variant a gRPC answer names: its ``lastmile_variant`` parameter, else the initial
    metadata of the call (all a failed call has)."""
    if response is not None and VARIANT_PARAMETER in response.parameters:
        return str(response.parameters[VARIANT_PARAMETER].string_param)
    try:
        metadata = call.initial_metadata() or ()
    except Exception:  # a call that never reached the server has none
        return None
    for key, value in metadata:
        if key == VARIANT_HEADER:
            return str(value)
    return None
