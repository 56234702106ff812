"""gRPC load for the gateway benchmark: ModelInfer with an FP32 [1, 4] tensor.

Both drivers use one grpc.aio channel and N coroutines with one request in flight each:
- raw (default): the request bytes `tritonclient` would send, serialized once and sent through
  a bytes-level stub; the client costs as little CPU as possible, which matters when client,
  proxy and Triton share two cores;
- tritonclient: the official `tritonclient.grpc.aio` client, building and parsing every message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb

from loadtests._models import latency_stats, run_fast

X = np.array([[1, 2, 3, 4]], dtype=np.float32)
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DRIVERS = ("raw", "tritonclient")


def request_bytes(model: str) -> bytes:
    """The ModelInferRequest tritonclient.grpc sends for infer(model, [x]) with output y."""
    inp = grpcclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.extend([inp._get_tensor()])
    request.raw_input_contents.extend([inp._get_content()])
    request.outputs.extend([grpcclient.InferRequestedOutput("y")._get_tensor()])
    return request.SerializeToString()


async def check_answer(address: str, model: str) -> str:
    """One ModelInfer; verifies y = 2x and returns the lastmile_variant parameter ('' if none)."""
    async with grpc.aio.insecure_channel(address) as channel:
        raw = await channel.unary_unary(INFER_METHOD)(request_bytes(model), timeout=30)
    reply = pb.ModelInferResponse.FromString(raw)
    got = np.frombuffer(reply.raw_output_contents[0], np.float32).tolist()
    if got != [2, 4, 6, 8]:
        raise RuntimeError(f"{address} {model}: wrong answer {got}")
    return str(reply.parameters["lastmile_variant"].string_param)


async def _drive(address: str, model: str, clients: int, seconds: float, driver: str) -> Any:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    call: Callable[[], Awaitable[Any]]
    close: Callable[[], Awaitable[Any]]
    if driver == "raw":
        channel = grpc.aio.insecure_channel(address)
        stub = channel.unary_unary(INFER_METHOD)
        body = request_bytes(model)

        def call() -> Awaitable[Any]:
            return stub(body, timeout=10)

        close = channel.close
    else:
        client = aioclient.InferenceServerClient(address)
        inp = aioclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        outputs = [aioclient.InferRequestedOutput("y")]

        async def call() -> Any:
            return (await client.infer(model, [inp], outputs=outputs)).as_numpy("y")

        close = client.close
    await call()  # the channel is connected before the clock starts
    deadline = loop.time() + seconds

    async def one_client() -> None:
        nonlocal errors
        while loop.time() < deadline:
            start = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    began = loop.time()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = loop.time() - began
    await close()
    return {**latency_stats(latencies, elapsed, errors), "requests": len(latencies) + errors}


def run_grpc(address: str, model: str, clients: int, seconds: float, driver: str) -> Any:
    """One measurement: rps, p50/p99 ms, errors, requests."""
    return run_fast(lambda: _drive(address, model, clients, seconds, driver))


def check_grpc(address: str, model: str) -> str:
    return run_fast(lambda: check_answer(address, model))
