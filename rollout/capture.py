"""Data capture: a sampled fraction of inference requests and their answers, as raw bytes, to a
bounded spool on disk, off the client's path.

The gateway never decodes what it captures: on the event loop a captured call costs one
sampler step and one deque append of references it already holds (the request body and
Triton's answer, kept alive a little longer). A writer thread frames the records into segment
files; the manager's summariser (manager/services/capture.py) decodes closed segments into
per-window summaries and deletes them. Two bounds keep a stalled summariser from hurting the
gateway: bytes waiting in memory (`max_pending_bytes`) and bytes on disk (`max_disk_bytes`);
past either, records are dropped and counted, never queued.

Segment format (little-endian), one record after the other::

    "LMC1" protocol:u8 ts:f64 req_hlen:i64 resp_hlen:i64 len(route):u16 len(variant):u16
    len(request):u32 len(response):u32  route  variant  request  response

`protocol` is 1 (HTTP: bodies as sent, `*_hlen` the Inference-Header-Content-Length or -1)
or 2 (gRPC: a ModelInferRequest / ModelInferResponse message, `*_hlen` -1). A segment is
written as ``*.seg.part`` and renamed to ``*.seg`` once complete, so a reader only ever sees
whole segments; a gateway that was killed leaves a ``.part`` that the next one closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HTTP, GRPC = 1, 2
MAGIC = b"LMC1"
_HEAD = struct.Struct("<4sBdqqHHII")
SEGMENT_SUFFIX = ".seg"
SEGMENT_S = 2.0  # a segment is closed (readable) at most this long after it was opened
PART_SUFFIX = ".seg.part"
# a closed segment's name: the time it was opened (ns), then what makes it unique
SEGMENT_NAME_RE = re.compile(r"^[0-9]{20}-[0-9A-Za-z-]{1,80}\.seg$")

Chunks = Sequence[bytes | memoryview]
_now = time.time


class Sampler:
    """Takes `rate` of the calls it is asked about, evenly spaced (0.01: every 100th).

    Deterministic on purpose: no random draw on the hot path, and a test can count.
    """

    __slots__ = ("acc", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.acc = 0.0

    def take(self) -> bool:
        self.acc += self.rate
        if self.acc >= 1.0:
            self.acc -= 1.0
            return True
        return False


def sampler(rate: float) -> Sampler | None:
    """The route's sampler, or None when the route captures nothing (the common case)."""
    return Sampler(rate) if rate > 0 else None


@dataclass(frozen=True, slots=True)
class Record:
    """One captured call, as the gateway saw it."""

    protocol: int
    ts: float
    route: str
    variant: str
    request: bytes
    request_hlen: int
    response: bytes
    response_hlen: int


