"""KServe v2 `ModelStreamInfer` through the gateway: one bidirectional stream, many infers.

Each `ModelInferRequest` on the client's stream is one ModelInfer for the gateway: routed,
refused, counted and stamped exactly as a unary call is (`GrpcFrontend.infer_message`, shared
with the unary handler), so the per-variant figures the canary controller reads include
streams. Upstream, each message is one unary ModelInfer over the same persistent channel:
the ensembles served here are not decoupled (one request, one response), a unary call lets a
stream's messages go to different variants and replicas, and an upstream stream would bind a
client's stream to one Triton and add per-stream state for no gain. Decoupled models would need
the upstream stream (several responses per request); none is routed through the gateway today.

Answers follow Triton 2.51's own stream, checked against the embedded server:
- a success is `ModelStreamInferResponse.infer_response` (field 2): Triton's answer with its
  `id` echoed, stamped with the public name, the pipeline version and `lastmile_variant`, plus
  the `triton_final_response: true` parameter Triton's stream adds to every response;
- a failure is `error_message` (field 1) plus an `infer_response` holding only the request's
  `id` (empty when it had none), and the stream stays open for the next message. Unknown
  model, bad version, upstream errors: the unary call's public messages and translation.
A message the gateway cannot parse is answered with an error too (Triton silently ends the
whole stream there, dropping the messages after it: that helps no client).

Messages are processed concurrently and answered in completion order, as Triton does, because
a stream is how clients pipeline requests (tritonclient matches answers by id), and in-order
answers would make every message wait for the slowest before it. At most MAX_IN_FLIGHT
messages of one stream are in flight or waiting to be written; past that the gateway stops
reading the stream, and HTTP/2 flow control pushes back on the client. One writer (the
handler itself) writes answers, since a grpc.aio call takes one write at a time. When the
client cancels or the gateway's shutdown grace runs out, grpc.aio cancels the handler, which
cancels every message in flight and so its upstream call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from rollout.grpc_wire import WireError, bool_parameter, encode_varint, last_string, string_field

if TYPE_CHECKING:
    from rollout.grpc_routing import GrpcVariant

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64  # messages per stream being answered or waiting to be written
Metadata = tuple[tuple[str, Any], ...]

# ModelStreamInferResponse: error_message = 1, infer_response = 2; ModelInferRequest.id = 3
# and ModelInferResponse.id = 3; ModelInferResponse.parameters = 4.
_ERROR, _INFER_RESPONSE, _ID = 1, 2, 3
_INFER_RESPONSE_KEY = encode_varint(_INFER_RESPONSE << 3 | 2)
_FINAL = bool_parameter(4, b"triton_final_response", True)


class InferFailed(Exception):
    """A ModelInfer the gateway answers with an error (already counted): a unary call aborts
    with `code` and `details`, a stream answers that one message with `details`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Infers(Protocol):
    """What a stream needs of the front end: one routed, counted ModelInfer."""

    async def infer_message(
        self, request: bytes, metadata: Metadata, context: Any, *, announce: bool = False
    ) -> tuple[bytes, GrpcVariant]: ...


def success_message(response: bytes, variant: GrpcVariant) -> bytes:
    """The stream message for Triton's `response`, stamped, built with one copy of it."""
    size = len(response) + len(variant.response_suffix) + len(_FINAL)
    return b"".join(
        (_INFER_RESPONSE_KEY, encode_varint(size), response, variant.response_suffix, _FINAL)
    )


def failure_message(details: str, request: bytes) -> bytes:
    """The stream message for a failed `request`: Triton's shape, the request's id kept."""
    try:
        request_id = last_string(request, _ID)
    except WireError:
        request_id = b""
    inner = string_field(_ID, request_id) if request_id else b""
    return string_field(_ERROR, details.encode()) + string_field(_INFER_RESPONSE, inner)


async def serve_stream(frontend: Infers, requests: AsyncIterator[bytes], context: Any) -> None:
    """Answer every message of one ModelStreamInfer call, then end it OK once the client has
    closed its side and every answer is written."""
    stream = _Stream(frontend, context)
    reader = asyncio.ensure_future(stream.read(requests))
    reader.add_done_callback(lambda _: stream.answers.put_nowait(None))
    try:
        while (message := await stream.answers.get()) is not None:
            await context.write(message)
            stream.slots.release()
        await reader  # raises what broke the reading (the end of the stream does not)
    finally:
        pending = [reader, *stream.tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class _Stream:
    """The messages of one stream in flight and their answers waiting for the writer."""

    __slots__ = ("answers", "context", "frontend", "metadata", "slots", "tasks")

    def __init__(self, frontend: Infers, context: Any) -> None:
        self.frontend = frontend
        self.context = context
        self.metadata: Metadata = context.invocation_metadata() or ()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)  # released once an answer is written
        self.answers: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: nothing more
        self.tasks: set[asyncio.Task[None]] = set()

    async def read(self, requests: AsyncIterator[bytes]) -> None:
        async for request in requests:
            await self.slots.acquire()  # backpressure: stop reading while the stream is full
            task = asyncio.ensure_future(self.answer(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.tasks:  # none is added from here on
            await asyncio.wait(self.tasks)

    async def answer(self, request: bytes) -> None:
        try:
            response, variant = await self.frontend.infer_message(
                request, self.metadata, self.context
            )
            message = success_message(response, variant)
        except InferFailed as exc:
            message = failure_message(exc.details, request)
        except Exception:  # never the stream's end: one message failed, say so and go on
            logger.exception("ModelStreamInfer message failed in the gateway")
            message = failure_message("the gateway failed to process the request", request)
        self.answers.put_nowait(message)