class CaptureSpool:
    """The gateway side: `offer` on the event loop, a thread writes segments."""

    def __init__(
        self,
        directory: Path,
        *,
        max_pending_bytes: int = 32 << 20,
        max_disk_bytes: int = 512 << 20,
        segment_s: float = SEGMENT_S,
    ) -> None:
        self.directory = directory
        self.max_pending_bytes = max_pending_bytes
        self.max_disk_bytes = max_disk_bytes
        self.segment_s = segment_s
        # (ts, protocol, route, variant, request, its hlen, response, its hlen, their sizes)
        self._queue: deque[tuple[float, int, str, str, Chunks, int, Chunks, int, int, int]] = (
            deque()
        )
        # Written by one thread each, so neither needs a lock: pending = offered - written.
        self._offered_bytes = 0
        self._written_bytes = 0
        self._disk_full = False
        self.captured: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        # in segment names: gateways in pods all run as pid 1, and their segments may meet in
        # one folder (the manager's, once sent there: rollout.capture_ship)
        self._instance = secrets.token_hex(4)
        self._max_pending = max_pending_bytes
        self._names: dict[str, bytes] = {}  # route and variant names, encoded once

    # -- the event loop's side ---------------------------------------------------------------
    def offer(
        self,
        route: str,
        variant: str,
        protocol: int,
        request: Chunks,
        request_hlen: int,
        response: Chunks,
        response_hlen: int,
    ) -> bool:
        """Queue one call for writing; False (and counted) when a bound is reached."""
        req_size, resp_size = sum(map(len, request)), sum(map(len, response))
        size = req_size + resp_size
        if self._disk_full or self._offered_bytes - self._written_bytes + size > self._max_pending:
            self.dropped[route] = self.dropped.get(route, 0) + 1
            return False
        self._offered_bytes += size
        self.captured[route] = self.captured.get(route, 0) + 1
        self._queue.append(
            (_now(), protocol, route, variant, request, request_hlen, response, response_hlen,
             req_size, resp_size)
        )  # fmt: skip
        return True

    # -- the writer thread ---------------------------------------------------------------------
    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f"*{PART_SUFFIX}"):  # left by a killed gateway
            stale.rename(stale.with_name(stale.name.removesuffix(".part")))
        self._disk_full = self._disk_usage() >= self.max_disk_bytes
        self._thread = threading.Thread(target=self._run, name="capture-spool", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the segment, stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush(self) -> None:
        """Ask the writer to close its current segment now (tests and shutdown)."""
        self._wake.set()

    def _run(self) -> None:
        part: Path | None = None
        handle = None
        opened = 0.0
        while True:
            stopping = self._stop.is_set()
            flush = self._wake.is_set()
            self._wake.clear()
            try:
                if self._queue:
                    if handle is None:
                        part = self._new_part()
                        handle = part.open("wb", buffering=1 << 20)
                        opened = time.monotonic()
                    self._drain(handle)
                if handle is not None and (
                    stopping or flush or time.monotonic() - opened >= self.segment_s
                ):
                    handle.close()
                    handle = None
                    assert part is not None
                    part.rename(part.with_name(part.name.removesuffix(".part")))
                    self._disk_full = self._disk_usage() >= self.max_disk_bytes
                elif handle is None and self._disk_full:
                    self._disk_full = self._disk_usage() >= self.max_disk_bytes
            except OSError as exc:  # a full or vanished disk: drop what is queued, keep going
                log.warning("capture spool: %s", exc)
                while self._queue:
                    item = self._queue.popleft()
                    self._written_bytes += item[-2] + item[-1]
                handle = None
            if stopping:
                return
            self._wake.wait(0.1)

    def _new_part(self) -> Path:
        self._seq += 1
        stamp = time.time_ns()
        name = f"{stamp:020d}-{os.getpid()}-{self._instance}-{self._seq:06d}{PART_SUFFIX}"
        return self.directory / name

    def _drain(self, handle: Any) -> None:
        """Frame every queued record and hand them to the file in one call."""
        queue, names = self._queue, self._names
        parts: list[bytes | memoryview] = []
        pack, written = _HEAD.pack, 0
        for _ in range(len(queue)):
            ts, protocol, route, variant, request, req_hlen, response, resp_hlen, lq, la = (
                queue.popleft()
            )
            route_b = names.get(route) or names.setdefault(route, route.encode())
            variant_b = names.get(variant) or names.setdefault(variant, variant.encode())
            parts.append(pack(MAGIC, protocol, ts, req_hlen, resp_hlen, len(route_b),
                              len(variant_b), lq, la))  # fmt: skip
            parts += (route_b, variant_b, *request, *response)
            written += lq + la
        handle.writelines(parts)
        self._written_bytes += written

    def _disk_usage(self) -> int:
        total = 0
        try:
            for entry in os.scandir(self.directory):
                if entry.name.endswith((SEGMENT_SUFFIX, PART_SUFFIX)):
                    with contextlib.suppress(FileNotFoundError):  # taken by the summariser
                        total += entry.stat().st_size
        except FileNotFoundError:
            return 0
        return total


def closed_segments(directory: Path) -> list[Path]:
    """Complete segments, oldest first (names start with the time they were opened)."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))
    except FileNotFoundError:
        return []


def read_segment(path: Path) -> Iterator[Record]:
    """The records of one segment; a damaged or truncated tail ends the segment (logged)."""
    data = path.read_bytes()
    view = memoryview(data)
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _HEAD.size:
            log.warning("capture segment %s: truncated record at byte %d", path.name, offset)
            return
        magic, protocol, ts, req_hlen, resp_hlen, lr, lv, lq, la = _HEAD.unpack_from(view, offset)
        offset += _HEAD.size
        if magic != MAGIC or offset + lr + lv + lq + la > end:
            log.warning("capture segment %s: damaged record at byte %d", path.name, offset)
            return
        route = bytes(view[offset : offset + lr]).decode()
        offset += lr
        variant = bytes(view[offset : offset + lv]).decode()
        offset += lv
        request = bytes(view[offset : offset + lq])
        offset += lq
        response = bytes(view[offset : offset + la])
        offset += la
        yield Record(protocol, ts, route, variant, request, req_hlen, response, resp_hlen)
